"""The two HA daemons bench/failover compares, behind one small interface.

Both clusters offer: add(host, priority), start(host), stop(host) (SIGTERM,
wait for exit), signal(host, sig) (every process of the daemon on that
host), pids(host), state(host), transitions(host) ([{"from", "to",
"monotonic"}]), release(host) (the usual planned move of the VIP) and
close().

hapacs runs as lab.cluster.AgentCluster starts it, but under `chrt -r 10`,
the real-time policy its systemd unit sets (CPUSchedulingPolicy=rr,
CPUSchedulingPriority=10). keepalived runs with its own defaults (its Debian
unit sets no real-time policy, and vrrp_rt_priority is left unset): see
bench/keepalived.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from lab.cluster import REPO, AgentCluster

from keepalived import KeepalivedCluster

VIP = "192.0.2.100"
VIP_CIDR = "192.0.2.100/24"
HAPACS_CHECK = {"name": "pacs-dicom", "type": "dicom-echo", "port": 104, "called_ae": "PACS"}  # defaults otherwise
REALTIME_PRIORITY = "10"   # systemd/hapacs.service: CPUSchedulingPriority=10


class HapacsCluster(AgentCluster):
    """AgentCluster whose agents run real-time, as under the shipped systemd unit."""

    name = "hapacs"

    def __init__(self, lab, realtime=True, check=True, **kwargs):
        checks = {"a": [HAPACS_CHECK], "b": [HAPACS_CHECK]} if check else None
        super().__init__(lab, vips=(VIP_CIDR,), checks=checks, **kwargs)
        self.realtime = realtime

    def start(self, host: str, log_level: str = "info") -> subprocess.Popen:
        path = self.write(host)
        argv = [sys.executable, "-m", "hapacs", "run", "-c", path, "--log-level", log_level]
        if self.realtime:
            argv = ["chrt", "-r", REALTIME_PRIORITY, *argv]   # chrt execs: the pid stays the agent's
        env = {"PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.log_path(host), "a") as log:
            proc = self.lab.spawn(host, argv, env=env, stdout=log, stderr=log)
        self.procs[host] = proc
        return proc

    def pids(self, host: str) -> list[int]:
        proc = self.procs.get(host)
        return [proc.pid] if proc is not None and proc.poll() is None else []

    def signal(self, host: str, sig) -> float:
        sent_t = time.monotonic()
        os.kill(self.procs[host].pid, sig)
        if sig == signal.SIGKILL:
            self.procs[host].wait(5)
        return sent_t

    def stop(self, host: str) -> int | None:
        self.kill(host, signal.SIGTERM)   # hands over (drained) first, then exits
        return self.procs[host].returncode

    def release(self, host: str) -> str:
        result = self.cli(host, "release")
        if result.returncode != 0:
            raise RuntimeError(f"hapacs release on {host} failed: {result.stderr.strip()}")
        return result.stdout

    def close(self) -> None:
        pass


class Keepalived(KeepalivedCluster):
    def __init__(self, lab, advert_interval=0.1, preempt=True, preempt_delay=0.0, check=True, **kwargs):
        super().__init__(lab, vip=VIP_CIDR, advert_interval=advert_interval, preempt=preempt,
                         preempt_delay=preempt_delay, check=check, **kwargs)

    def release(self, host: str) -> str:
        """keepalived has no release command: stopping it sends priority 0 (RFC 5798 6.4.3).

        Returns once SIGTERM is sent, not when keepalived has exited (about a
        second later), so the caller sees the handover as it happens.
        """
        self.lab.kill(self.hosts[host].proc, signal.SIGTERM)
        return "SIGTERM sent"


def make_cluster(daemon: str, lab, advert_interval: float, preempt_delay: float, realtime=True,
                 check=True, snmp=False, keepalived_fall=2):
    """A two-node cluster (a: priority 150, b: 100) of `daemon` in `lab`, not started yet."""
    if daemon == "hapacs":
        cluster = HapacsCluster(lab, realtime=realtime, check=check, advert_interval=advert_interval,
                                dead_after=3, preempt=True, preempt_delay=preempt_delay)
        for host, priority in (("a", 150), ("b", 100)):
            extra = {"snmp": {"listen": [f"{lab.node(host).ipv4}:161"], "community": "public"}} if snmp else {}
            cluster.add(host, priority, **extra)
        return cluster
    if daemon == "keepalived":
        cluster = Keepalived(lab, advert_interval=advert_interval, preempt=True, preempt_delay=preempt_delay,
                             check=check, check_fall=keepalived_fall, snmp=snmp)
        cluster.add("a", 150)
        cluster.add("b", 100)
        return cluster
    raise ValueError(f"unknown daemon {daemon!r}")
