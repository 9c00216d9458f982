"""A real PACS cluster for the lab: Orthanc on several hosts, one shared PostgreSQL index.

What it is for: load balancing and failover must be tested against a PACS
whose members really share their studies, so that a study stored through
one member is found (C-FIND) and retrieved (C-MOVE) through any other.

How the members share (checked with Orthanc 1.10.1 and the Debian plugin
orthanc-postgresql 4.0 on PostgreSQL 15):
- every member loads the PostgreSQL index plugin on the same database, with
  `Lock: false` (Debian's default `true` lets only one Orthanc use the
  database) and `EnableStorage: false`: the DICOM files themselves go to one
  StorageDirectory that all members share by path;
- every member has the same DicomAet and the same DicomModalities, so any of
  them accepts the same callers and can send a C-MOVE to the same
  destinations; Orthanc jobs stay per member.
The first member creates the database schema, so the others start after it.

What it must never do: use the system's Orthanc or PostgreSQL service. All
processes are started with lab.spawn and stopped by pid at teardown.
"""

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lab.dicom import NODELAY_ENV, ORTHANC, wait_until_serving, echo, orthanc_config
from lab.netns import REPO_ROOT, netns_exec, repo_pythonpath
from lab.postgres import PG_USER, Postgres, require_postgres_tools, stop_postgres

POSTGRESQL_INDEX_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
PACS_AET = "PACS"
WORKSTATION_AET, WORKSTATION_STORE_PORT = "WS", 11112
HTTP_PROBE = str(Path(__file__).with_name("httpprobe.py"))


@dataclass
class PacsCluster:
    """Orthanc members (host name -> process) sharing one index and one storage directory."""

    aet: str
    dicom_port: int
    http_port: int
    storage: Path
    database: Postgres
    members: dict = field(default_factory=dict)  # host -> subprocess.Popen
    directories: dict = field(default_factory=dict)  # host -> Path (config, log, index)

    def log(self, host) -> Path:
        return self.directories[host] / "orthanc.log"


def require_pacs_tools():
    """Fail clearly (RuntimeError) when Orthanc, its PostgreSQL plugin or PostgreSQL is missing."""
    missing = [path for path in (ORTHANC, POSTGRESQL_INDEX_PLUGIN) if not os.path.exists(path)]
    if missing:
        raise RuntimeError("the lab's PACS cluster needs the Debian packages orthanc and "
                           "orthanc-postgresql: missing " + ", ".join(missing))
    require_postgres_tools()


def member_config(cluster_storage, member_dir, database: Postgres, aet, dicom_port, http_port,
                  modalities, options=None) -> dict:
    """One member's Orthanc configuration: the lab's defaults plus the shared index and storage."""
    config = orthanc_config(dicom_port, http_port, member_dir, aet)
    config.update({
        "Name": f"lab-{aet}-{Path(member_dir).name}",
        "StorageDirectory": str(cluster_storage),
        "Plugins": [POSTGRESQL_INDEX_PLUGIN],
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": database.host,
            "Port": database.port,
            "Database": database.database,
            "Username": PG_USER,
            "Password": "",
            "Lock": False,  # several members on one database
            "EnableSsl": False,
            # A member that cannot reach the database fails its start within seconds.
            "MaximumConnectionRetries": 2,
            "ConnectionRetryInterval": 1,
            "IndexConnectionsCount": 1,
        },
        # Same on every member: any of them sends a C-MOVE to these.
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "DicomAlwaysAllowMove": True,
    })
    config.update(options or {})
    return config


def _spawn_member(lab, host, config, directory: Path) -> subprocess.Popen:
    path = directory / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    with open(directory / "orthanc.log", "ab") as log_file:
        return lab.spawn(host, [ORTHANC, str(path)], env=NODELAY_ENV, stdout=log_file,
                         stderr=subprocess.STDOUT)


def rest_answers(lab, host, http_port) -> bool:
    """True if Orthanc's REST API on the host answers GET /system with 200."""
    completed = lab.exec(host, [sys.executable, HTTP_PROBE, "get", f"http://127.0.0.1:{http_port}/system"],
                         check=False, timeout=15)
    try:
        return completed.returncode == 0 and json.loads(completed.stdout).get("status") == 200
    except ValueError:
        return False


