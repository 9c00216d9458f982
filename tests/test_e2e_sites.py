"""Routed VIPs across two sites, with real BIRD and real netlink (lab/sites.py).

Each PACS host runs an agent, storescp and BIRD; the routed VIP 203.0.113.100/32 goes on lo of
the MASTER, BIRD announces it to the site router, the core router learns it and the workstation
(behind the core) reaches the PACS through it. Heartbeats are unicast across the routers
(cluster.authority heartbeats). The tests run in order on one lab, each leaving the state the
next one starts from (said at its start):

1. a MASTER: the core's route is via site a, the workstation echoes the VIP.
2. `hapacs release` on a: the route follows to b, no failed C-ECHO, the core never forwards via
   both sites (its BGP table holds both for a few ms: make before break).
3. b's host lost (agent killed, link down): a takes over, never via both sites.
4. BGP gate: b without BIRD, then with a flapping session, does not become MASTER with a gone;
   once stable it does; a MASTER whose session goes down hands over (FAULT).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from lab.bird import require_bird
from lab.cluster import AgentCluster
from lab.dicom import echo, start_storescp
from lab.netns import in_namespace, list_namespaces, unique_prefix
from lab.sites import AGENT_DEAD_AFTER as DEAD_AFTER
from lab.sites import (VIP, CoreSampler, SiteRouteMonitor, SitesLab, VipProbe, agent_extra,
                       ready_to_take_over)

ECHO = {"name": "pacs-dicom", "type": "dicom-echo", "port": 104, "called_ae": "PACS",
        "interval": 0.2, "timeout": 0.5, "fall": 2, "rise": 2}
STABLE_FOR_S = 1.0


@pytest.fixture(scope="module")
def lab():
    require_bird()
    with SitesLab(unique_prefix("bg")) as built:
        built.start_routers()
        yield built


@pytest.fixture(scope="module")
def cluster(lab):
    for host in ("a", "b"):
        start_storescp(lab, host, port=104, aet="PACS", fork=True)
    # Master_Down_Interval 0.5 s, above BFD's 0.3 s: a lost host's route is withdrawn before the
    # other site announces (with dead_after 3 both are 0.3 s, and the core saw both routes).
    agents = AgentCluster(lab, checks={"a": [ECHO], "b": [ECHO]}, dead_after=DEAD_AFTER)
    agents.add("a", 150, **agent_extra(lab, "a", STABLE_FOR_S))
    agents.add("b", 100, **agent_extra(lab, "b", STABLE_FOR_S))
    agents.start_all()
    return agents


def assert_never_two_sites(sampler: CoreSampler) -> None:
    samples = sampler.stop()
    assert len(samples) > 10, samples
    both = sampler.via_two_sites()
    assert not both, f"the core knew the VIP via two sites in {len(both)} of {len(samples)} samples: {both[:3]}"


def test_the_masters_site_announces_the_vip_and_the_workstation_reaches_it(lab, cluster):
    lab.wait_serving(cluster, "a", timeout=15)
    assert "via 192.0.2.2" in lab.kernel_route("co")          # the core forwards to site a's router
    assert "203.0.113.100/32" in lab.exec("a", ["ip", "-brief", "addr", "show", "dev", "lo"]).stdout
    assert "203.0.113.100" not in lab.exec("b", ["ip", "-brief", "addr", "show", "dev", "lo"]).stdout
    assert echo(lab.ns("ws"), VIP, 104, called_ae="PACS")
    status = cluster.status("a")
    assert status["bgp"]["ready"] is True and status["bgp"]["hold"] is None
    assert status["bgp"]["protocols"][0]["name"] == "uplink"
    assert status["bgp"]["protocols"][0]["state"] == "Established"
    assert {"address": "203.0.113.100/32", "interface": "lo", "held": True} in status["vips"]
    table = cluster.cli("a", "status").stdout
    assert "BGP gate open" in table and "uplink" in table


def test_release_moves_the_route_to_the_other_site_without_a_failed_echo(lab, cluster):
    lab.wait_serving(cluster, "a")
    lab.wait_for(lambda: ready_to_take_over(cluster, "b"), 10, what="b ready to take over")
    probe = VipProbe(lab, "release.jsonl", duration=30, timeout=3.0)
    # A release hands over make before break, as with ARP VIPs: b announces, a withdraws when it
    # hears b, so the core's BGP table knows both for a few ms (BENCHMARKS.md: median 3 ms). What
    # it forwards by never names two sites: the kernel table has one route, moving from a to b.
    sampler, table = CoreSampler(lab, table="kernel"), lab.watch_core_table()
    result = cluster.cli("a", "release")
    assert result.returncode == 0, result.stderr
    lab.wait_serving(cluster, "b")
    records = probe.records_after_move("b")
    failed = [r for r in records if not r["ok"]]
    assert len(records) >= 40         # 20 answered before the release, 20 through site b after
    assert failed == [], f"{len(failed)} failed echoes of {len(records)}: {failed[:3]}"
    assert_never_two_sites(sampler)
    assert {routes[0] for _, routes in sampler.samples if routes} == {"a", "b"}      # it did move
    assert "a" not in lab.core_routes()
    print(f"the core's BGP table held both sites for {[round(s * 1000, 1) for s in table.overlaps()]} ms")


def test_host_and_site_loss_moves_the_route_and_never_via_two_sites(lab, cluster):
    lab.wait_serving(cluster, "b")      # after the release
    sampler, monitor, table = CoreSampler(lab), SiteRouteMonitor(lab), lab.watch_core_table()
    cluster.kill("b", signal.SIGKILL)
    lab.link_down("b")              # the host is gone: its router's BFD sees it, the VIP lease no longer matters
    lab.site_down("b")              # and its site is silent: the core's session to router b goes at once
    lab.wait_serving(cluster, "a")
    lab.hold_for(lambda: lab.core_routes() == ["a"], 0.5, what="the route stays via site a")
    assert_never_two_sites(sampler)
    # Every route change in both site routers: b's was gone before a's came.
    monitor.stop()
    assert [(site, present) for _, site, present in monitor.events()] == [("b", False), ("a", True)]
    assert monitor.overlaps() == []
    # And the core's own BGP table (its BIRD logs every change): b's route went before a's came.
    assert [(site, present) for _, site, present in table.events()] == [("b", False), ("a", True)]
    assert table.overlaps() == []
    assert echo(lab.ns("ws"), VIP, 104, called_ae="PACS")


def test_bgp_gate_keeps_a_node_without_a_stable_session_from_mastership(lab, cluster):
    # From: a MASTER, b's agent dead and its link down. b comes back without BIRD.
    lab.birds["b"].stop()
    lab.link_up("b")
    lab.site_up("b")
    cluster.start("b")
    lab.wait_for(lambda: (cluster.status("b") or {}).get("state") == "BACKUP", 10, what="b BACKUP")
    cluster.kill("a", signal.SIGKILL)
    lab.link_down("a")
    lab.hold_for(lambda: cluster.state("b") != "MASTER", 2.0, what="b not MASTER while its BIRD is stopped")
    hold = cluster.status("b")["bgp"]["hold"]
    assert hold.startswith("BGP session state unknown: BGP speaker not reachable: ") and "bird.ctl" in hold, hold
    assert cluster.status("b")["bgp"]["protocols"][0]["state"] == "unreachable"
    with open(cluster.log_path("b")) as log:
        assert "cannot ask BIRD (bgp.socket): " in log.read()       # said once per 10 s, not per poll

    # A flapping session: restarted every 0.6 s (less than stable_for), 6 times.
    bird = lab.start_pacs_bird("b", wait=True)
    lab.flap_bgp("b", times=6, period_s=0.6, between=lambda period: lab.hold_for(
        lambda: cluster.state("b") != "MASTER", period, interval=0.05, what="b not MASTER while flapping"))
    assert "not yet the 1 s of bgp.stable_for" in cluster.status("b")["bgp"]["hold"] or \
        "not established" in cluster.status("b")["bgp"]["hold"]
    # Stable now: b takes over once its session has been Established for stable_for.
    lab.wait_serving(cluster, "b", timeout=10)
    assert echo(lab.ns("ws"), VIP, 104, called_ae="PACS")

    # A MASTER whose session goes down cannot announce the VIP: FAULT, VIP released, route gone.
    bird.birdc("disable", "uplink")
    lab.wait_for(lambda: cluster.state("b") == "FAULT", 5, what="b FAULT without its BGP session")
    assert any("BGP session down (uplink Down)" in fault for fault in cluster.status("b")["faults"])
    lab.wait_for(lambda: lab.core_routes() == [], 5, what="the route withdrawn")
    assert "203.0.113.100" not in lab.exec("b", ["ip", "-brief", "addr", "show", "dev", "lo"]).stdout
    bird.birdc("enable", "uplink")
    lab.wait_serving(cluster, "b", timeout=10)
    metrics_free = cluster.status("b")["bgp"]
    assert metrics_free["ready"] is True


@pytest.mark.netns
def test_the_sites_lab_leaves_nothing_behind_and_never_uses_the_systems_bird():
    with SitesLab(unique_prefix("bg")) as built:
        built.start_routers(pacs=False)
        birds = {name: bird.process.pid for name, bird in built.birds.items()}
        assert set(birds) == {"co", "ra", "rb"}
        for name, bird in built.birds.items():
            assert bird.socket.startswith(built.tmpdir) and in_namespace(birds[name], built.ns(name))
        assert built.exec("ws", ["ip", "route", "show", "default"]).stdout.strip() == ""
        prefix, tmpdir = built.prefix, built.tmpdir
    assert [name for name in list_namespaces() if name.startswith(prefix)] == []
    assert not os.path.exists(tmpdir)
    for pid in birds.values():
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z"      # gone, or a zombie its parent reaps
