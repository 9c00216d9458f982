"""Wall-clock jumps change no timer: the agent runs on the monotonic clock.

Two real agents run in a lab under libfaketime (Debian package `faketime`)
with DONT_FAKE_MONOTONIC=1: their wall clock (time.time, datetime.now) reads
an offset from a file the test rewrites (FAKETIME_TIMESTAMP_FILE with
FAKETIME_NO_CACHE=1), while CLOCK_MONOTONIC stays real, as after an NTP step
or an operator's `date -s`.

Proved:
1. The fake clock really jumps for processes under that environment, the
   agents included: a python started under the same environment reads the
   offset, and each agent's own log lines (a datagram it drops, which changes
   nothing else) carry the jumped time.
2. The wall clock jumps forward an hour, then back a day: no transition,
   no peer lost (peers_lost stays 0), the MASTER stays the only VIP holder,
   and heartbeats keep flowing (adverts_received grows on both).
3. After the jumps a failover still happens at the normal speed: kill -9
   of the MASTER, and the BACKUP is MASTER within a few seconds (Master_Down
   is 1 s here; a timer on the wall clock would wait an hour or fire at once).
4. An agent restarted while the wall clock is a day back gets a boot id from
   its persisted counter (the last one + 1, not the clock), so its peer
   accepts its heartbeats: no "replay" drops, it is heard and rejoins as BACKUP.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time


from lab.cluster import REPO, AgentCluster

from .checks_netns import in_netns
from .e2e import one_holder
from .fixtures import lab_fixture

HOSTS = ("a", "b")
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
HOUR, DAY = 3600, 86400
TOLERANCE_S = 120          # how far a faked clock may be from real time + offset (slow machine)
HOLD_S = 3.0               # how long nothing may move after a jump: three Master_Down_Intervals
PORT = 5405
# Master_Down_Interval 1 s (not the default 0.3 s): this shared machine stalls processes for a few
# hundred ms at times, which must not pass for the effect of a jump. A timer on the wall clock would
# be off by an hour or a day: it fires at once or never, which 1 s catches as well as 0.3 s.
DEAD_AFTER = 10


def libfaketime() -> str:
    """The preload library; installs the Debian package when missing, or fails saying so."""
    found = _find_libfaketime()
    if found:
        return found
    installed = subprocess.run(["apt-get", "install", "-y", "-q", "faketime"], capture_output=True, text=True,
                               timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = _find_libfaketime()
    if not found:
        raise AssertionError("this test needs libfaketime (Debian package faketime; add it to tools/setup); "
                             f"apt-get install -y faketime exited {installed.returncode}: "
                             f"{(installed.stderr or installed.stdout).strip()[-500:]}")
    return found


def _find_libfaketime() -> str | None:
    listed = subprocess.run(["dpkg", "-L", "libfaketime"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        if line.endswith("/faketime/libfaketime.so.1") and os.path.exists(line):
            return line
    return LIBFAKETIME if os.path.exists(LIBFAKETIME) else None


class FakeClock:
    """The offset file every faked process reads on each wall-clock call."""

    def __init__(self, directory: str, library: str):
        self.path = os.path.join(directory, "faketime")
        self.offset_s = 0
        self.set(0)
        self.env = {"LD_PRELOAD": library, "DONT_FAKE_MONOTONIC": "1", "FAKETIME_TIMESTAMP_FILE": self.path,
                    "FAKETIME_NO_CACHE": "1"}

    def set(self, offset_s: int) -> None:
        temporary = self.path + ".tmp"
        with open(temporary, "w") as handle:
            handle.write(f"{offset_s:+d}\n")         # relative to the real clock: "+3600", "-86400"
        os.replace(temporary, self.path)             # a reader never sees a half-written file
        self.offset_s = offset_s

    def read_in(self, lab, host) -> float:
        """time.time() as a python process under the fake clock sees it, in the host's namespace."""
        argv = ["env", *(f"{k}={v}" for k, v in self.env.items()), sys.executable, "-c",
                "import time; print(time.time())"]
        return float(lab.exec(host, argv).stdout)


def start_agent(lab, cluster: AgentCluster, clock: FakeClock, host: str) -> subprocess.Popen:
    """Like AgentCluster.start, with the fake clock in the environment."""
    path = cluster.write(host)
    with open(cluster.log_path(host), "a") as log:
        proc = lab.spawn(host, [sys.executable, "-m", "hapacs", "run", "-c", path],
                         env={"PYTHONPATH": REPO, **clock.env}, stdout=log, stderr=log)
    cluster.procs[host] = proc
    return proc


