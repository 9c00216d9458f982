"""Routed VIPs across two sites (lab/sites.py): what BGP and a site failover cost.

In one sites lab (real BIRD 2 everywhere, BFD 100 ms x 3), per trial:
- announce / withdraw: the VIP added to / removed from lo of site a's PACS host by hand
  (no agent), until the core router's kernel route appears / goes (`ip -ts monitor` in both
  namespaces, so both ends are kernel timestamps);
- silent host loss: every BGP and BFD packet of site a's PACS host dropped (nftables), until
  the core's route is withdrawn (BFD at the site router);
- failover with heartbeats: agents on both hosts (advert_interval 0.1, dead_after 5), the
  MASTER's agent killed and its link cut; the workstation's outage (C-ECHO every 20 ms, from
  the last answer before the fault to the first after) and the core's route moving. The lost
  host comes back as BACKUP (preempt off) and the next trial loses the other site;
- release: `hapacs release` back and forth; how long the core's BGP table (its BIRD's route
  log, milliseconds) held the VIP via both sites (make before break).

Run as root: .venv/bin/python bench/sites.py [--trials 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import exit_with  # noqa: E402

from lab import unique_prefix  # noqa: E402
from lab.cluster import AgentCluster  # noqa: E402
from lab.dicom import start_storescp  # noqa: E402
from lab.outage import load, outage  # noqa: E402
from lab.probe import start_probe  # noqa: E402
from lab.sites import AGENT_DEAD_AFTER, VIP, SitesLab, agent_extra  # noqa: E402


class Monitor:
    """`ip -ts monitor KIND` in a namespace, lines with their kernel-side wall-clock times."""

    def __init__(self, lab, ns: str, kind: str):
        self.path = os.path.join(lab.tmpdir, f"monitor-{ns}-{kind}.txt")
        self.handle = open(self.path, "w")
        self.proc = lab.spawn(ns, ["ip", "-ts", "monitor", kind], stdout=self.handle)
        time.sleep(0.2)     # bench only: let the monitor subscribe before the first event

    def events(self, text: str) -> list[tuple[float, str]]:
        found = []
        for line in open(self.path).read().splitlines():
            if text in line and line.startswith("["):
                stamp = datetime.strptime(line[1:27], "%Y-%m-%dT%H:%M:%S.%f").timestamp()
                found.append((stamp, line[28:].strip()))
        return found


def bgp_timings(lab, trials: int) -> dict:
    addresses, routes = Monitor(lab, "a", "address"), Monitor(lab, "co", "route")
    for _ in range(trials):
        lab.exec("a", ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"])
        lab.wait_for(lambda: lab.core_routes() == ["a"], 5, interval=0.01, what="announced")
        lab.exec("a", ["ip", "addr", "del", f"{VIP}/32", "dev", "lo"])
        lab.wait_for(lambda: lab.core_routes() == [], 5, interval=0.01, what="withdrawn")
    time.sleep(0.3)
    added = [t for t, line in addresses.events(VIP) if not line.startswith("Deleted")]
    removed = [t for t, line in addresses.events(VIP) if line.startswith("Deleted")]
    core_new = [t for t, line in routes.events(f"{VIP} via") if not line.startswith("Deleted")]
    core_gone = [t for t, line in routes.events(f"{VIP} via") if line.startswith("Deleted")]
    announce = [(c - a) * 1000 for a, c in zip(added, core_new)]
    withdraw = [(c - r) * 1000 for r, c in zip(removed, core_gone)]
    lab.stop(addresses.proc), lab.stop(routes.proc)
    return {"announce_ms": announce, "withdraw_ms": withdraw}


def silent_loss(lab, trials: int) -> list[float]:
    times = []
    for _ in range(trials):
        lab.exec("a", ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"])
        lab.wait_for(lambda: lab.core_routes() == ["a"], 15, interval=0.01,
                     what="the VIP announced")
        start = time.monotonic()
        lab.block_bgp("a")
        lab.wait_for(lambda: lab.core_routes() == [], 10, interval=0.01, what="withdrawn after BFD")
        times.append((time.monotonic() - start) * 1000)
        lab.block_bgp("a", on=False)
        lab.exec("a", ["ip", "addr", "del", f"{VIP}/32", "dev", "lo"])
        lab.wait_for(lambda: lab.birds["a"].protocol_state("uplink") == "Established", 15, interval=0.05,
                     what="the session back")
    return times


def failovers(lab, trials: int) -> list[dict]:
    for host in ("a", "b"):
        start_storescp(lab, host, port=104, aet="PACS", fork=True)
    cluster = AgentCluster(lab, preempt=False, dead_after=AGENT_DEAD_AFTER)
    cluster.add("a", 150, **agent_extra(lab, "a", 1.0))
    cluster.add("b", 100, **agent_extra(lab, "b", 1.0))
    cluster.start_all()
    lab.wait_for(lambda: cluster.masters() == ["a"] and lab.core_routes() == ["a"], 20, what="a serving")
    out = os.path.join(lab.tmpdir, "failover.jsonl")
    probe = start_probe(lab, out, VIP, interval=0.02, duration=30 * trials + 30, timeout=1.0, overlap=10)
    results = []
    for _ in range(trials):
        master = cluster.masters()[0]
        other = "b" if master == "a" else "a"
        lab.wait_for(lambda: os.path.exists(out) and sum(r["ok"] for r in load(out)[-20:]) >= 20, 15,
                     what="served before the fault")
        fault_t = time.monotonic()
        cluster.kill(master, signal.SIGKILL)
        lab.link_down(master)
        lab.wait_for(lambda: lab.core_routes() == [other], 10, interval=0.01, what="the route moved")
        moved_s = time.monotonic() - fault_t
        lab.wait_for(lambda: any(r["ok"] and r["t"] > fault_t for r in load(out)), 10, what="served again")
        result = outage(load(out), fault_t)
        result["route_moved_s"] = moved_s
        results.append(result)
        lab.link_up(master)
        cluster.start(master)
        lab.wait_for(lambda: cluster.state(master) == "BACKUP" and
                     (cluster.status(master) or {}).get("bgp", {}).get("ready"), 20, what="back as BACKUP")
    lab.stop(probe, timeout=5)
    return results, cluster


def releases(lab, cluster, trials: int) -> list[float]:
    """`hapacs release` back and forth: how long the core's BGP table held the VIP via both sites
    (make before break), per release (0 when it never did)."""
    spans = []
    for _ in range(trials):
        master = cluster.masters()[0]
        other = "b" if master == "a" else "a"
        lab.wait_for(lambda: (cluster.status(other) or {}).get("bgp", {}).get("ready"), 20, what="standby ready")
        table = lab.watch_core_table()
        result = cluster.cli(master, "release")
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        lab.wait_for(lambda: cluster.masters() == [other] and lab.core_routes() == [other], 10, what="moved")
        time.sleep(0.2)     # bench only: let the old route's withdrawal reach the core's log
        spans.append(sum(table.overlaps()))
    return spans


def summary(values: list[float]) -> str:
    values = sorted(values)
    return (f"median {statistics.median(values):.1f}, min {values[0]:.1f}, max {values[-1]:.1f} "
            f"(n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    start = time.monotonic()
    with SitesLab(unique_prefix("bs")) as lab:
        lab.start_routers()
        print(f"lab built and every BGP session Established in {time.monotonic() - start:.2f} s")
        timings = bgp_timings(lab, args.trials)
        print(f"announce at the core after the VIP is on lo: {summary(timings['announce_ms'])} ms")
        print(f"withdraw at the core after the VIP left lo:  {summary(timings['withdraw_ms'])} ms")
        print(f"silent host loss (BGP+BFD dropped) until the core withdraws: "
              f"{summary(silent_loss(lab, args.trials))} ms")
        results, cluster = failovers(lab, args.trials)
        print("site failover with heartbeats (kill -9 + link down of the MASTER's host):")
        print(f"  workstation outage: {summary([r['outage_s'] * 1000 for r in results])} ms, "
              f"failed echoes {[r['failures'] for r in results]}")
        print(f"  core route moved after: {summary([r['route_moved_s'] * 1000 for r in results])} ms")
        overlaps = releases(lab, cluster, args.trials)
        print(f"hapacs release: the core's BGP table held the VIP via both sites for "
              f"{summary([o * 1000 for o in overlaps])} ms")
    return 0


if __name__ == "__main__":
    exit_with(main)
