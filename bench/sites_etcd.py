"""Two sites with routed VIPs, the BGP gate and `cluster.authority: etcd` (lab/sites.py).

One sites lab per etcd timer setting (three etcd members: site A's LAN, site B's LAN, the core
side); agents on the two PACS hosts (TTL --ttl, heartbeats every 0.1 s, dead_after 5, preempt
off, port 104 drained at a handover); a workstation behind the core sends a C-ECHO every 20 ms
(up to 10 in flight). Sections (--only picks some):

- site: the MASTER's site loses power: its uplink to the core down, then its agent killed and
  its BIRD stopped (its etcd member, still running, is cut off with the site). The workstation's outage
  (lab/outage.py: last answer before to first answer after), whether the etcd leader was in
  the lost site. The site comes back (BACKUP) and the next trial loses the other one.
- cut: the MASTER's host cut off from every etcd member (nftables), not from the workstations:
  the time until its route left the core's BGP table, the gap until the other site's route came
  (>0: it withdrew before the other could take the lease), overlaps in the core's table.
- release: `hapacs release` back and forth with C-ECHOes and C-STOREs running: failures.
- members: one etcd member killed (a follower, the leader) and restarted, and a planned leader
  change (`etcdctl move-leader`): transitions of the agents and failed C-ECHOes meanwhile.
- flap: the BACKUP's BGP session restarted every 0.6 s (under bgp.stable_for 1 s) while the
  MASTER's session is blocked: does the flapping site ever take the lease?

Run as root: .venv/bin/python bench/sites_etcd.py [--trials 10] [--timers 100/1000,25/250]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import exit_with, p95  # noqa: E402

from lab import unique_prefix  # noqa: E402
from lab.cluster import AgentCluster  # noqa: E402
from lab.dicom import start_storescp  # noqa: E402
from lab.etcd import RaftTimers, follower, healthy, kill_member, leader, move_leader, restart_member  # noqa: E402
from lab.outage import load, outage  # noqa: E402
from lab.probe import start_probe  # noqa: E402
from lab.sites import AGENT_DEAD_AFTER, SITES, VIP, SitesLab, etcd_agent_extra  # noqa: E402

OTHER = {"a": "b", "b": "a"}


def start(lab, ttl: int, timers: RaftTimers):
    lab.start_routers()
    etcd = lab.start_etcd(timers)
    for host in ("a", "b"):
        start_storescp(lab, host, port=104, aet="PACS", fork=True)
    cluster = AgentCluster(lab, dead_after=AGENT_DEAD_AFTER, preempt=False)
    for host, priority in (("a", 150), ("b", 100)):
        cluster.add(host, priority, **etcd_agent_extra(lab, host, etcd, "/hapacs/bench/", ttl))
    cluster.start_all()
    lab.wait_for(lambda: cluster.masters() == ["a"] and lab.core_routes() == ["a"], 30, what="a serving")
    ready(lab, cluster, "b")
    return etcd, cluster


def ready(lab, cluster, host: str) -> None:
    lab.wait_for(lambda: cluster.state(host) == "BACKUP" and (cluster.status(host) or {}).get("bgp", {}).get("ready"),
                 30, what=f"{host} BACKUP with its BGP gate open")


def served(lab, out: str, since: float, count: int = 20) -> None:
    lab.wait_for(lambda: os.path.exists(out) and sum(1 for r in load(out) if r["ok"] and r["t"] > since) >= count,
                 20, what="the workstation served")


def summary(values: list[float], unit: str = "s") -> str:
    values = sorted(values)
    return (f"median {statistics.median(values):.2f} {unit}, p95 {p95(values):.2f}, min {values[0]:.2f}, "
            f"max {values[-1]:.2f} (n={len(values)})")


def site_loss(lab, cluster, etcd, trials: int) -> None:
    out = os.path.join(lab.tmpdir, "site.jsonl")
    probe = start_probe(lab, out, VIP, interval=0.02, duration=40 * trials + 30, timeout=1.0, overlap=10)
    outages, leader_lost = [], []
    for _ in range(trials):
        master = cluster.masters()[0]
        site = SITES[master]
        served(lab, out, time.monotonic() - 1)
        chief = leader(etcd)
        fault_t = time.monotonic()
        lab.site_down(master)           # first: the whole site silent at once; then what runs in it stops
        cluster.kill(master, signal.SIGKILL)
        lab.birds[master].stop()
        try:
            lab.wait_for(lambda: lab.core_routes() == [OTHER[master]], 20, interval=0.02, what="the route moved")
        except AssertionError:
            status = cluster.status(OTHER[master]) or {}
            print({key: status.get(key) for key in ("state", "holds", "faults", "authority", "bgp")})
            print(cluster.logs()[-3000:])
            raise
        moved_s = time.monotonic() - fault_t
        lab.wait_for(lambda: any(r["ok"] and r["t"] > fault_t for r in load(out)), 10, what="served again")
        result = outage(load(out), fault_t)
        outages.append(result["outage_s"])
        leader_lost.append(chief == site.etcd)
        took = [t for t in cluster.transitions(OTHER[master]) if t["to"] == "MASTER"][-1]
        print(f"  lost site {master} (etcd leader {chief}): outage {result['outage_s']:.2f} s, "
              f"{result['failures']} failed echoes; route moved after {moved_s:.2f} s; {took['reason']}")
        lab.site_up(master)
        lab.start_pacs_bird(master)
        cluster.start(master)
        lab.wait_for(lambda: healthy(etcd, "ec", etcd.endpoints), 20, what="etcd whole again")
        ready(lab, cluster, master)
    lab.stop(probe, timeout=5)
    print(f"site power loss, workstation outage: {summary(outages)}; the etcd leader was in the lost site "
          f"in {sum(leader_lost)} of {trials}")
    with_leader = [o for o, lost in zip(outages, leader_lost) if lost]
    if with_leader:
        print(f"  of which with the etcd leader lost: {summary(with_leader)}")


def etcd_cut(lab, cluster, trials: int) -> None:
    withdrawn, gaps, overlaps, order_ok = [], [], 0, 0
    for _ in range(trials):
        master = cluster.masters()[0]
        other = OTHER[master]
        table = lab.watch_core_table()
        lab.cut_from_etcd(master)
        cut = time.time()
        lab.wait_for(lambda: cluster.masters() == [other] and lab.core_routes() == [other], 15, what="moved")
        lab.cut_from_etcd(master, on=False)
        time.sleep(0.3)     # bench only: let the core's log catch up
        events = table.events()
        overlaps += len(table.overlaps())
        if [(s, p) for _, s, p in events] == [(master, False), (other, True)]:
            order_ok += 1
            withdrawn.append(events[0][0] - cut)
            gaps.append(events[1][0] - events[0][0])
        ready(lab, cluster, master)
    print(f"site cut off from etcd: its route left the core {summary(withdrawn)} after the cut; the other "
          f"site's came {summary(gaps)} later; withdrawn first in {order_ok} of {trials}, core's table held "
          f"both sites in {overlaps} interval(s)")


def releases(lab, cluster, trials: int) -> None:
    out = os.path.join(lab.tmpdir, "release.jsonl")
    probe = start_probe(lab, out, VIP, interval=0.02, duration=15 * trials + 30, timeout=3.0, store=True)
    served(lab, out, time.monotonic() - 1)
    began, took = time.monotonic(), []
    for _ in range(trials):
        master = cluster.masters()[0]
        other = OTHER[master]
        ready(lab, cluster, other)
        start = time.monotonic()
        result = cluster.cli(master, "release")
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        lab.wait_for(lambda: cluster.masters() == [other] and lab.core_routes() == [other], 15, what="moved")
        took.append(time.monotonic() - start)
        served(lab, out, time.monotonic(), 10)
    lab.stop(probe, timeout=5)
    records = [r for r in load(out) if r["t"] >= began]
    for kind in ("echo", "store"):
        mine = [r for r in records if r.get("kind", "echo") == kind]
        print(f"release ({trials}x): {kind}: {sum(not r['ok'] for r in mine)} failed of {len(mine)}")
    print(f"  release command until the other site serves: {summary(took)}")


def members(lab, cluster, etcd, trials: int) -> None:
    out = os.path.join(lab.tmpdir, "members.jsonl")
    probe = start_probe(lab, out, VIP, interval=0.02, duration=20 * trials * 3 + 30, timeout=1.0, overlap=10)
    results: dict[str, list[tuple[int, int]]] = {"follower": [], "leader": [], "move-leader": []}
    for _ in range(trials):
        for kind in results:
            served(lab, out, time.monotonic() - 1)
            before = {h: len(cluster.transitions(h)) for h in ("a", "b")}
            start = time.monotonic()
            chief = lab.wait_for(lambda: leader(etcd), 10, what="an etcd leader")
            if kind == "move-leader":
                move_leader(etcd, follower(etcd))
            else:
                victim = chief if kind == "leader" else follower(etcd)
                kill_member(etcd, victim)
            time.sleep(4)       # bench only: the window in which a transition would show
            moved = sum(len(cluster.transitions(h)) - before[h] for h in ("a", "b"))
            failures = [r for r in load(out) if not r["ok"] and r["t"] >= start]
            failed = len(failures)
            results[kind].append((moved, failed))
            if failures and not moved:
                errors = sorted({r["err"][:80] for r in failures})
                print(f"    {kind}: {failed} failed echoes without a transition: {errors}")
            if moved:
                for host in ("a", "b"):
                    for t in cluster.transitions(host)[before[host]:]:
                        print(f"    {kind}: {host}: {t['from']} -> {t['to']}: {t['reason']}")
            if kind != "move-leader":
                restart_member(etcd, victim)
            lab.wait_for(lambda: healthy(etcd, "ec", etcd.endpoints), 20, what="etcd whole again")
            lab.wait_for(lambda: len(cluster.masters()) == 1, 20, what="one MASTER")
            ready(lab, cluster, OTHER[cluster.masters()[0]])
    lab.stop(probe, timeout=5)
    for kind, found in results.items():
        print(f"etcd {kind}: trials with a hapacs transition {sum(1 for m, _ in found if m)} of {len(found)}, "
              f"failed echoes {[f for _, f in found]}")


def flapping(lab, cluster, trials: int) -> None:
    took = 0
    for _ in range(trials):
        master = cluster.masters()[0]
        other = OTHER[master]
        lab.pacs_bird(other).birdc("restart", "uplink")
        lab.block_bgp(master)
        seen = []

        def look(period: float) -> None:
            until = time.monotonic() + period
            while time.monotonic() < until:
                status = cluster.status(other) or {}
                seen.append(status.get("state") == "MASTER"
                            or (status.get("authority") or {}).get("holder") == f"pacs-{other}")
                time.sleep(0.05)
        lab.flap_bgp(other, times=6, period_s=0.6, between=look)
        took += any(seen)
        lab.wait_for(lambda: cluster.masters() == [other] and lab.core_routes() == [other], 15,
                     what="the flapping site serves once stable")
        lab.block_bgp(master, on=False)
        ready(lab, cluster, master)
    print(f"flapping BGP session on the standby's site while the MASTER's is down: took the lease while "
          f"flapping in {took} of {trials} trials")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--timers", default="100/1000", help="etcd heartbeat/election timeout in ms, comma-separated")
    parser.add_argument("--only", default="site,cut,release,members,flap")
    parser.add_argument("--no-discard", action="store_true",
                        help="no discard route for the VIP range at the core (ICMP net unreachable in a gap)")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    for spec in args.timers.split(","):
        heartbeat, election = (int(v) for v in spec.split("/"))
        timers = RaftTimers(heartbeat, election)
        print(f"== etcd heartbeat {heartbeat} ms, election timeout {election} ms, TTL {args.ttl} s, "
              f"discard route at the core: {not args.no_discard}, load average {os.getloadavg()[0]:.2f}")
        with SitesLab(unique_prefix("sb"), discard_vips=not args.no_discard) as lab:
            etcd, cluster = start(lab, args.ttl, timers)
            if "members" in sections:
                members(lab, cluster, etcd, args.trials)
            if "site" in sections:
                site_loss(lab, cluster, etcd, args.trials)
            if "cut" in sections:
                etcd_cut(lab, cluster, args.trials)
            if "release" in sections:
                releases(lab, cluster, args.trials)
            if "flap" in sections:
                flapping(lab, cluster, args.trials)
        print(f"   load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    exit_with(main)
