"""Soak: many failovers in a row between two real agents, and what they leave behind.

Two agents (pacs-a, pacs-b) in a lab hand the VIP back and forth:

* planned: `hapacs release --drain-timeout 0` on the MASTER (the real command,
  through the control socket), then wait until the other node is MASTER and
  the only host holding the VIP;
* check-driven, every `--check-every`th failover: each agent has a `process`
  check on a pidfile; the MASTER's pidfile is taken away, the node goes to
  FAULT, the other takes over; the pidfile comes back and the node returns
  to BACKUP (recovered), ready for the next round.

Each failover must complete within a bounded wait (`--stuck-after`): a
failover that does not is a stuck state, and the run stops there with both
statuses printed. psutil figures of both agent processes (open fds, threads,
RSS) are taken after a short warm-up and again at the end; the growth and the
time per failover (median, p95, max) are printed. Targets: RSS growth under
5 MB over 500 failovers, fds and threads flat.

Run as root: python3 bench/soak.py [--failovers 500] [--check-every 25] [--json FILE]
tests/test_soak.py runs the same code with about 40 failovers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil                                   # noqa: E402

from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402

VIP = "192.0.2.100"
HOSTS = ("a", "b")
WARM_UP = 4                 # failovers before the "before" figures: lazily created threads and fds exist then
STUCK_AFTER_S = 15.0        # a failover not completed by then is a stuck state
CHECK = {"interval": 0.2, "timeout": 0.5, "fall": 2, "rise": 2}


class Stuck(AssertionError):
    """A failover that did not complete within the bounded wait."""


@dataclass
class Figures:
    fds: int
    threads: int
    rss_mb: float


@dataclass
class SoakResult:
    failovers: int = 0
    planned: int = 0
    check_driven: int = 0
    seconds: list[float] = field(default_factory=list)     # per failover: command to sole holder
    before: dict[str, Figures] = field(default_factory=dict)
    after: dict[str, Figures] = field(default_factory=dict)
    transitions: dict[str, int] = field(default_factory=dict)        # during the measured failovers

    def unexpected_transitions(self) -> int:
        """Transitions beyond those the failovers cause (2 per release, 3 per check-driven one): false
        failovers, e.g. when the machine stalls an agent past Master_Down_Interval."""
        return sum(self.transitions.values()) - 2 * self.planned - 3 * self.check_driven

    def growth(self) -> dict[str, dict[str, float]]:
        return {host: {"fds": self.after[host].fds - self.before[host].fds,
                       "threads": self.after[host].threads - self.before[host].threads,
                       "rss_mb": round(self.after[host].rss_mb - self.before[host].rss_mb, 2)}
                for host in self.before}

    def timing(self) -> dict[str, float]:
        ordered = sorted(self.seconds)
        if not ordered:
            return {}
        return {"median_s": round(statistics.median(ordered), 3),
                "p95_s": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 3),
                "max_s": round(ordered[-1], 3)}


def figures(pid: int) -> Figures:
    process = psutil.Process(pid)
    return Figures(process.num_fds(), process.num_threads(), round(process.memory_info().rss / 2**20, 2))


def pidfile(cluster: AgentCluster, host: str) -> str:
    return os.path.join(cluster.dir, f"{host}-pacs.pid")


def start_cluster(lab) -> AgentCluster:
    """Two agents, preempt off (every failover is the one we cause), each with a pidfile check."""
    cluster = AgentCluster(lab, preempt=False)
    for host, priority in (("a", 150), ("b", 100)):
        cluster.add(host, priority)
        cluster.checks[host] = [{"name": "pacs", "type": "process", "pidfile": pidfile(cluster, host), **CHECK}]
        # The "PACS" is this (bench or test) process: alive for the whole run.
        with open(pidfile(cluster, host), "w") as handle:
            handle.write(f"{os.getpid()}\n")
    cluster.start_all()
    return cluster


def _sole_master(lab, cluster, host) -> bool:
    other = next(h for h in HOSTS if h != host)
    return (cluster.state(host) == "MASTER" and cluster.state(other) in ("BACKUP", "FAULT")
            and lab.holders(VIP) == [host])


def _wait(lab, predicate, what: str, cluster, stuck_after_s: float) -> None:
    try:
        lab.wait_for(predicate, stuck_after_s, interval=0.02, what=what)
    except AssertionError as error:
        states = {h: cluster.status(h) for h in HOSTS}
        raise Stuck(f"{error}\n" + json.dumps(states, indent=1)[:6000]) from None


def planned_failover(lab, cluster, master: str, stuck_after_s: float) -> float:
    """`hapacs release --drain-timeout 0` on the MASTER; seconds until the other is the sole holder."""
    other = next(h for h in HOSTS if h != master)
    started = time.monotonic()
    done = cluster.cli(master, "release", "--drain-timeout", "0", timeout=stuck_after_s)
    if done.returncode != 0:
        raise Stuck(f"release on {master} exited {done.returncode}: {done.stderr.strip()}")
    _wait(lab, lambda: _sole_master(lab, cluster, other), f"{other} sole MASTER after release", cluster,
          stuck_after_s)
    return time.monotonic() - started


def check_failover(lab, cluster, master: str, stuck_after_s: float) -> float:
    """The MASTER's check fails (pidfile gone); seconds until the other is the sole holder.
    Then the check passes again and the old MASTER is back to BACKUP."""
    other = next(h for h in HOSTS if h != master)
    path = pidfile(cluster, master)
    started = time.monotonic()
    os.rename(path, path + ".off")
    try:
        _wait(lab, lambda: _sole_master(lab, cluster, other), f"{other} sole MASTER after {master}'s check failed",
              cluster, stuck_after_s)
        took = time.monotonic() - started
    finally:
        os.rename(path + ".off", path)
    _wait(lab, lambda: cluster.state(master) == "BACKUP", f"{master} BACKUP after its check recovered",
          cluster, stuck_after_s)
    return took


def current_master(lab, cluster, stuck_after_s: float) -> str:
    """The sole MASTER and VIP holder (normally the node the last failover went to)."""
    found: list[str] = []

    def one():
        found[:] = [h for h in HOSTS if _sole_master(lab, cluster, h)]
        return found
    _wait(lab, one, "one sole MASTER", cluster, stuck_after_s)
    return found[0]


def soak(lab, cluster, failovers: int, check_every: int = 0, stuck_after_s: float = STUCK_AFTER_S,
         progress=None) -> SoakResult:
    """`failovers` failovers in a row (after WARM_UP more); figures before and after."""
    result = SoakResult()
    _wait(lab, lambda: _sole_master(lab, cluster, "a"), "a sole MASTER at start", cluster, 20.0)
    pids = {host: cluster.procs[host].pid for host in HOSTS}
    for number in range(-WARM_UP, failovers):
        # Asked each time, not assumed: a false failover (a stalled machine) must not pass for a stuck one.
        master = current_master(lab, cluster, stuck_after_s)
        if number == 0:
            result.before = {host: figures(pid) for host, pid in pids.items()}
            counted = {host: cluster.status(host)["counters"]["transitions"] for host in HOSTS}
        by_check = (check_every and number % check_every == check_every - 1) or number == -1
        if by_check:
            took = check_failover(lab, cluster, master, stuck_after_s)
        else:
            took = planned_failover(lab, cluster, master, stuck_after_s)
        if number >= 0:
            result.failovers += 1
            result.check_driven += bool(by_check)
            result.planned += not by_check
            result.seconds.append(took)
            if progress and (number + 1) % progress == 0:
                print(f"  {number + 1} failovers, last {took * 1000:.0f} ms, RSS "
                      + ", ".join(f"pacs-{h} {figures(p).rss_mb} MB" for h, p in pids.items()), flush=True)
    for host, pid in pids.items():
        assert cluster.procs[host].poll() is None, f"agent {host} exited during the soak"
    result.after = {host: figures(pid) for host, pid in pids.items()}
    result.transitions = {host: cluster.status(host)["counters"]["transitions"] - counted[host]
                          for host in HOSTS}
    return result


def report(result: SoakResult) -> str:
    lines = [f"{result.failovers} failovers ({result.planned} planned release, {result.check_driven} "
             f"check-driven), none stuck; transitions other than those: {result.unexpected_transitions()}"]
    timing = result.timing()
    if timing:
        lines.append(f"per failover (command or fault to the other node sole MASTER and VIP holder): median "
                     f"{timing['median_s'] * 1000:.0f} ms, p95 {timing['p95_s'] * 1000:.0f} ms, max "
                     f"{timing['max_s'] * 1000:.0f} ms")
    lines.append(f"{'agent':8} {'fds':>13} {'threads':>13} {'RSS MB':>21}")
    growth = result.growth()
    for host in result.before:
        b, a, g = result.before[host], result.after[host], growth[host]
        lines.append(f"pacs-{host:3} {b.fds:4} -> {a.fds:4} ({g['fds']:+d}) {b.threads:4} -> {a.threads:4} "
                     f"({g['threads']:+d}) {b.rss_mb:7.2f} -> {a.rss_mb:7.2f} ({g['rss_mb']:+.2f})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="hapacs soak: many failovers in a row")
    parser.add_argument("--failovers", type=int, default=500)
    parser.add_argument("--check-every", type=int, default=25,
                        help="every Nth failover is caused by a failing check instead of release (0: never)")
    parser.add_argument("--stuck-after", type=float, default=STUCK_AFTER_S,
                        help="seconds a failover may take before it counts as stuck (the run stops)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/soak.py: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    print(f"Soak: {args.failovers} failovers between pacs-a and pacs-b (after {WARM_UP} warm-up), every "
          f"{args.check_every}th by a failing check", flush=True)
    started = time.monotonic()
    with Lab(unique_prefix("sk")) as lab:
        cluster = start_cluster(lab)
        try:
            result = soak(lab, cluster, args.failovers, args.check_every, args.stuck_after,
                          progress=max(1, args.failovers // 10))
        except Stuck as stuck:
            print(f"STUCK: {stuck}\n{cluster.logs()}", file=sys.stderr)
            return 1
    print(report(result))
    rss = max(g["rss_mb"] for g in result.growth().values())
    print(f"RSS growth target (< 5 MB over 500 failovers): {'met' if rss < 5 * args.failovers / 500 else 'MISSED'}"
          f"; wall time {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"failovers": result.failovers, "planned": result.planned,
                       "check_driven": result.check_driven, "timing": result.timing(),
                       "unexpected_transitions": result.unexpected_transitions(),
                       "before": {h: asdict(f) for h, f in result.before.items()},
                       "after": {h: asdict(f) for h, f in result.after.items()},
                       "growth": result.growth(), "seconds": [round(s, 4) for s in result.seconds]},
                      handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
