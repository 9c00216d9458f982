"""`hapacs run --daemon --pidfile PATH`: run the agent detached, for hosts without systemd.

Under systemd, run in the foreground (`Type=notify`, systemd/hapacs.service).

The command the operator typed (the launcher) exits only once the detached
agent serves, and its exit status says whether it does:

- 0: the agent runs; the pidfile holds its pid.
- 1: it does not, and why is on stderr: another agent holds the pidfile,
  or the agent could not start (interface missing, port taken, ...).

Plain python-daemon cannot do this: its pidfile is taken after the fork,
so the launcher exits 0 before anything is known, and lockfile's
PIDLockFile never checks whether the pid in a stale file lives.
Here the launcher takes the pidfile itself with flock(2). The lock is the
truth: held means a live agent (the kernel drops it when the holder dies,
kill -9 included), not held means whatever the file says is stale. The
locked descriptor passes through the fork to the daemon, which keeps it
until it exits. The daemon reports "ready" or "failed: reason" on a pipe.

Logs: to syslog (facility daemon, tag hapacs) when /dev/log exists, else to
the file next to the pidfile (PATH with .log for .pid). That file also gets
the daemon's stderr in both cases, so a Python traceback is never lost.

What it must never do: create an event loop, socket or thread before
DaemonContext has closed the inherited descriptors (DaemonContext closes
theirs too, and they fail with EBADF); or let a syslog that stops reading
block the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import logging.handlers
import os
import select
import signal
import socket
import sys
import time

from .config import Config

DEFAULT_PIDFILE = "/run/hapacs/hapacs.pid"
START_TIMEOUT_S = 15.0
SYSLOG_SOCKET = "/dev/log"
POLL_S = 0.1


class AlreadyRunning(Exception):
    pass


class PidFile:
    """A pidfile held with flock(2) for as long as the agent lives."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None
        self.stale_pid: int | None = None   # what an earlier, dead agent left in the file

    def acquire(self) -> None:
        """Lock the file, or raise AlreadyRunning naming the live holder."""
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise AlreadyRunning(f"hapacs already runs as pid {pid} (it holds {self.path})" if pid else
                                     f"another hapacs is starting with {self.path}") from None
            # The holder removes the file when it stops; if it did so between our open()
            # and our lock, we hold a file nobody else will ever look at: start over.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd
        self.stale_pid = _read_pid(fd)
        os.ftruncate(fd, 0)   # until the daemon writes its pid, "starting" rather than a dead pid

    def write_pid(self, pid: int) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def release(self) -> None:
        """Remove the file (it is still ours: we hold the lock), then drop the lock."""
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def close(self) -> None:
        """The launcher's copy: close it without unlocking (the daemon's copy keeps the lock)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (ValueError, UnicodeDecodeError):
        return None


def log_path_for(pidfile: str) -> str:
    stem, extension = os.path.splitext(pidfile)
    return (stem if extension == ".pid" else pidfile) + ".log"


# --- the launcher: the command the operator typed ---------------------------------------


def run_daemon(config: Config, pidfile: str | None, log_level: str) -> int:
    """Detach the agent; 0 once it serves, 1 with the reason on stderr if it does not."""
    pidfile = os.path.abspath(pidfile or DEFAULT_PIDFILE)
    # The daemon runs in /; a reload must still find the file.
    config = dataclasses.replace(config, path=os.path.abspath(config.path))
    lock = PidFile(pidfile)
    try:
        lock.acquire()
    except AlreadyRunning as err:
        print(f"hapacs: refused: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"hapacs: cannot use the pidfile {pidfile}: {err.strerror or err}", file=sys.stderr)
        return 1
    if lock.stale_pid is not None:
        print(f"hapacs: {pidfile} named pid {lock.stale_pid}, which no longer holds it; taking it over",
              file=sys.stderr)
    log_path = log_path_for(pidfile)
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        code = 1
        try:
            code = _daemon(config, lock, write_end, log_level, log_path)
        finally:
            os._exit(code)
    os.close(write_end)
    lock.close()
    os.waitpid(child, 0)   # it returns as soon as DaemonContext has forked the daemon off
    try:
        return _await_start(read_end, config.control.socket, pidfile, log_path)
    finally:
        os.close(read_end)


def _await_start(read_end: int, control_socket: str, pidfile: str, log_path: str) -> int:
    """Wait for the daemon's word, or for its control socket to answer as that pid."""
    deadline = time.monotonic() + START_TIMEOUT_S
    buffered = b""
    pid: int | None = None
    where = "syslog" if os.path.exists(SYSLOG_SOCKET) else log_path
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            if pid is not None:
                _terminate(pid)
            print(f"hapacs: the agent did not start within {START_TIMEOUT_S:g} s"
                  + (f"; stopped it (pid {pid})" if pid else "") + f"; see {where}", file=sys.stderr)
            return 1
        readable, _, _ = select.select([read_end], [], [], min(left, POLL_S))
        if readable:
            chunk = os.read(read_end, 4096)
            if not chunk:
                print(f"hapacs: the agent stopped while starting; see {where}", file=sys.stderr)
                return 1
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                word = line.decode("utf-8", errors="replace")
                if word.startswith("pid "):
                    pid = int(word[4:])
                elif word == "ready":
                    return _started(pid, pidfile, where)
                elif word.startswith("failed: "):
                    print(f"hapacs: {word[len('failed: '):]}", file=sys.stderr)
                    _wait_released(pidfile, deadline)   # so that a corrected start right after is not refused
                    return 1
        elif pid is not None and _serves_as(control_socket, pid):
            return _started(pid, pidfile, where)


