"""Partitions end to end: witness, quorum, and the re-announcement after a heal.

A silent partition (the host's switch port forwards nothing, its link stays
up) is the hard case: every node stays alive and sure of itself.
"""

from __future__ import annotations

import sys
import time


from lab.announcements import AnnouncementWatch
from lab.cluster import AgentCluster
from lab.dicom import start_storescp

from .e2e import VIP, assert_served, mac_of, neighbour_mac, one_holder, settle
from .fixtures import lab_fixture

# The "RIS" a node must reach to be MASTER alone: a DICOM server on the workstation side.
WITNESS = [{"type": "dicom-echo", "host": "192.0.2.200", "port": 104, "called_ae": "RIS",
            "interval": 0.5, "timeout": 0.5}]
# Any of several: a DICOM witness that is down (nothing on port 105) and a TCP one that answers
# (a web server, which would fail a DICOM probe).
ANY_OF_TWO = [{"type": "dicom-echo", "host": "192.0.2.200", "port": 105, "called_ae": "RIS",
               "interval": 0.5, "timeout": 0.5},
              {"type": "tcp", "host": "192.0.2.200", "port": 8080, "interval": 0.5, "timeout": 0.5}]
# How long a new MASTER keeps announcing, as the README promises ("four more times over two seconds").
TAKEOVER_ANNOUNCING_S = 2.0


lab = lab_fixture("pt", hosts=("a", "b", "c"))


def cluster_of(lab, hosts, witness=None, quorum=None, **kwargs) -> AgentCluster:
    cluster = AgentCluster(lab, **kwargs)
    extra = {}
    if witness:
        extra["cluster"] = {"witness": witness}
    if quorum:
        extra.setdefault("cluster", {})["quorum"] = quorum
    for host, priority in hosts:
        start_storescp(lab, lab.ns(host), port=104, aet="PACS")
        cluster.add(host, priority, **extra)
    cluster.start_all()
    return cluster


def test_isolated_backup_with_a_witness_never_takes_the_vip(lab):
    start_storescp(lab, lab.ns("ws"), port=104, aet="RIS")
    cluster = cluster_of(lab, (("a", 150), ("b", 100)), witness=WITNESS, preempt=False)
    try:
        settle(lab, cluster, "a")
        lab.partition("b")
        lab.wait_for(lambda: cluster.state("b") == "FAULT", 5, what="isolated b in FAULT")
        assert "isolated" in cluster.status("b")["faults"][0]
        lab.hold_for(lambda: "b" not in lab.holders(VIP) and cluster.state("a") == "MASTER", 2.0,
                     what="isolated b holds no VIP")
        assert all(t["to"] != "MASTER" for t in cluster.transitions("b"))
        lab.heal("b")
        lab.wait_for(lambda: cluster.state("b") == "BACKUP", 3, what="b back to BACKUP")
        assert one_holder(lab) == "a"
        assert_served(lab, "a")
    finally:
        print(cluster.logs())


def test_isolated_master_with_a_witness_releases_and_heal_converges(lab):
    lab.spawn("ws", [sys.executable, "-m", "http.server", "--bind", "192.0.2.200", "8080"],
              cwd=lab.mkdtemp("web"))
    lab.wait_for(lambda: ":8080" in lab.exec("ws", ["ss", "-tln"]).stdout, 5, what="the web witness listening")
    cluster = cluster_of(lab, (("a", 150), ("b", 100)), witness=ANY_OF_TWO, preempt=False)
    try:
        settle(lab, cluster, "a")
        lab.partition("a")
        lab.wait_for(lambda: cluster.state("b") == "MASTER", 5,
                     what="b MASTER (it reaches the TCP witness; the DICOM one is down)")
        assert cluster.transitions("b")[-1]["code"] == "master-down"
        lab.wait_for(lambda: cluster.state("a") == "FAULT", 5, what="cut-off a in FAULT")
        fault = cluster.status("a")["faults"][0]
        assert "no witness reachable" in fault and "192.0.2.200:105" in fault and "192.0.2.200:8080" in fault, fault
        lab.wait_for(lambda: one_holder(lab) == "b", 5, what="a released the VIP")
        lab.heal("a")
        lab.wait_for(lambda: cluster.state("a") == "BACKUP", 3, what="a back as BACKUP")
        assert cluster.masters() == ["b"] and one_holder(lab) == "b"
        assert_served(lab, "b")
    finally:
        print(cluster.logs())


def test_quorum_majority_master_cut_off_from_two_releases(lab):
    cluster = cluster_of(lab, (("a", 200), ("b", 150), ("c", 100)), quorum="majority", preempt=False)
    try:
        settle(lab, cluster, "a")
        lab.partition("a")
        lab.wait_for(lambda: cluster.state("a") == "FAULT", 5, what="a without quorum in FAULT")
        assert "no quorum: hears 1 of 3 nodes" in cluster.status("a")["faults"][0]
        lab.wait_for(lambda: cluster.state("b") == "MASTER", 5, what="the majority elects b")
        lab.wait_for(lambda: one_holder(lab) == "b", 5, what="one holder")
        lab.heal("a")
        lab.wait_for(lambda: cluster.state("a") == "BACKUP", 3, what="a back")
        assert cluster.masters() == ["b"] and one_holder(lab) == "b"
    finally:
        print(cluster.logs())


def test_after_a_heal_the_winner_announces_so_workstations_leave_the_loser(lab):
    # No witness: the cut-off b becomes MASTER too. The workstation never heard b's announcement
    # (it was on a's side), so after the heal only b's new announcement moves it off a.
    cluster = cluster_of(lab, (("a", 150), ("b", 100)), preempt=False)
    try:
        settle(lab, cluster, "a")
        assert_served(lab, "a")
        assert neighbour_mac(lab, lab.ns("ws"), VIP) == mac_of(lab, "a")
        lab.partition("b")
        lab.wait_for(lambda: cluster.state("b") == "MASTER", 5, what="b MASTER on its own side")
        # Heal only once b's takeover announcements are over (the README: at once, then four more
        # times over two seconds; 0.5 s more for a late loop): a round still due from the takeover
        # must not be what moves the workstation. The switch dropped all of them.
        lab.wait_for(lambda: (cluster.status("b") or {}).get("since_s", 0) > TAKEOVER_ANNOUNCING_S + 0.5,
                     TAKEOVER_ANNOUNCING_S + 5, what="b's takeover announcements over")
        assert neighbour_mac(lab, lab.ns("ws"), VIP) == mac_of(lab, "a")
        with AnnouncementWatch(lab, "ws") as watch:
            healed = time.monotonic()
            lab.heal("b")
            lab.wait_for(lambda: cluster.masters() == ["b"], 3, what="b, the newer MASTER, stays")
            lab.wait_for(lambda: neighbour_mac(lab, lab.ns("ws"), VIP) == mac_of(lab, "b"), 2,
                         what="the workstation moved to b's MAC by b's new announcement")
            assert watch.seen(mac_of(lab, "b"), VIP, since=healed), "no announcement from b after the heal"
        lab.wait_for(lambda: one_holder(lab) == "b", 5, what="one holder")
        assert_served(lab, "b")
    finally:
        print(cluster.logs())
