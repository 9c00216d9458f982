"""Live demo (`tools/demo --sites`): two PACS sites on different networks, and site A is lost.

Builds the sites lab (lab/sites.py: two PACS hosts behind their own BGP routers,
a core router, a workstation behind the core; BIRD 2 everywhere, BFD on every
session), a hapacs agent and storescp on each PACS host, the routed VIP
203.0.113.100/32 on lo of the MASTER, and a workstation that C-ECHOes the VIP
every 20 ms. Leadership is a lease in etcd (`cluster.authority: etcd`, TTL 2 s;
members on site A's LAN, site B's LAN and the core side). Then site A's PACS
host is lost (agent killed, link down): BFD withdraws its route, etcd expires
its lease, site B takes the lease and announces the VIP, and the core router's
route moves. Prints the timeline, the lease holder and what the workstation saw.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from lab import unique_prefix
from lab.cluster import AgentCluster
from lab.dicom import start_storescp
from lab.outage import answered, load, outage
from lab.probe import start_probe
from lab.etcd import RaftTimers
from lab.sites import VIP, SitesLab, etcd_agent_extra


def say(text: str = "") -> None:
    print(text, flush=True)


def watch_core(lab, changes: list, stop: threading.Event) -> None:
    """The core's routes to the VIP every 10 ms; (time, routes) at every change. Bounded to 60 s."""
    last, deadline = None, time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        routes = lab.core_routes()
        if routes != last:
            changes.append((time.monotonic(), routes))
            last = routes
        stop.wait(0.01)


def authority_line(table: str) -> str:
    """The status table's line on the etcd lease (who holds it, how long is left)."""
    return next((line.strip() for line in table.splitlines() if "authority etcd" in line), "(no authority line)")


def main(advert_interval: float, dead_after: int) -> int:
    with SitesLab(unique_prefix("ds")) as lab:
        started = time.monotonic()
        lab.start_routers()
        say(f"Sites lab up in {time.monotonic() - started:.1f} s: site A (198.51.100.0/26, router AS 64513), "
            "site B (198.51.100.64/26, AS 64514), core AS 64512, workstation 198.51.100.150 behind the core.")
        etcd = lab.start_etcd(RaftTimers(heartbeat_ms=50, election_ms=500))
        say("etcd 3.4: members on site A's LAN (198.51.100.21), site B's (.85) and the core side (.140).")
        for host in ("a", "b"):
            start_storescp(lab, host, port=104, aet="PACS", fork=True)
        cluster = AgentCluster(lab, advert_interval=advert_interval, dead_after=dead_after)
        cluster.add("a", 150, **etcd_agent_extra(lab, "a", etcd, "/hapacs/demo/", ttl=2))
        cluster.add("b", 100, **etcd_agent_extra(lab, "b", etcd, "/hapacs/demo/", ttl=2))
        cluster.start_all()
        lab.wait_for(lambda: cluster.masters() == ["a"] and lab.core_routes() == ["a"], 20,
                     what="pacs-a MASTER and announced")
        say(f"\nThe core router's BGP route to the VIP: via site {lab.core_routes()[0]}")
        say(lab.birds["co"].birdc("show", "route", f"{VIP}/32").strip())
        say("\n" + cluster.cli("a", "status").stdout)
        records = os.path.join(lab.tmpdir, "workstation.jsonl")
        probe = start_probe(lab, records, VIP, port=104, called_ae="PACS", interval=0.02, duration=30)
        lab.wait_for(lambda: answered(records) >= 25, 10, what="the workstation's first C-ECHOs")
        changes: list = []
        stop = threading.Event()
        watcher = threading.Thread(target=watch_core, args=(lab, changes, stop), daemon=True)
        watcher.start()
        lab.wait_for(lambda: changes, 2, what="the core watcher's first sample")

        say("Site A's PACS host is lost: its agent is killed and its link goes down.")
        fault_t = time.monotonic()
        cluster.kill("a", signal.SIGKILL)
        lab.link_down("a")
        lab.wait_for(lambda: cluster.masters() == ["b"] and lab.core_routes() == ["b"], 10,
                     what="pacs-b MASTER and announced")
        lab.wait_for(lambda: answered(records, since=fault_t) >= 50, 10, what="a second of service via site B")
        stop.set()
        watcher.join(2)
        lab.stop(probe)
        result = outage(load(records), fault_t)
        took_over = [t for t in cluster.transitions("b") if t["to"] == "MASTER"][-1]
        events = [(result["last_answer_t"] - fault_t, "last C-ECHO answered via site A"),
                  (0.0, "site A's PACS host lost"),
                  (took_over["monotonic"] - fault_t, f"pacs-b BACKUP -> MASTER: {took_over['reason']}"),
                  (result["served_again_t"] - fault_t, "first C-ECHO answered via site B")]
        events += [(t - fault_t, "core route: " + (" and ".join(f"via site {s}" for s in routes) or "none"))
                   for t, routes in changes if t > fault_t]
        say("\nTimeline (seconds after the loss):")
        for offset, text in sorted(events):
            say(f"  {offset:+7.3f}  {text}")
        say(f"\nWhat the workstation saw: {result['outage_s'] * 1000:.0f} ms from its last answered C-ECHO to "
            f"its first one via site B, {result['failures']} failed C-ECHO(s).")
        say("\n" + authority_line(cluster.cli("b", "status").stdout))
        say("\nThe core router's BGP route to the VIP now:")
        say(lab.birds["co"].birdc("show", "route", f"{VIP}/32").strip())
        say("\nRemoving the lab.")
    return 0
