"""Real DICOM peers for the lab: dcmtk storescp and Orthanc inside a namespace.

What it is for: hapacs must be tested against the PACS software it guards, not
only against pynetdicom doubles. Servers started here are tracked by the lab,
so teardown stops them; each start waits (bounded) until the server answers.

dcmtk tools are called by absolute path: a pynetdicom `storescp` shim comes
first on PATH on this machine. Both servers get TCP_NODELAY=1 in their
environment: dcmtk honours it, which removes the ~44 ms Nagle/delayed-ACK
stall per DIMSE round trip.
"""

import json
import math
import os
import signal
import subprocess
from pathlib import Path

from lab.netns import in_namespace, log_tail, netns_exec, wait_for

STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
FINDSCU = "/usr/bin/findscu"
ORTHANC = "/usr/sbin/Orthanc"
LAB_CALLING_AE = "LABSCU"
NODELAY_ENV = {"TCP_NODELAY": "1"}
TCP_LISTEN = "0A"  # state column of /proc/net/tcp
# Holds N associations open from a namespace (run it with the lab's python; see its docstring).
HOLD_ASSOCIATIONS_SCRIPT = str(Path(__file__).with_name("holdassociations.py"))


def _listening(pid: int, namespace: str, port: int) -> bool:
    """True once `pid`, inside `namespace`, sees a TCP socket listening on `port`.

    /proc/PID/net shows the sockets of PID's namespace. Right after spawn the
    pid may still be `ip netns exec` in the root namespace, so the namespace is
    checked first: a root-namespace listener must not count.
    """
    if not in_namespace(pid, namespace):
        return False
    try:
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    except FileNotFoundError:  # the process has exited; the caller reports it
        return False
    return False


def wait_until_serving(lab, process, namespace, ports, ready, name, log: Path, timeout_s):
    """Wait until every port listens and `ready()` is true; fail early if the process dies."""

    def serving():
        if process.poll() is not None:
            raise RuntimeError(f"{name} in {namespace} exited with {process.returncode}:\n"
                               f"{log_tail(log)}")
        return all(_listening(process.pid, namespace, port) for port in ports) and ready()

    try:
        wait_for(serving, timeout_s, interval=0.02, what=f"{name} in {namespace} to serve {ports}")
    except AssertionError as error:
        lab.stop(process)
        raise AssertionError(f"{error}\n{log_tail(log)}") from None


def start_storescp(lab, ns, port=104, aet="PACS", tmpdir=None, timeout_s=3,
                   start_timeout_s=5.0, fork=False) -> subprocess.Popen:
    """Start dcmtk storescp in host/namespace `ns`; return once the port listens.

    It accepts C-ECHO and C-STORE (any called AE title) and writes received
    objects into `tmpdir` (default: a new directory under lab.tmpdir), its log
    into tmpdir/storescp.log. `timeout_s` (whole seconds, dcmtk takes integers)
    bounds the ACSE, DIMSE and socket waits: storescp serves one association
    at a time, so a client that vanished mid-association (partition) would
    otherwise block every other client for up to 60 s. With `fork`, storescp
    serves each association in a child process, as a PACS serves many
    workstations at once (the children end with their association; the lab
    kills any left at teardown).
    """
    namespace = lab.ns(ns)
    directory = Path(tmpdir or lab.mkdtemp(f"storescp-{namespace}"))
    log = directory / "storescp.log"
    seconds = str(int(math.ceil(timeout_s)))
    argv = [STORESCP, "--aetitle", aet, "--output-directory", str(directory),
            "--disable-host-lookup",  # no reverse DNS: nothing may leave the lab
            "--acse-timeout", seconds, "--dimse-timeout", seconds, "--socket-timeout", seconds,
            *(["--fork"] if fork else []), str(port)]
    with open(log, "ab") as log_file:
        process = lab.spawn(namespace, argv, env=NODELAY_ENV, stdout=log_file, stderr=subprocess.STDOUT)
    wait_until_serving(lab, process, namespace, [port], lambda: True, "storescp", log, start_timeout_s)
    return process