def _wait_released(pidfile: str, deadline: float) -> None:
    while os.path.exists(pidfile) and time.monotonic() < deadline:
        time.sleep(0.01)


def _started(pid: int | None, pidfile: str, where: str) -> int:
    print(f"hapacs: running in the background as pid {pid} (pidfile {pidfile}, logs to {where})")
    return 0


def _serves_as(control_socket: str, pid: int) -> bool:
    """The agent with this pid answers on the control socket (until Agent.on_ready is wired)."""
    from .control import ControlError, request
    if not os.path.exists(control_socket):
        return False
    try:
        reply = request(control_socket, {"command": "status"}, timeout_s=1.0)
    except ControlError:
        return False
    return bool(reply.get("ok")) and reply.get("status", {}).get("pid") == pid


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


# --- the daemon ---------------------------------------------------------------------------


class _Reporter:
    """The daemon's end of the pipe to the launcher."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, line.replace("\n", " ").encode("utf-8", errors="replace") + b"\n")
        except OSError:
            pass   # the launcher is gone (interrupted); nobody to tell

    def finish(self, line: str) -> None:
        self.send(line)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _LastError(logging.Handler):
    """Keeps the last ERROR line, e.g. "cannot start: interface eth9 not found", for the launcher."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text = record.getMessage()


def _daemon(config: Config, lock: PidFile, report_fd: int, log_level: str, log_path: str) -> int:
    """In the launcher's child: detach, then run the agent until it stops; the exit code."""
    import daemon   # python-daemon

    reporter = _Reporter(report_fd)
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as err:
        lock.release()
        reporter.finish(f"failed: cannot open the log file {log_path}: {err.strerror or err}")
        return 1
    log_file = os.fdopen(log_fd, "a", buffering=1)
    context = daemon.DaemonContext(working_directory="/", umask=0o022, detach_process=True,
                                   files_preserve=[lock.fd, report_fd], stdout=log_file, stderr=log_file)
    try:
        context.open()
    except Exception as err:   # daemon.DaemonError and OS errors alike
        lock.release()
        reporter.finish(f"failed: cannot detach: {err}")
        return 1
    # From here on this is the daemon: parent 1, its own session, 0-2 redirected, other fds closed.
    last_error = _LastError()
    try:
        lock.write_pid(os.getpid())
        reporter.send(f"pid {os.getpid()}")
        _setup_logging(log_level, config.node.name)
        logging.getLogger().addHandler(last_error)
        return _run_agent(config, reporter, last_error)
    except BaseException as err:   # SIGTERM during start-up raises SystemExit (DaemonContext)
        logging.getLogger("hapacs").exception("the agent stopped")
        reporter.finish(f"failed: {last_error.text or type(err).__name__ + ': ' + str(err)}")
        return 1
    finally:
        lock.release()
        logging.shutdown()


def _run_agent(config: Config, reporter: _Reporter, last_error: _LastError) -> int:
    from .agent import Agent
    agent = Agent(config)

    def on_ready() -> None:
        logging.getLogger().removeHandler(last_error)
        reporter.finish("ready")

    agent.on_ready = on_ready   # called by Agent.run once it serves
    code = asyncio.run(agent.run())
    if code != 0:
        reporter.finish(f"failed: {last_error.text or f'the agent stopped with exit code {code}'}")
    return code


def _setup_logging(level: str, node: str) -> None:
    from . import logs
    logs.setup(level, node)   # to stderr, which is the log file
    if os.path.exists(SYSLOG_SOCKET):
        try:
            handler = NonBlockingSyslogHandler(SYSLOG_SOCKET)
        except OSError as err:
            logging.getLogger("hapacs").warning("cannot log to syslog at %s (%s); logging here instead",
                                                SYSLOG_SOCKET, err.strerror or err)
            return
        handler.setFormatter(logging.Formatter(f"hapacs[%(process)d]: {node} %(levelname)s %(message)s"))
        logging.getLogger().handlers[:] = [handler]


class NonBlockingSyslogHandler(logging.handlers.SysLogHandler):
    """Syslog over /dev/log that drops a line rather than wait for a syslog that is not reading.

    The stock handler sends with a blocking socket: a stalled journald would
    stall the event loop, and with it the heartbeats.
    """

    def __init__(self, address: str):
        super().__init__(address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if self.dropped:
                text += f" ({self.dropped} earlier log lines dropped: syslog did not take them)"
            priority = self.encodePriority(self.facility, self.mapPriority(record.levelname))
            data = f"<{priority}>{text}".encode("utf-8", errors="replace")
        except Exception:
            self.handleError(record)
            return
        try:
            self._send(data)
        except OSError:
            try:
                self.socket.close()
                self._connect_unixsocket(self.address)   # syslog restarted: one new try
                self._send(data)
            except OSError:
                self.dropped += 1
                return
        self.dropped = 0

    def _send(self, data: bytes) -> None:
        if self.socktype == socket.SOCK_STREAM:
            data += b"\0"   # a stream syslog needs a terminator; a partial line is dropped, never waited for
        self.socket.send(data, socket.MSG_DONTWAIT)
