"""One blocking probe per check type: is the local PACS healthy right now?

`run_probe(check)` runs the probe for `check.type` once and returns a
`ProbeResult(ok, latency_ms, message)`. It never raises: anything that goes
wrong, including a bug in a probe, is a failed result whose message names
what failed. The message is what operators read in `hapacs status` and in
the log when a check goes down, so it says what happened in a few words
("connection refused", "no answer within 1 s (C-ECHO)", "HTTP 503, expected
200").

Each probe bounds itself by `check.timeout_s`: DNS resolution runs against
the same deadline, sockets get the time left, pynetdicom gets all four of
its timeouts (connection_timeout included: left at None, a blackholed peer
blocks connect() for minutes), a script is killed with its whole process
group. What no probe can bound is a kernel call that hangs (statvfs or
fsync on a dead NFS server, /proc of a process stuck in D state); the
runner covers those by never waiting on a probe past its timeout.

These functions block and must run in a worker thread, never on the
agent's event loop. pynetdicom is imported on the first DICOM probe only:
it costs ~40 MiB and 250 ms, which an agent without DICOM checks must not pay.
"""

from __future__ import annotations

import errno
import functools
import http.client
import ipaddress
import logging
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

from hapacs.checktypes import DICOM_CHECK_TYPES
from hapacs.config import CheckConfig

MESSAGE_MAX_CHARS = 200
FIND_MAX_MATCHES = 100   # a C-FIND is cancelled after this many matches; see _dicom_find
DISK_PROBE_BYTES = b"hapacs disk check\n"
DISK_PROBE_PREFIX = ".hapacs-check-"
SCRIPT_OUTPUT_MAX_BYTES = 4096
SUCCESS, PENDING_STATUSES = 0x0000, (0xFF00, 0xFF01)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: float
    message: str


class ProbeFailed(Exception):
    """The probe ran and the answer is "unhealthy"; the message says why."""


def prepare(check: CheckConfig) -> None:
    """Load what the probe for `check` needs (pynetdicom), so that the first run is timed fairly.

    Blocking, like the probes; never raises (a failed import shows in the first result).
    """
    if check.type in DICOM_CHECK_TYPES:
        try:
            _pynetdicom()
        except Exception:  # noqa: BLE001 - run_probe reports it
            pass


def run_probe(check: CheckConfig, confirming: bool = False) -> ProbeResult:
    """Run the probe for `check` once, bounded by check.timeout_s; never raises.

    `confirming`: the last probe failed. A DICOM probe then tries a plain TCP
    connect first: a PACS that is gone refuses it in well under a millisecond,
    where a failed association costs pynetdicom 0.1 s of clean-up.
    """
    probe = PROBES.get(check.type)
    if probe is None:
        return ProbeResult(False, 0.0, f"unknown check type {check.type!r}")
    if check.type in DICOM_CHECK_TYPES:
        try:
            _pynetdicom()  # the first import takes 0.3-0.8 s: not the PACS's time, not in the timeout
        except Exception as error:  # noqa: BLE001
            return ProbeResult(False, 0.0, _trim(f"cannot import pynetdicom: {type(error).__name__}: {error}"))
    started = time.monotonic()
    deadline = started + check.timeout_s
    try:
        if confirming and check.type in DICOM_CHECK_TYPES:
            _quick_connect(check, deadline)
        ok, message = True, probe(check, deadline)
    except ProbeFailed as failure:
        ok, message = False, str(failure)
    except Exception as error:  # noqa: BLE001 - a probe must never take the runner down
        ok, message = False, f"{check.type} probe error: {type(error).__name__}: {error}"
    return ProbeResult(ok, (time.monotonic() - started) * 1000.0, _trim(message))