def agent_clock(lab, cluster: AgentCluster, host: str, cause: str) -> float:
    """The agent's own wall clock: the time on the log line of a datagram it drops.

    A datagram from the peer's address that is too short ("short") or too long
    ("long") is dropped and logged, and changes nothing else. Each cause is
    logged at most once every 10 s, so every call uses a cause of its own.
    """
    peer = next(h for h in HOSTS if h != host)
    sock = in_netns(lab.ns(peer), socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"x" * (3 if cause == "short" else 400), (lab.node(host).ipv4, PORT))
    finally:
        sock.close()
    wanted = f"dropped a heartbeat from {lab.node(peer).ipv4} ({cause})"

    def logged():
        with open(cluster.log_path(host)) as handle:
            return [line for line in handle if wanted in line]
    line = lab.wait_for(logged, 5, what=f"{host} logs {wanted!r}")[-1]
    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")   # logging's asctime, local
    return time.mktime(stamp.timetuple()) + stamp.microsecond / 1e6


def assert_close(seen: float, offset_s: int, what: str) -> None:
    expected = time.time() + offset_s
    assert abs(seen - expected) < TOLERANCE_S, (
        f"{what} reads {datetime.datetime.fromtimestamp(seen)}, expected about "
        f"{datetime.datetime.fromtimestamp(expected)} (real clock {offset_s:+d} s): the fake clock is not working")


lab = lab_fixture("wc", hosts=HOSTS)


def test_wall_clock_jumps_change_no_timer_and_a_restart_a_day_back_rejoins(lab):
    clock = FakeClock(lab.tmpdir, libfaketime())
    cluster = AgentCluster(lab, preempt=False, dead_after=DEAD_AFTER)
    cluster.add("a", 150)
    cluster.add("b", 100)
    try:
        for host in HOSTS:
            start_agent(lab, cluster, clock, host)
        lab.wait_for(lambda: cluster.masters() == ["a"] and cluster.state("b") == "BACKUP"
                     and one_holder(lab) == "a", 10, what="a MASTER, b BACKUP")
        settled = {h: cluster.status(h) for h in HOSTS}

        def steady() -> bool:
            return (cluster.masters() == ["a"] and cluster.state("b") == "BACKUP" and one_holder(lab) == "a"
                    and all(cluster.transitions(h) == settled[h]["transitions"] for h in HOSTS))

        for offset, cause in ((+HOUR, "short"), (-DAY, "long")):
            clock.set(offset)
            assert_close(clock.read_in(lab, "a"), offset, "a python under the fake clock")
            for host in HOSTS:
                assert_close(agent_clock(lab, cluster, host, cause), offset, f"agent {host}'s log")
            received = {h: cluster.status(h)["counters"]["adverts_received"] for h in HOSTS}
            lab.hold_for(steady, HOLD_S, what=f"nothing moves after the wall clock jumped {offset:+d} s")
            for host in HOSTS:
                counters = cluster.status(host)["counters"]
                assert counters["peers_lost"] == 0, f"{host} lost its peer after a jump of {offset:+d} s"
                assert counters["transitions"] == settled[host]["counters"]["transitions"]
                # Heartbeats every 0.1 s: about 30 in HOLD_S; half is plenty on a loaded machine.
                assert counters["adverts_received"] >= received[host] + 15, (host, counters)

        # A failover after the jumps, at the normal speed.
        killed = time.monotonic()
        cluster.kill("a", signal.SIGKILL)
        lab.wait_for(lambda: cluster.state("b") == "MASTER", 5, what="b MASTER within a few seconds of kill -9")
        took = time.monotonic() - killed
        lab.wait_for(lambda: one_holder(lab) == "b", 10, what="a's VIP lease expired, b sole holder")

        # a starts again with the wall clock a day back: its boot id comes from the stored counter.
        boot_file = os.path.join(cluster.dir, "a-state", "boot-id")
        with open(boot_file) as handle:
            old_boot_id = int(handle.read())
        replays = cluster.status("b")["drops"]["replay"]
        start_agent(lab, cluster, clock, "a")
        lab.wait_for(lambda: cluster.state("a") == "BACKUP", 10, what="a back as BACKUP")
        with open(boot_file) as handle:
            assert int(handle.read()) == old_boot_id + 1, "the boot id did not come from the stored counter"
        assert old_boot_id > (time.time() - DAY) * 1e9, "the first boot id was not larger than the clock now"
        lab.wait_for(lambda: any(p["name"] == "pacs-a" and p["state"] == "BACKUP"
                                 for p in cluster.status("b")["peers"]), 5, what="b hears a as BACKUP")
        heard = cluster.status("b")["counters"]["adverts_received"]
        lab.hold_for(lambda: cluster.masters() == ["b"] and cluster.state("a") == "BACKUP"
                     and one_holder(lab) == "b", 2.0, what="a rejoined as BACKUP, b MASTER")
        status_b = cluster.status("b")
        assert status_b["drops"]["replay"] == replays, f"b drops a's heartbeats as replays: {status_b['drops']}"
        assert status_b["counters"]["adverts_received"] >= heard + 10
        # The restarted agent's own clock is a day back: its transition is stamped so.
        at = cluster.status("a")["transitions"][-1]["at"]
        stamped = datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
        assert_close(stamped.timestamp(), -DAY, "a's transition after the restart")
        print(f"\nfailover after the jumps took {took * 1000:.0f} ms")
    finally:
        print(cluster.logs())
