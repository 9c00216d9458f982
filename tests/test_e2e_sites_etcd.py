"""Two sites with routed VIPs, the BGP session gate AND `cluster.authority: etcd` (lab/sites.py).

The PACS hosts a (site A) and b (site B) run an agent, storescp and BIRD; three etcd
members run one on each site's LAN and one on the core side. The lease decides who may
hold the routed VIP, the BGP gate whether a node may compete for it at all. TTL 2 s,
heartbeats every 0.1 s, preemption off (so each step knows who serves). The tests run in
order on one lab, each leaving the state the next one starts from (said at its start):

1. a holds the lease and serves: the core's route is via site a.
2. a cut off from etcd (not from the workstations): it withdraws the VIP before its lease
   expires, b takes it; the core's BGP table never holds the VIP via two sites.
3. `hapacs release` on b: the lease and the route pass to a with no failed C-ECHO (the
   drained port holds new associations back while neither site announces).
4. a's BGP session blocked: a goes to FAULT and revokes; b, whose session flaps, never
   takes the lease while it flaps, and takes it once its session is stable.
5. kill -9 of the MASTER's agent (b) with its host and BIRD alive: the VIP's address ends by
   the lease's local deadline, so b's route is gone before a can take the lease.
Timings are measured in bench/sites_etcd.py.
"""

from __future__ import annotations

import re
import signal

import pytest

from lab.bird import require_bird
from lab.cluster import AgentCluster
from lab.dicom import echo, start_storescp
from lab.etcd import require_etcd_tools
from lab.netns import unique_prefix
from lab.sites import AGENT_DEAD_AFTER, VIP, SitesLab, VipProbe, etcd_agent_extra, ready_to_take_over

TTL = 2
STABLE_FOR_S = 1.0


@pytest.fixture(scope="module")
def lab():
    require_bird()
    require_etcd_tools()
    with SitesLab(unique_prefix("se")) as built:
        built.start_routers()
        built.etcd = built.start_etcd()
        yield built


@pytest.fixture(scope="module")
def cluster(lab):
    for host in ("a", "b"):
        start_storescp(lab, host, port=104, aet="PACS", fork=True)
    agents = AgentCluster(lab, dead_after=AGENT_DEAD_AFTER, preempt=False)
    agents.add("a", 150, **etcd_agent_extra(lab, "a", lab.etcd, "/hapacs/sites/", TTL, STABLE_FOR_S))
    agents.add("b", 100, **etcd_agent_extra(lab, "b", lab.etcd, "/hapacs/sites/", TTL, STABLE_FOR_S))
    agents.start_all()
    yield agents
    print(agents.logs()[-6000:])


def serving(lab, cluster, host: str, timeout: float = 10.0) -> None:
    lab.wait_serving(cluster, host, timeout)
    lab.wait_for(lambda: cluster.status(host)["authority"]["holder"] == f"pacs-{host}", timeout,
                 what=f"{host} holds the lease")


def not_competing(cluster, host: str) -> bool:
    """Neither MASTER nor the lease's holder (one status read: a slow check must not stretch the
    flapping period past bgp.stable_for)."""
    status = cluster.status(host)
    return status["state"] != "MASTER" and status["authority"]["holder"] != f"pacs-{host}"


def on_lo(lab, host: str) -> str:
    return lab.exec(host, ["ip", "addr", "show", "dev", "lo"]).stdout


def test_the_lease_holder_serves_through_its_site(lab, cluster):
    serving(lab, cluster, "a", timeout=20)
    status = cluster.status("a")
    assert status["authority"]["kind"] == "etcd" and status["bgp"]["ready"] is True
    assert cluster.status("b")["authority"]["holder"] == "pacs-a"
    assert VIP not in on_lo(lab, "b")
    assert echo(lab.ns("ws"), VIP, 104, called_ae="PACS")