def _trim(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_MAX_CHARS else text[:MESSAGE_MAX_CHARS - 3] + "..."


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _no_answer(check: CheckConfig, what: str) -> ProbeFailed:
    return ProbeFailed(f"no answer within {check.timeout_s:g} s ({what})")


def _os_error(error: OSError) -> str:
    """'connection refused' rather than '[Errno 111] Connection refused'."""
    if error.errno is not None:
        return os.strerror(error.errno).lower() if error.errno in _PLAIN_ERRNOS else (
            f"{errno.errorcode.get(error.errno, error.errno)}: {os.strerror(error.errno).lower()}")
    return str(error) or type(error).__name__


_PLAIN_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET}


# ---- addresses ---------------------------------------------------------------------


def _resolve(check: CheckConfig, host: str, port: int, deadline: float) -> tuple[int, tuple]:
    """(family, sockaddr) for host:port, resolved within the deadline.

    getaddrinfo cannot be interrupted; for a host name it runs in a daemon
    thread so a dead DNS server costs the probe its timeout, not the
    resolver's 5 s x attempts. IP addresses need no thread.
    """
    try:
        address = ipaddress.ip_address(host)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        return family, (host, port) if family == socket.AF_INET else (host, port, 0, 0)
    except ValueError:
        pass
    answer: list = []

    def lookup():
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as error:
            answer.append(error)

    thread = threading.Thread(target=lookup, name=f"hapacs-resolve-{host}", daemon=True)
    thread.start()
    thread.join(max(0.0, _left(deadline)))
    if not answer:
        raise _no_answer(check, f"resolving {host}")
    if isinstance(answer[0], OSError):
        raise ProbeFailed(f"cannot resolve {host}: {getattr(answer[0], 'strerror', None) or answer[0]}")
    family, _type, _proto, _name, sockaddr = answer[0][0]
    return family, sockaddr


def _connect(check: CheckConfig, host: str, port: int, deadline: float) -> socket.socket:
    family, sockaddr = _resolve(check, host, port, deadline)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(0.001, _left(deadline)))
        sock.connect(sockaddr)
    except TimeoutError:
        sock.close()
        raise _no_answer(check, f"TCP connect to {_where(host, port)}") from None
    except OSError as error:
        sock.close()
        raise ProbeFailed(f"{_os_error(error)} ({_where(host, port)})") from None
    return sock


