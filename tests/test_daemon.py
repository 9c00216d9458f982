"""`hapacs run --daemon --pidfile PATH` with real processes in a lab namespace.

The command the operator types must tell the truth by its exit status:
0 only once the detached agent serves; non-zero, with the reason on stderr,
when another agent holds the pidfile or the agent cannot start. A pidfile
left by kill -9 is taken over. Daemons detach, so every one is found by the
pid in its pidfile and killed by that pid, never by name.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time

import pytest

from hapacs.daemon import AlreadyRunning, NonBlockingSyslogHandler, PidFile
from lab import Lab
from lab.cluster import AgentCluster
from .fixtures import lab_fixture


lab = lab_fixture("dm", hosts=("a",), workstation=False)


class Daemons:
    """Start `hapacs run --daemon` in the lab; remember every pid seen, kill them all at the end."""

    def __init__(self, lab, **extra):
        self.lab = lab
        self.cluster = AgentCluster(lab, multicast=True)   # one agent: no peers to list
        self.cluster.add("a", 150, **extra)
        self.config = self.cluster.write("a")
        self.pidfile = os.path.join(self.cluster.dir, "run", "hapacs.pid")
        self.seen: set[int] = set()

    def start(self):
        argv = [sys.executable, "-m", "hapacs", "run", "-c", self.config, "--daemon", "--pidfile", self.pidfile]
        started = time.monotonic()
        completed = self.lab.exec("a", argv, check=False, timeout=30)
        completed.elapsed_s = time.monotonic() - started
        pid = self.pid()
        if pid:
            self.seen.add(pid)
        return completed

    def pid(self) -> int | None:
        try:
            with open(self.pidfile) as handle:
                return int(handle.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    def status(self) -> dict | None:
        return self.cluster.status("a")

    def kill_all(self):
        for pid in self.seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for pid in self.seen:
            wait_gone(pid)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    Lab.wait_for(lambda: not alive(pid), timeout, what=f"pid {pid} gone")


@pytest.fixture
def daemons(lab):
    made = []

    def make(**extra):
        made.append(Daemons(lab, **extra))
        return made[-1]

    yield make
    for daemon in made:
        daemon.kill_all()


def test_start_refuse_second_take_over_after_kill_9_and_clean_stop(daemons):
    daemon = daemons()

    first = daemon.start()
    assert first.returncode == 0, first.stderr
    pid = daemon.pid()
    assert pid and alive(pid), "the pidfile must name a live process once the command returned"
    assert f"pid {pid}" in first.stdout
    assert os.getsid(pid) != os.getsid(0), "the daemon has its own session"
    status = daemon.status()
    assert status is not None and status["pid"] == pid, "the control socket answers as soon as start returned"

    second = daemon.start()
    assert second.returncode == 1
    assert f"already runs as pid {pid}" in second.stderr, second.stderr
    assert daemon.pid() == pid and alive(pid), "the refused start left the running agent alone"

    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert daemon.pid() == pid, "kill -9 leaves the pidfile behind"
    third = daemon.start()
    assert third.returncode == 0, third.stderr
    assert f"named pid {pid}, which no longer holds it; taking it over" in third.stderr
    new_pid = daemon.pid()
    assert new_pid != pid and alive(new_pid)
    assert daemon.status()["pid"] == new_pid

    os.kill(new_pid, signal.SIGTERM)
    wait_gone(new_pid, timeout=20)
    assert not os.path.exists(daemon.pidfile), "a clean stop removes the pidfile"
    assert not os.path.exists(daemon.cluster.socket_path("a"))
    with open(daemon.pidfile.removesuffix(".pid") + ".log") as handle:
        logged = handle.read()
    assert "starting: node pacs-a" in logged and "stopped" in logged, logged[-3000:]


def test_start_failure_exits_non_zero_with_the_reason(daemons):
    daemon = daemons(cluster={"interface": "nosuch0"})
    completed = daemon.start()
    assert completed.returncode == 1
    assert "interface nosuch0 not found" in completed.stderr, completed.stderr
    assert completed.elapsed_s < 10, "the failure is reported as it happens, not after a timeout"
    assert daemon.pid() is None, "a daemon that could not start leaves no pidfile"
    # And the pidfile is free: a fixed configuration starts.
    fixed = daemons()
    fixed.pidfile = daemon.pidfile
    completed = fixed.start()
    assert completed.returncode == 0, completed.stderr


def test_a_taken_control_socket_is_a_start_failure_not_a_success(daemons, lab):
    """Another agent (started without a pidfile) answers on the socket: the launcher must not take
    that answer for its own daemon's."""
    daemon = daemons()
    foreground = daemon.cluster.start("a")
    lab.wait_for(lambda: daemon.status() is not None, 10, what="the foreground agent answers")
    completed = daemon.start()
    assert completed.returncode == 1
    assert "cannot start" in completed.stderr, completed.stderr
    assert foreground.poll() is None, "the refused daemon left the running agent alone"


def test_pidfile_lock_in_process(tmp_path):
    path = str(tmp_path / "sub" / "x.pid")
    holder = PidFile(path)
    holder.acquire()
    holder.write_pid(os.getpid())
    with pytest.raises(AlreadyRunning, match=f"already runs as pid {os.getpid()}"):
        PidFile(path).acquire()
    holder.release()
    assert not os.path.exists(path)
    again = PidFile(path)
    again.acquire()
    assert again.stale_pid is None
    again.release()


def test_syslog_handler_drops_instead_of_blocking(tmp_path):
    """A syslog that stops reading must never stall the agent's event loop."""
    address = str(tmp_path / "log")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    handler = NonBlockingSyslogHandler(address)
    handler.setFormatter(logging.Formatter("hapacs[%(process)d]: %(message)s"))
    logger = logging.getLogger("test-syslog")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("first line")
        assert receiver.recv(4096) == f"<28>hapacs[{os.getpid()}]: first line".encode()   # daemon.warning
        started = time.monotonic()
        for index in range(5000):   # far more than a datagram queue holds
            logger.warning("line %d", index)
        assert time.monotonic() - started < 5
        assert handler.dropped > 0
        receiver.setblocking(False)
        while True:
            try:
                receiver.recv(4096)
            except BlockingIOError:
                break
        logger.warning("after the flood")
        assert b"earlier log lines dropped" in receiver.recv(4096)
        assert handler.dropped == 0
    finally:
        logger.removeHandler(handler)
        handler.close()
        receiver.close()
