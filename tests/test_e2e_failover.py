"""End to end: real agents in network namespaces, a real DICOM server on each host,
a workstation that C-ECHOes the VIP. After every case exactly one host holds each
VIP and the workstation reaches it. Waits are on conditions with deadlines.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab.announcements import AnnouncementWatch

from .e2e import VIP, VIP6, assert_served, mac_of, make_cluster, neighbour_mac, one_holder, settle
from .fixtures import lab_fixture

# README, "Leases": after a kill -9 the standby is the only host answering for the VIP "about two
# seconds later" (a 2 s lease at these timers). Plus 0.25 s: the kernel checks address lifetimes on
# a timer rounded up to a whole second within HZ/4 (ADDRCONF_TIMER_FUZZ); plus 0.25 s to notice
# it here (an `ip` in the namespace every 20 ms on a shared 2-core machine). bench/promises.py
# measured 1.94 to 2.22 s, median 2.02 s (10 trials).
LEASE_EXPIRY_BOUND_S = 2.0 + 0.25 + 0.25
# README, "VIPs and announcements": at once, "repeated four more times over two seconds".
ANNOUNCEMENTS, ANNOUNCING_S = 5, 2.0
ANNOUNCE_NOISE_S = 0.25     # the agent's loop lateness and netlink on a loaded machine
TIMESTAMP_ERROR_S = 0.01    # the agent stamps a transition in its loop, the kernel stamps frames


lab = lab_fixture("fo", hosts=("a", "b", "c"))


def test_kill_9_of_master_standby_takes_over_and_dead_agents_vip_expires(lab):
    cluster = make_cluster(lab)
    try:
        settle(lab, cluster, "a")
        assert_served(lab, "a")
        assert neighbour_mac(lab, lab.ns("ws"), VIP) == mac_of(lab, "a")
        with ThreadPoolExecutor(1) as pool:
            killed = time.monotonic()
            cluster.kill("a", signal.SIGKILL)
            # Watched from the start in a thread: the moment the kernel drops a's lease.
            expired = pool.submit(lab.wait_for, lambda: f"{VIP}/24" not in lab.addresses("a") and time.monotonic(),
                                  LEASE_EXPIRY_BOUND_S + 3, 0.02, "a's VIP lease expired")
            lab.wait_for(lambda: cluster.state("b") == "MASTER", 5, what="b MASTER")
            # The gratuitous ARP moved the workstation at once, while a still has the old lease.
            lab.wait_for(lambda: neighbour_mac(lab, lab.ns("ws"), VIP) == mac_of(lab, "b"), 1.0,
                         what="workstation ARP entry on b's MAC")
            expired_after_s = expired.result() - killed
        # README: b is the only host answering for the VIP "about two seconds" after a kill -9.
        assert expired_after_s <= LEASE_EXPIRY_BOUND_S, f"a's VIP vanished {expired_after_s:.2f} s after kill -9"
        assert one_holder(lab) == "b"
        assert_served(lab, "b")
        reasons = [t["reason"] for t in cluster.transitions("b")]
        assert any("MASTER pacs-a silent" in r for r in reasons), reasons
    finally:
        print(cluster.logs())


def test_master_link_down_gives_fault_and_standby_takes_over(lab):
    cluster = make_cluster(lab)
    try:
        settle(lab, cluster, "a")
        lab.link_down("a")
        lab.wait_for(lambda: cluster.state("a") == "FAULT", 3, what="a FAULT")
        settle(lab, cluster, "b")
        assert_served(lab, "b")
        status = cluster.status("a")
        assert any("link" in f and "down" in f for f in status["faults"]), status["faults"]
        lab.link_up("a")
        # preempt is on: a comes back as BACKUP, then takes the VIPs back after preempt_delay.
        settle(lab, cluster, "a", timeout=15)
        assert_served(lab, "a")
    finally:
        print(cluster.logs())


def test_hung_master_resumed_leaves_exactly_one_holder(lab):
    cluster = make_cluster(lab, preempt=False)
    try:
        settle(lab, cluster, "a")
        proc = cluster.procs["a"]
        proc.send_signal(signal.SIGSTOP)
        try:
            lab.wait_for(lambda: cluster.state("b") == "MASTER", 5, what="b MASTER while a hangs")
            lab.wait_for(lambda: one_holder(lab) == "b", 5, what="hung a's lease expired")
        finally:
            proc.send_signal(signal.SIGCONT)
        settle(lab, cluster, "b")
        assert cluster.state("a") == "BACKUP"
        assert_served(lab, "b")
        reasons = [t["reason"] for t in cluster.transitions("a")]
        assert any("also MASTER" in r for r in reasons), reasons
    finally:
        print(cluster.logs())


@pytest.mark.parametrize("preempt", [True, False])
def test_old_master_back_preempts_only_with_preempt(lab, preempt):
    cluster = make_cluster(lab, preempt=preempt, preempt_delay=0.5)
    try:
        settle(lab, cluster, "a")
        cluster.kill("a", signal.SIGKILL)
        settle(lab, cluster, "b")
        cluster.start("a")
        lab.wait_for(lambda: cluster.state("a") in ("BACKUP", "MASTER"), 5, what="a back")
        if preempt:
            settle(lab, cluster, "a")
            reasons = [t["reason"] for t in cluster.transitions("a")]
            assert any("handed its VIPs to this node" in r for r in reasons), reasons
            assert_served(lab, "a")
        else:
            # Give a every chance to preempt: 3 s is six preempt delays.
            lab.hold_for(lambda: cluster.state("b") == "MASTER" and cluster.state("a") == "BACKUP",
                         3.0, what="b stays MASTER, a stays BACKUP")
            assert_served(lab, "b")
    finally:
        print(cluster.logs())


def test_three_nodes_highest_remaining_priority_wins(lab):
    cluster = make_cluster(lab, hosts=(("a", 200), ("b", 100), ("c", 150)))
    try:
        settle(lab, cluster, "a")
        cluster.kill("a", signal.SIGKILL)
        settle(lab, cluster, "c")
        assert cluster.state("b") == "BACKUP"
        assert_served(lab, "c")
    finally:
        print(cluster.logs())


def test_multicast_heartbeats(lab):
    cluster = make_cluster(lab, multicast=True)
    try:
        settle(lab, cluster, "a")
        peers = cluster.status("a")["peers"]
        assert [p["name"] for p in peers] == ["pacs-b"] and peers[0]["state"] == "BACKUP"
        cluster.kill("a", signal.SIGKILL)
        settle(lab, cluster, "b")
        assert_served(lab, "b")
    finally:
        print(cluster.logs())


def test_takeover_announces_ipv4_and_ipv6_vips_at_once_then_four_more_times_over_two_seconds(lab):
    cluster = make_cluster(lab, vips=(f"{VIP}/24", f"{VIP6}/64"))
    try:
        settle(lab, cluster, "a")
        settle(lab, cluster, "a", vip=VIP6)
        # storescp listens on IPv4 only: reach the IPv6 VIP with ICMPv6.
        assert lab.ping("ws", VIP6)
        assert neighbour_mac(lab, lab.ns("ws"), VIP6) == mac_of(lab, "a")
        with AnnouncementWatch(lab, "ws") as watch:
            cluster.kill("a", signal.SIGKILL)
            lab.wait_for(lambda: cluster.state("b") == "MASTER", 5, what="b MASTER")
            lab.wait_for(lambda: neighbour_mac(lab, lab.ns("ws"), VIP6) == mac_of(lab, "b"), 1.0,
                         what="workstation IPv6 neighbour entry on b's MAC")
            assert_announced_five_times_over_two_seconds(lab, cluster, watch, "b")
        settle(lab, cluster, "b", vip=VIP6)
        assert lab.ping("ws", VIP6)
        assert_served(lab, "b")
    finally:
        print(cluster.logs())


def assert_announced_five_times_over_two_seconds(lab, cluster, watch, host) -> None:
    """README: the new MASTER announces its VIPs at once (gratuitous ARP, unsolicited NA),
    "repeated four more times over two seconds". Counted on the workstation's wire."""
    mac = mac_of(lab, host)
    kinds = ((VIP, "arp-request"), (VIP, "arp-reply"), (VIP6, "na"))

    def seen() -> dict[str, list]:
        return {kind: watch.seen(mac, address, kind) for address, kind in kinds}

    lab.wait_for(lambda: all(len(found) >= ANNOUNCEMENTS for found in seen().values()),
                 ANNOUNCING_S + ANNOUNCE_NOISE_S + 1, what=f"{ANNOUNCEMENTS} announcements of each kind")
    # Then nothing more: four repeats, not a stream.
    lab.hold_for(lambda: all(len(found) == ANNOUNCEMENTS for found in seen().values()), 1.0,
                 what=f"exactly {ANNOUNCEMENTS} announcements of each kind, then quiet")
    became_master = max(t["monotonic"] for t in cluster.transitions(host) if t["to"] == "MASTER")
    for kind, found in seen().items():
        first, last = found[0].at, found[-1].at
        # "at once": the VIP is added (one netlink round trip), then announced; noise as below.
        assert -TIMESTAMP_ERROR_S <= first - became_master <= ANNOUNCE_NOISE_S, (kind, first - became_master)
        # "over two seconds": the last repeat 2 s after the first, plus the loop's lateness on this
        # shared 2-core machine (bench/promises.py: spans 1.999 to 2.004 s, the first frame 2 to 5 ms
        # after the transition, in 10 trials).
        assert ANNOUNCING_S - TIMESTAMP_ERROR_S <= last - first <= ANNOUNCING_S + ANNOUNCE_NOISE_S, \
            (kind, [round(a.at - first, 3) for a in found])


def test_hostile_datagrams_cause_no_transition_and_are_counted(lab):
    cluster = make_cluster(lab, pacs=False)
    try:
        settle(lab, cluster, "a")
        before = cluster.transitions("b")
        # From the workstation: not a peer at all, then forged as b would be if it were a peer.
        script = (
            "import socket, os\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(300):\n"
            "    s.sendto(os.urandom(i % 150), ('192.0.2.12', 5405))\n"
        )
        lab.exec("ws", ["python3", "-c", script])
        lab.wait_for(lambda: cluster.status("b")["drops"]["unknown_sender"] >= 300, 3,
                     what="drops counted")
        assert cluster.transitions("b") == before and cluster.masters() == ["a"]
    finally:
        print(cluster.logs())