class _Watchdog:
    """Shuts a socket down at the deadline, so no blocking call on it outlives the probe."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.fired = False
        self._sock = sock
        self._timer = threading.Timer(max(0.0, _left(deadline)), self._fire)
        self._timer.daemon = True

    def _fire(self):
        self.fired = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc_info):
        self._timer.cancel()


# ---- tcp, http -----------------------------------------------------------------------


def _tcp(check: CheckConfig, deadline: float) -> str:
    sock = _connect(check, check.host, check.port, deadline)
    sock.close()
    return f"connected to {_where(check.host, check.port)}"


def _http(check: CheckConfig, deadline: float) -> str:
    """GET the URL once; compare the status we get. Redirects are not followed."""
    parts = urlsplit(check.url)
    https = parts.scheme == "https"
    host, port = parts.hostname, parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raw = _connect(check, host, port, deadline)
    connection = http.client.HTTPConnection(host, port)  # only for its request/response code
    try:
        with _Watchdog(raw, deadline) as watchdog:
            try:
                sock = raw
                if https:
                    sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
                connection.sock = sock  # already connected: http.client will not connect again
                connection.request("GET", path, headers={"User-Agent": "hapacs-check", "Connection": "close"})
                response = connection.getresponse()
                status, location = response.status, response.getheader("Location")
                response.close()
            except (OSError, http.client.HTTPException) as error:  # ssl.SSLError is an OSError
                if watchdog.fired or isinstance(error, TimeoutError):
                    raise _no_answer(check, f"HTTP GET {check.url}") from None
                if isinstance(error, ssl.SSLError):
                    raise ProbeFailed(f"TLS with {_where(host, port)} failed: {error.reason or error}") from None
                detail = _os_error(error) if isinstance(error, OSError) else type(error).__name__
                raise ProbeFailed(f"HTTP GET {check.url} failed: {detail}") from None
    finally:
        connection.close()
        raw.close()
    if status != check.status:
        moved = f" (redirect to {location} not followed)" if location and 300 <= status < 400 else ""
        raise ProbeFailed(f"HTTP {status}, expected {check.status}{moved}")
    return f"HTTP {status}"


# ---- process, disk ----------------------------------------------------------------------


def _process(check: CheckConfig, deadline: float) -> str:
    if check.pidfile:
        return _process_by_pidfile(check.pidfile)
    wanted = check.process_name
    found = []
    for process in psutil.process_iter(["name", "exe", "status"]):
        info = process.info
        if wanted in (info["name"], os.path.basename(info["exe"] or "")) and info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    if not found:
        raise ProbeFailed(f"no process named {wanted} is running")
    if len(found) == 1:
        return f"{wanted} running (pid {found[0]})"
    return f"{len(found)} processes named {wanted} running (pids {', '.join(map(str, sorted(found)[:5]))}" + (
        ", ...)" if len(found) > 5 else ")")


def _process_by_pidfile(pidfile: str) -> str:
    try:
        with open(pidfile, encoding="ascii", errors="replace") as handle:
            text = handle.read(64).strip()
    except FileNotFoundError:
        raise ProbeFailed(f"pidfile {pidfile} does not exist") from None
    except OSError as error:
        raise ProbeFailed(f"cannot read pidfile {pidfile}: {_os_error(error)}") from None
    if not text.isdigit() or int(text) <= 0:
        raise ProbeFailed(f"pidfile {pidfile} holds no pid ({text[:20]!r})")
    pid = int(text)
    try:
        process = psutil.Process(pid)
        status, name = process.status(), process.name()
    except psutil.NoSuchProcess:
        raise ProbeFailed(f"pid {pid} from {pidfile} is not running (stale pidfile)") from None
    if status == psutil.STATUS_ZOMBIE:
        raise ProbeFailed(f"pid {pid} from {pidfile} ({name}) has exited (zombie)")
    return f"pid {pid} from {pidfile} ({name}) running"


def _disk(check: CheckConfig, deadline: float) -> str:
    """Enough free space, and a small file can be written and synced."""
    path = check.path
    try:
        usage = psutil.disk_usage(path)
    except OSError as error:
        raise ProbeFailed(f"cannot stat {path}: {_os_error(error)}") from None
    # The df figure: free space available to unprivileged users (reserved blocks excluded).
    free_percent = 100.0 - usage.percent
    if free_percent < check.min_free_percent:
        raise ProbeFailed(f"{path}: only {free_percent:.1f}% free ({_size(usage.free)} of "
                          f"{_size(usage.total)}), below {check.min_free_percent:g}%")
    try:
        _write_probe_file(path)
    except OSError as error:
        raise ProbeFailed(f"{path} is not writable: {_os_error(error)}") from None
    return f"{path}: {free_percent:.1f}% free ({_size(usage.free)} of {_size(usage.total)}), writable"


def _write_probe_file(directory: str) -> None:
    descriptor, name = tempfile.mkstemp(prefix=DISK_PROBE_PREFIX, dir=directory)
    try:
        written = os.write(descriptor, DISK_PROBE_BYTES)
        if written != len(DISK_PROBE_BYTES):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(descriptor)  # ENOSPC/EIO of a delayed allocation shows up here
    finally:
        os.close(descriptor)
        os.unlink(name)


def _size(size_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size_bytes < 1024 or unit == "TiB":
            return f"{size_bytes:.0f} {unit}" if unit == "B" else f"{size_bytes:.1f} {unit}"
        size_bytes /= 1024
    raise AssertionError("unreachable")


# ---- script -----------------------------------------------------------------------------


def _script(check: CheckConfig, deadline: float) -> str:
    """Run the command without a shell in its own process group; exit 0 means healthy.

    Output goes to memory files rather than pipes: a background child that
    keeps stdout open cannot make us wait for EOF, and a full /tmp cannot
    fail the check.
    """
    stdout, stderr = os.memfd_create("hapacs-check-stdout"), os.memfd_create("hapacs-check-stderr")
    try:
        try:
            process = subprocess.Popen(check.command, stdin=subprocess.DEVNULL, stdout=stdout,
                                       stderr=stderr, start_new_session=True)
        except OSError as error:
            raise ProbeFailed(f"cannot run {check.command[0]}: {_os_error(error)}") from None
        try:
            code = process.wait(max(0.0, _left(deadline)))
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait()
            raise _no_answer(check, f"{os.path.basename(check.command[0])} killed") from None
        line = _first_line(stdout) or _first_line(stderr)
    finally:
        os.close(stdout)
        os.close(stderr)
    if code == 0:
        return line or "exit status 0"
    if code < 0:
        reason = f"killed by signal {-code}"
        if -code in signal.valid_signals():
            reason = f"killed by {signal.Signals(-code).name}"
    else:
        reason = f"exit status {code}"
    raise ProbeFailed(f"{reason}: {line}" if line else reason)


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _first_line(descriptor: int) -> str:
    text = os.pread(descriptor, SCRIPT_OUTPUT_MAX_BYTES, 0).decode("utf-8", errors="replace")
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


# ---- DICOM ------------------------------------------------------------------------------


@functools.cache
def _pynetdicom():
    """Import pynetdicom on first use, and keep its per-failure ERROR lines out of our log."""
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    import pynetdicom
    from pynetdicom import sop_class
    return pynetdicom, sop_class


def _associate(check: CheckConfig, deadline: float, context):
    """An established association, or ProbeFailed saying why there is none."""
    pynetdicom, _ = _pynetdicom()
    family, sockaddr = _resolve(check, check.host, check.port, deadline)
    ae = pynetdicom.AE(ae_title=check.calling_ae)
    ae.add_requested_context(context)
    left = max(0.001, _left(deadline))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = left
    opened = []
    assoc = ae.associate(sockaddr[0], check.port, ae_title=check.called_ae,
                         evt_handlers=[(pynetdicom.evt.EVT_CONN_OPEN, lambda event: opened.append(True))])
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        detail = getattr(assoc.acceptor.primitive, "reason_str", "")
        raise ProbeFailed(f"association rejected by {check.called_ae}" + (f": {detail}" if detail else ""))
    if not opened:
        raise _connect_failure(check, family, sockaddr, deadline)
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        raise ProbeFailed(f"association aborted: {check.called_ae} does not accept the presentation context")
    if _left(deadline) <= 0.0:
        raise _no_answer(check, "association request")
    raise ProbeFailed(f"association aborted by {_where(check.host, check.port)}")


def _connect_failure(check: CheckConfig, family: int, sockaddr: tuple, deadline: float) -> ProbeFailed:
    """Why pynetdicom could not connect; it keeps the OSError to itself.

    A quick second connect() names the cause (refused, unreachable). It is
    tried only when time is left, i.e. the first one failed fast.
    """
    if _left(deadline) <= 0.0:
        return _no_answer(check, f"TCP connect to {_where(check.host, check.port)}")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(0.001, _left(deadline)))
        sock.connect(sockaddr)
    except TimeoutError:
        return _no_answer(check, f"TCP connect to {_where(check.host, check.port)}")
    except OSError as error:
        return ProbeFailed(f"{_os_error(error)} ({_where(check.host, check.port)})")
    finally:
        sock.close()
    return ProbeFailed(f"cannot connect to {_where(check.host, check.port)} (it accepts again now)")


def _quick_connect(check: CheckConfig, deadline: float) -> None:
    """Raise ProbeFailed at once if the DICOM port does not even accept a TCP connection."""
    family, sockaddr = _resolve(check, check.host, check.port, deadline)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(0.001, _left(deadline)))
        sock.connect(sockaddr)
    except TimeoutError:
        raise _no_answer(check, f"TCP connect to {_where(check.host, check.port)}") from None
    except OSError as error:
        raise ProbeFailed(f"{_os_error(error)} ({_where(check.host, check.port)})") from None
    finally:
        sock.close()


def _finish(assoc, deadline: float) -> None:
    """Release politely if time is left, otherwise abort; never wait past the deadline."""
    if not assoc.is_established:
        return
    left = _left(deadline)
    if left > 0.01:
        assoc.acse_timeout = left
        assoc.release()
    else:
        assoc.abort()


def _dicom_echo(check: CheckConfig, deadline: float) -> str:
    _, sop_class = _pynetdicom()
    assoc = _associate(check, deadline, sop_class.Verification)
    try:
        assoc.dimse_timeout = max(0.001, _left(deadline))
        status = assoc.send_c_echo()
        if "Status" not in status:  # empty Dataset: no answer in time, or aborted
            if _left(deadline) <= 0.0:
                raise _no_answer(check, "C-ECHO")
            raise ProbeFailed("association aborted during C-ECHO")
        if status.Status != SUCCESS:
            raise ProbeFailed(f"C-ECHO failed: status 0x{status.Status:04X}")
    finally:
        _finish(assoc, deadline)
    return "C-ECHO success"


def _find_query(level: str):
    """An empty query at `level`, and the information model it belongs to."""
    from pydicom.dataset import Dataset

    _, sop_class = _pynetdicom()
    query = Dataset()
    query.QueryRetrieveLevel = level
    if level == "PATIENT":  # Study Root has no PATIENT level
        query.PatientID = ""
        return query, sop_class.PatientRootQueryRetrieveInformationModelFind
    query.StudyInstanceUID = ""
    if level in ("SERIES", "IMAGE"):
        query.SeriesInstanceUID = ""
    if level == "IMAGE":
        query.SOPInstanceUID = ""
    return query, sop_class.StudyRootQueryRetrieveInformationModelFind


def _dicom_find(check: CheckConfig, deadline: float) -> str:
    """An empty C-FIND at the query level; healthy when the final status is success.

    The query matches everything, so on a large archive it would list every
    study: after FIND_MAX_MATCHES matches the probe sends C-CANCEL and counts
    the answer as healthy (the database has clearly answered).
    """
    query, model = _find_query(check.query_level)
    assoc = _associate(check, deadline, model)
    matches, cancelled = 0, False
    try:
        assoc.dimse_timeout = max(0.001, _left(deadline))
        for status, _identifier in assoc.send_c_find(query, model, msg_id=1):
            if "Status" not in status:
                if cancelled:
                    break
                if _left(deadline) <= 0.0:
                    raise _no_answer(check, f"C-FIND, {matches} matches so far")
                raise ProbeFailed(f"association aborted during C-FIND ({matches} matches so far)")
            code = status.Status
            if code in PENDING_STATUSES:
                matches += 1
                if matches >= FIND_MAX_MATCHES and not cancelled:
                    assoc.send_c_cancel(1, query_model=model)
                    cancelled = True
                if _left(deadline) <= 0.0:
                    if cancelled:
                        assoc.abort()
                        break
                    raise _no_answer(check, f"C-FIND, {matches} matches so far")
                continue
            if code == SUCCESS or cancelled:  # after C-CANCEL any final status (0xFE00) ends it
                break
            raise ProbeFailed(f"C-FIND failed: status 0x{code:04X} after {matches} matches")
    finally:
        _finish(assoc, deadline)
    if cancelled:
        return f"C-FIND ok, at least {matches} matches (cancelled after {FIND_MAX_MATCHES})"
    return f"C-FIND ok, {matches} match" + ("" if matches == 1 else "es")


PROBES = {
    "dicom-echo": _dicom_echo,
    "dicom-find": _dicom_find,
    "tcp": _tcp,
    "http": _http,
    "process": _process,
    "disk": _disk,
    "script": _script,
}