def test_a_site_cut_off_from_etcd_stops_serving_before_its_lease_expires(lab, cluster):
    serving(lab, cluster, "a")
    table = lab.watch_core_table()
    lab.cut_from_etcd("a")
    try:
        serving(lab, cluster, "b", timeout=10)
    finally:
        lab.cut_from_etcd("a", on=False)
    left = [t for t in cluster.transitions("a") if t["from"] == "MASTER"][-1]
    assert left["to"] == "FAULT" and "lost the etcd lease: no renewal since" in left["reason"], left
    events = [(site, present) for _, site, present in table.events()]
    assert events == [("a", False), ("b", True)], events
    assert table.overlaps() == []
    gap = [stamp for stamp, _, _ in table.events()]
    # a withdrew, then etcd expired a's lease and b took it: not before a's margin had passed.
    assert gap[1] - gap[0] > 0.2, gap
    assert echo(lab.ns("ws"), VIP, 104, called_ae="PACS")
    lab.wait_for(lambda: cluster.state("a") == "BACKUP", 10, what="a out of FAULT once etcd answers")


def test_release_across_sites_passes_lease_and_route_with_no_failed_echo(lab, cluster):
    serving(lab, cluster, "b")
    lab.wait_for(lambda: ready_to_take_over(cluster, "a"), 10, what="a ready to take over")
    # A SYN held back by the drain (dropped) and again in the gap between the sites (the core's
    # discard route) is sent a third time 3 s after the first: the workstation waits up to 5 s.
    probe = VipProbe(lab, "release-etcd.jsonl", duration=20, timeout=5.0)
    table = lab.watch_core_table()
    result = cluster.cli("b", "release")
    assert result.returncode == 0, result.stderr
    serving(lab, cluster, "a")
    records = probe.records_after_move("a")
    failed = [r for r in records if not r["ok"]]
    assert len(records) >= 40
    assert failed == [], f"{len(failed)} failed echoes of {len(records)}: {failed[:3]}"
    # Break before make: b's lease (and route) went before a took it.
    assert [(site, present) for _, site, present in table.events()] == [("b", False), ("a", True)]
    assert table.overlaps() == []


def test_a_flapping_bgp_session_does_not_take_the_lease(lab, cluster):
    serving(lab, cluster, "a")
    # b's session restarted every 0.6 s (less than stable_for) from before a loses its own: b never
    # competes for the lease a gives up.
    lab.pacs_bird("b").birdc("restart", "uplink")
    lab.block_bgp("a")
    try:
        lab.flap_bgp("b", times=6, period_s=0.6, between=lambda period: lab.hold_for(
            lambda: not_competing(cluster, "b"), period, interval=0.05,
            what="b neither MASTER nor the lease's holder while its session flaps"))
        assert cluster.state("a") == "FAULT"
        assert cluster.status("b")["authority"]["holder"] is None       # a gave it up; nobody took it
        assert any(re.search(r"BGP session down \(uplink \w+\)", fault) for fault in cluster.status("a")["faults"])
        serving(lab, cluster, "b", timeout=10)     # stable now: b takes the lease
    finally:
        lab.block_bgp("a", on=False)
    lab.wait_for(lambda: cluster.state("a") == "BACKUP", 15, what="a BACKUP once its session is back")


def test_kill_9_of_the_masters_agent_ends_its_vip_before_the_lease_can_move(lab, cluster):
    serving(lab, cluster, "b")
    # The address's kernel lifetime ends by the lease's local deadline (sent + TTL - margin = 1.5 s
    # after each renewal was sent at TTL 2): whole seconds, so 1 s.
    lifetimes = re.findall(r"valid_lft (\d+)sec", on_lo(lab, "b"))
    assert lifetimes and all(int(left) <= 1 for left in lifetimes), on_lo(lab, "b")
    table = lab.watch_core_table()
    cluster.kill("b", signal.SIGKILL)
    assert lab.pacs_bird("b").running      # its host and BIRD live on, announcing what is on lo
    serving(lab, cluster, "a", timeout=10)
    events = table.events()
    assert [(site, present) for _, site, present in events] == [("b", False), ("a", True)], events
    assert table.overlaps() == []
    assert VIP not in on_lo(lab, "b")
    print(f"b's route withdrawn {events[1][0] - events[0][0]:.3f} s before a's arrived")