def orthanc_config(dicom_port, http_port, tmpdir, aet="ORTHANC") -> dict:
    """The Orthanc configuration the lab uses."""
    return {
        "Name": f"lab-{aet}",
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(Path(tmpdir) / "storage"),
        "IndexDirectory": str(Path(tmpdir) / "index"),
        # Orthanc 1.10 has no bind address: it listens on 0.0.0.0, which is
        # only acceptable because it runs inside a lab namespace.
        "RemoteAccessAllowed": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowStore": True,
        "Plugins": [],
        "SaveJobs": False,
    }


def start_orthanc(lab, ns, dicom_port=4242, http_port=8042, tmpdir=None, aet="ORTHANC",
                  start_timeout_s=15.0) -> subprocess.Popen:
    """Start Orthanc in host/namespace `ns`; return once it answers C-ECHO.

    Config, storage, index and orthanc.log go into `tmpdir` (default: a new
    directory under lab.tmpdir). Stop it with stop_orthanc before starting
    another one on the same tmpdir.
    """
    namespace = lab.ns(ns)
    directory = Path(tmpdir or lab.mkdtemp(f"orthanc-{namespace}"))
    config = directory / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(dicom_port, http_port, directory, aet), indent=2))
    log = directory / "orthanc.log"
    with open(log, "ab") as log_file:
        process = lab.spawn(namespace, [ORTHANC, str(config)], env=NODELAY_ENV,
                            stdout=log_file, stderr=subprocess.STDOUT)
    wait_until_serving(lab, process, namespace, [dicom_port, http_port],
                        lambda: echo(namespace, "127.0.0.1", dicom_port, aet, timeout=1.0),
                        "Orthanc", log, start_timeout_s)
    return process


def stop_orthanc(lab, process, timeout_s=10.0) -> int:
    """SIGTERM Orthanc and wait for its pid to exit (it takes ~4.5 s); return its exit code.

    Starting a new Orthanc on the same index before the old one has exited
    fails with "SQLite: database is locked".
    """
    return lab.stop(process, timeout_s)


def kill_with_children(lab, process) -> None:
    """SIGKILL a forking storescp and the children serving its associations (they hold its listener)."""
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and _parent(p) == process.pid]
    lab.kill(process, signal.SIGKILL)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _dcmtk_network_options(called_ae, timeout):
    seconds = str(max(1, int(math.ceil(timeout))))  # dcmtk timeouts are whole seconds
    return ["-aet", LAB_CALLING_AE, "-aec", called_ae,
            "-to", seconds, "-ta", seconds, "-td", seconds, "-ts", seconds]


def _run_in(ns, argv, timeout):
    # Three dcmtk timeouts can add up; the margin only guards against a hang.
    return subprocess.run([*netns_exec(ns), *argv],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=3 * math.ceil(timeout) + 5)


def echo(ns, host, port, called_ae="ANY-SCP", timeout=2.0) -> bool:
    """One dcmtk C-ECHO from namespace `ns` (a namespace name, e.g. lab.ns("ws")); True on success."""
    argv = [ECHOSCU, *_dcmtk_network_options(called_ae, timeout), host, str(port)]
    return _run_in(ns, argv, timeout).returncode == 0


def find_studies(ns, host, port, called_ae="ANY-SCP", timeout=2.0) -> subprocess.CompletedProcess:
    """One study-level C-FIND (all studies) with dcmtk findscu from namespace `ns`.

    Returns the finished process: returncode 0 means the query completed;
    matches are printed on stderr as "Find Response" blocks.
    """
    argv = [FINDSCU, "-S", *_dcmtk_network_options(called_ae, timeout),
            "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientName",
            host, str(port)]
    return _run_in(ns, argv, timeout)