def _wait_member(lab, cluster, host, timeout_s):
    namespace = lab.ns(host)
    wait_until_serving(
        lab, cluster.members[host], namespace, [cluster.dicom_port, cluster.http_port],
        lambda: (echo(namespace, "127.0.0.1", cluster.dicom_port, cluster.aet, timeout=1.0)
                 and rest_answers(lab, host, cluster.http_port)),
        f"Orthanc member {host}", cluster.log(host), timeout_s)


def start_orthanc_cluster(lab, hosts, database: Postgres, aet=PACS_AET, dicom_port=104, http_port=8042,
                          modalities=None, start_timeout_s=30.0, options=None) -> PacsCluster:
    """Start Orthanc on each of `hosts`, all on `database` (see lab.postgres.start_postgres).

    `modalities` maps a name to (AE title, address, port), the same on every
    member; the default is the workstation as "WS" on port 11112, a C-MOVE
    destination (start a storescp there with lab.dicom.start_storescp).
    `options` are Orthanc settings laid over every member's configuration
    (such as {"DicomCheckModalityHost": True}).
    Returns once every member answers a C-ECHO and its REST API; a member that
    dies or is not ready within start_timeout_s fails the start with its log.
    The lab's teardown kills the members, then stops the database.
    """
    require_pacs_tools()
    hosts = list(hosts)
    if not hosts:
        raise ValueError("a PACS cluster needs at least one host")
    if modalities is None:
        if lab.workstation is None:
            raise ValueError("no workstation in this lab: pass modalities")
        modalities = {WORKSTATION_AET: (WORKSTATION_AET, lab.workstation.ipv4, WORKSTATION_STORE_PORT)}
    storage = Path(lab.mkdtemp("pacs-storage"))
    cluster = PacsCluster(aet=aet, dicom_port=dicom_port, http_port=http_port, storage=storage,
                          database=database)
    # Runs before the database's own at_close: members go first, by SIGKILL
    # (Orthanc needs ~4.5 s on SIGTERM, more than the lab's grace).
    lab.at_close(lambda: stop_orthanc_cluster(lab, cluster))
    # The first member creates the schema; the rest start together once it serves.
    for batch in (hosts[:1], hosts[1:]):
        for host in batch:
            directory = Path(lab.mkdtemp(f"orthanc-{lab.ns(host)}"))
            cluster.directories[host] = directory
            config = member_config(storage, directory, database, aet, dicom_port, http_port, modalities,
                                   options)
            cluster.members[host] = _spawn_member(lab, host, config, directory)
        for host in batch:
            _wait_member(lab, cluster, host, start_timeout_s)
    return cluster


def crash_member(lab, cluster: PacsCluster, host) -> int:
    """SIGKILL one member, as a crash; return once its pid has exited (its exit code)."""
    process = cluster.members[host]
    lab.kill(process, signal.SIGKILL)
    return process.wait(5)


def stop_orthanc_cluster(lab, cluster: PacsCluster):
    """SIGKILL every member, then shut the database down fast (see lab.postgres.stop_postgres).

    Orthanc takes seconds to exit on SIGTERM, longer than the lab's teardown
    grace; a throwaway member loses nothing to SIGKILL, and the database must
    go after its clients.
    """
    for host in cluster.members:
        crash_member(lab, cluster, host)
    stop_postgres(lab, cluster.database)


def scu(lab, ns, host, port, called_ae, operation, *options, timeout_s=5.0) -> dict:
    """Run lab.pacsclient OPERATION in namespace `ns` against host:port; return its JSON answer.

    The answer has "ok" and "err" plus the operation's own keys (see
    lab/pacsclient.py). Raises RuntimeError when the client printed no JSON.
    """
    argv = [sys.executable, "-m", "lab.pacsclient", host, str(port), called_ae, operation,
            "--timeout", str(timeout_s), *map(str, options)]
    pythonpath = repo_pythonpath()
    completed = subprocess.run([*netns_exec(lab.ns(ns)), *argv],
                               cwd=str(REPO_ROOT), env={**os.environ, "PYTHONPATH": pythonpath},
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=6 * timeout_s + 20)  # connect, ACSE, DIMSE waits plus start-up
    try:
        return json.loads(completed.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"lab.pacsclient {operation} printed no answer (exit {completed.returncode}):\n"
                           f"{completed.stderr[-2000:]}") from None
