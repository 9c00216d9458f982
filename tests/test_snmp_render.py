"""The pure part of the SNMP agent: Status -> OIDs and values, notification varbinds,
engine identity. No sockets, no pysnmp."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from hapacs.snmp import oids
from hapacs.snmp import render as r
from hapacs.snmp.identity import engine_id_for, next_boots
from hapacs.status import PeerStatus, TransitionRecord, VipStatus
from tests.snmp_helpers import BALANCE, DIRECT_BALANCE, IF_INDEX, balance_with, make_status


def if_index(name):
    return IF_INDEX if name == "eth0" else None


def snapshot(status=None):
    return r.render(status or make_status(), if_index, "hapacs test", 4200)


def value(snap, oid):
    found = snap.get(oid)
    return None if found is None else found.value


def test_node_scalars_follow_the_status():
    snap = snapshot()
    assert value(snap, oids.hapacsNodeName + (0,)) == b"pacs-a"
    assert value(snap, oids.hapacsNodeState + (0,)) == 3                       # master(3)
    assert value(snap, oids.hapacsNodePreviousState + (0,)) == 2               # backup(2)
    assert value(snap, oids.hapacsNodeLastReason + (0,)) == b"master pacs-b silent for 0.35 s"
    assert value(snap, oids.hapacsNodeTimeInState + (0,)) == 1240             # 12.4 s in TimeTicks
    assert value(snap, oids.hapacsNodeMaintenance + (0,)) == 2                 # false(2)
    assert value(snap, oids.hapacsDroppedReplay + (0,)) == 5
    assert value(snap, oids.hapacsDroppedMagic + (0,)) == 0
    backup = snapshot(make_status(state="BACKUP", maintenance=True, faults=()))
    assert value(backup, oids.hapacsNodeState + (0,)) == 2
    assert value(backup, oids.hapacsNodeMaintenance + (0,)) == 1


def test_rows_appear_and_disappear_with_peers():
    two = make_status(peers=(PeerStatus("pacs-b", "192.0.2.12", "BACKUP", 100, 0.1),
                             PeerStatus("pacs-c", "2001:db8::13", "LOST", 90, 9.5, maintenance=True)))
    snap = snapshot(two)
    assert value(snap, oids.hapacsPeerName + (2,)) == b"pacs-c"
    assert value(snap, oids.hapacsPeerAddressType + (2,)) == 2                 # ipv6(2)
    assert len(value(snap, oids.hapacsPeerAddress + (2,))) == 16
    assert value(snap, oids.hapacsPeerState + (2,)) == 5                       # lost(5)
    assert value(snap, oids.hapacsPeerLastHeard + (2,)) == 950
    none = snapshot(make_status(peers=()))
    assert none.get(oids.hapacsPeerName + (1,)) is None


def test_checks_show_pending_and_latency_in_microseconds():
    snap = snapshot()
    assert value(snap, oids.hapacsCheckStatus + (1,)) == 1                     # up(1)
    assert value(snap, oids.hapacsCheckLatency + (1,)) == 3100
    assert value(snap, oids.hapacsCheckStatus + (2,)) == 3                     # pending(3)
    assert value(snap, oids.hapacsCheckLatency + (2,)) == 0
    assert value(snap, oids.hapacsCheckWeight + (2,)) == -20


def test_balance_rows_are_service_by_member_with_state_and_associations():
    status = make_status(balance={**BALANCE, "services": [
        BALANCE["services"][0],
        {"name": "dicom-tls", "address": "2001:db8::100", "port": 2762, "active": False, "members": [
            {"name": "pacs-a", "address": "2001:db8::11", "state": "drain", "associations": 0, "total": 2**32 + 7},
            {"name": "192.0.2.13", "address": "192.0.2.13", "state": "maint", "associations": 0, "total": 0},
            {"name": "pacs-b", "address": "2001:db8::12", "state": "down", "associations": 0, "total": 4}]}]})
    snap = snapshot(status)
    assert value(snap, oids.hapacsBalanceServiceName + (1, 2)) == b"dicom"
    assert value(snap, oids.hapacsBalanceServiceActive + (1, 2)) == 1               # true(1)
    assert value(snap, oids.hapacsBalanceMemberName + (1, 2)) == b"pacs-b"
    assert value(snap, oids.hapacsBalanceMemberAddressType + (1, 2)) == 1           # ipv4(1)
    assert value(snap, oids.hapacsBalanceMemberAddress + (1, 2)) == bytes([192, 0, 2, 12])
    assert value(snap, oids.hapacsBalanceMemberState + (1, 1)) == 1                 # up(1)
    assert snap.get(oids.hapacsBalanceMemberAssociations + (1, 1)) == r.Value("Gauge32", 3)
    assert snap.get(oids.hapacsBalanceMemberTotal + (1, 2)) == r.Value("Counter32", 118)
    assert value(snap, oids.hapacsBalanceServiceName + (2, 3)) == b"dicom-tls"
    assert value(snap, oids.hapacsBalanceServiceActive + (2, 1)) == 2               # false(2)
    assert [value(snap, oids.hapacsBalanceMemberState + (2, i)) for i in (1, 2, 3)] == [2, 4, 3]
    assert value(snap, oids.hapacsBalanceMemberAddressType + (2, 1)) == 2           # ipv6(2)
    assert len(value(snap, oids.hapacsBalanceMemberAddress + (2, 3))) == 16
    assert value(snap, oids.hapacsBalanceMemberTotal + (2, 1)) == 7                 # wraps as Counter32
    assert snap.get(oids.hapacsBalanceMemberName + (2, 4)) is None
    # Rows follow the status: a member dropped by a reload goes; no balance: no rows at all.
    assert value(snapshot(make_status(balance=balance_with("down"))), oids.hapacsBalanceMemberState + (1, 1)) == 3
    assert snapshot(make_status(balance=balance_with("down"))).get(oids.hapacsBalanceMemberName + (1, 2)) is None
    none = snapshot(make_status())
    assert not [oid for oid, _ in none.items() if oid[:len(oids.hapacsBalanceMemberEntry)]
                == oids.hapacsBalanceMemberEntry]
    assert r.is_object_type(oids.hapacsBalanceMemberState + (1, 1))


def test_text_is_cut_on_a_character_boundary():
    assert r.text("é" * 40, 64).value == ("é" * 32).encode()
    assert r.text("aé", 2).value == b"a"
    assert r.text(None, 10).value == b""


@pytest.mark.parametrize("address, expected", [
    ("192.0.2.1", (1, bytes([192, 0, 2, 1]), None)),
    ("192.0.2.100/24", (1, bytes([192, 0, 2, 100]), 24)),
    ("fe80::1%eth0", (2, bytes.fromhex("fe800000000000000000000000000001"), None)),
    ("", (0, b"", None)),
    ("not-an-address", (0, b"", None)),
])
def test_inet_address(address, expected):
    assert r.inet_address(address) == expected


def test_counters_wrap_as_counter32():
    snap = snapshot(make_status(counters=replace(make_status().counters, adverts_sent=2**32 + 5)))
    assert value(snap, oids.hapacsHeartbeatsSent + (0,)) == 5


def test_vrrp_rows_one_per_interface_and_family():
    status = make_status(vips=(VipStatus("192.0.2.100/24", "eth0", True), VipStatus("192.0.2.101/24", "eth0", True),
                               VipStatus("2001:db8::100/64", "eth0", True), VipStatus("198.51.100.1/24", "eth9", True)))
    rows = r.vrrp_rows(status, if_index)
    assert [(row.index, len(row.addresses)) for row in rows] == [((IF_INDEX, 51, 1), 2), ((IF_INDEX, 51, 2), 1)]
    snap = snapshot(status)
    assert value(snap, oids.vrrpv3OperationsAddrCount + (IF_INDEX, 51, 1)) == 2
    assert value(snap, oids.vrrpv3AssociatedIpAddrRowStatus + (IF_INDEX, 51, 1, 4, 192, 0, 2, 101)) == 1


def test_vrrp_row_values():
    snap = snapshot()
    row = (IF_INDEX, 51, 1)
    assert value(snap, oids.vrrpv3OperationsStatus + row) == 3                 # master(3)
    assert value(snap, oids.vrrpv3OperationsPriority + row) == 140             # effective priority
    assert value(snap, oids.vrrpv3OperationsMasterIpAddr + row) == bytes([192, 0, 2, 11])
    assert value(snap, oids.vrrpv3OperationsMasterIpAddr + (IF_INDEX, 51, 2)) == bytes(16)   # no IPv6 known
    assert value(snap, oids.vrrpv3OperationsAdvInterval + row) == 100          # centiseconds
    # Left INIT at monotonic 900; now = 1000 + 12.4.
    assert value(snap, oids.vrrpv3OperationsUpTime + row) == 11240
    assert value(snap, oids.vrrpv3StatisticsNewMasterReason + row) == 3        # masterNoResponse(3)
    assert value(snap, oids.vrrpv3StatisticsPacketLengthErrors + row) == 1
    fault = snapshot(make_status(state="FAULT", master="pacs-b", master_address="192.0.2.12"))
    assert value(fault, oids.vrrpv3OperationsStatus + row) == 1                # initialize(1)
    assert value(fault, oids.vrrpv3OperationsUpTime + row) == 0
    assert value(fault, oids.vrrpv3OperationsMasterIpAddr + row) == bytes([192, 0, 2, 12])


def test_vrrp_up_time_falls_back_to_the_agent_uptime_beyond_the_history():
    status = make_status(transitions=(TransitionRecord("t", "BACKUP", "MASTER", "r", "master-down", 1000.0),))
    assert value(snapshot(status), oids.vrrpv3OperationsUpTime + (IF_INDEX, 51, 1)) == 20000


def test_getnext_walks_in_oid_order_and_ends():
    snap = snapshot()
    walked, oid = [], (1, 3)
    while (found := snap.next_after(oid)) is not None:
        oid = found[0]
        walked.append(oid)
    assert walked == sorted(walked) and len(walked) == len(snap)
    assert walked[0] == oids.sysDescr + (0,)
    assert snap.next_after(walked[-1]) is None


def test_no_such_object_or_instance():
    assert r.is_object_type(oids.hapacsPeerName + (99,))
    assert r.is_object_type(oids.hapacsNodeState + (1,))
    assert not r.is_object_type(oids.hapacsMIB + (9, 9, 0))
    assert not r.is_object_type(oids.hapacsSplitBrainWinner + (0,))
    assert not r.is_object_type(oids.hapacsStateChange)


def test_state_change_to_master_adds_vrrpv3_new_master_per_row():
    found = r.notifications("state_change", {"old": "BACKUP", "new": "MASTER", "reason": "master pacs-b silent",
                                             "code": "handover-to-me"}, make_status(), if_index)
    assert [n.trap_oid for n in found] == [oids.hapacsStateChange, oids.vrrpv3NewMaster, oids.vrrpv3NewMaster]
    state = dict(found[0].varbinds)
    assert state[oids.hapacsNodeState + (0,)].value == 3
    assert state[oids.hapacsNodePreviousState + (0,)].value == 2
    assert state[oids.hapacsNodeLastReason + (0,)].value == b"master pacs-b silent"
    new_master = dict(found[1].varbinds)
    assert new_master[oids.vrrpv3StatisticsNewMasterReason + (IF_INDEX, 51, 1)].value == 2   # preempted(2)
    leaving = r.notifications("state_change", {"old": "MASTER", "new": "BACKUP", "reason": "handed over"},
                              make_status(), if_index)
    assert [n.trap_oid for n in leaving] == [oids.hapacsStateChange]


def test_check_and_peer_notifications_use_the_row_index():
    down, = r.notifications("check_down", {"check": "free-disk", "message": "3 % free"}, make_status(), if_index)
    assert down.trap_oid == oids.hapacsCheckDown
    assert dict(down.varbinds)[oids.hapacsCheckName + (2,)].value == b"free-disk"
    brain, = r.notifications("split_brain", {"peer": "pacs-b", "winner": "pacs-a"}, make_status(), if_index)
    assert dict(brain.varbinds)[oids.hapacsSplitBrainWinner + (0,)].value == b"pacs-a"
    assert dict(brain.varbinds)[oids.hapacsPeerName + (1,)].value == b"pacs-b"


def test_misconfigured_peer_notification_carries_address_cause_and_message():
    found, = r.notifications("misconfigured", {"address": "192.0.2.12", "cause": "cluster",
                                               "message": "another cluster.id"}, make_status(), if_index)
    assert found.trap_oid == oids.hapacsMisconfiguredPeer
    values = {oid: v.value for oid, v in found.varbinds}
    assert values[oids.hapacsMisconfiguredAddressType + (0,)] == 1                 # ipv4(1)
    assert values[oids.hapacsMisconfiguredAddress + (0,)] == bytes([192, 0, 2, 12])
    assert values[oids.hapacsMisconfiguredCause + (0,)] == 2                       # cluster(2)
    assert values[oids.hapacsMisconfiguredMessage + (0,)] == b"another cluster.id"
    six, = r.notifications("misconfigured", {"address": "2001:db8::12", "cause": "name", "message": "m"},
                           make_status(), if_index)
    assert dict(six.varbinds)[oids.hapacsMisconfiguredAddressType + (0,)].value == 2   # ipv6(2)
    assert not r.is_object_type(oids.hapacsMisconfiguredCause + (0,))              # accessible-for-notify
    with pytest.raises(ValueError, match="unknown misconfiguration cause"):
        r.notifications("misconfigured", {"address": "192.0.2.12", "cause": "typo", "message": "m"},
                        make_status(), if_index)


def test_bad_notifications_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="unknown notification kind"):
        r.notifications("reboot", {}, make_status(), if_index)
    with pytest.raises(ValueError, match="needs winner"):
        r.notifications("split_brain", {"peer": "pacs-b"}, make_status(), if_index)


def test_engine_id_is_stable_and_rfc3411_shaped():
    assert engine_id_for("pacs-a") == bytes.fromhex("80007ed904") + b"pacs-a"
    assert engine_id_for("pacs-a") == engine_id_for("pacs-a")
    long = engine_id_for("x" * 30)
    assert long[:5] == bytes.fromhex("80007ed905") and len(long) == 21
    assert engine_id_for("pacs-a", "0x80007ed90401020304") == bytes.fromhex("80007ed90401020304")


def test_engine_boots_grow_across_starts(tmp_path):
    engine_id = engine_id_for("pacs-a")
    assert next_boots(str(tmp_path), engine_id) == (1, None)
    assert next_boots(str(tmp_path), engine_id) == (2, None)
    assert next_boots(str(tmp_path), engine_id_for("pacs-b")) == (1, None)     # another engine ID: again
    assert next_boots(None, engine_id) == (1, None)


def test_importing_the_package_does_not_load_pysnmp():
    code = ("import sys, hapacs.snmp, hapacs.snmp.render, hapacs.snmp.oids, hapacs.snmp.identity;"
            "assert 'pysnmp' not in sys.modules;"
            "from hapacs.snmp import SnmpAgent;"
            "assert 'pysnmp' in sys.modules and 'pysmi' not in sys.modules, 'the agent must not load pysmi'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_direct_mode_rows_show_the_state_and_zero_associations():
    """Direct mode counts nothing per member (null in status): the rows still carry the state."""
    snap = snapshot(make_status(balance=DIRECT_BALANCE))
    assert [value(snap, oids.hapacsBalanceMemberState + (1, i)) for i in (1, 2)] == [1, 3]    # up, down
    assert snap.get(oids.hapacsBalanceMemberAssociations + (1, 1)) == r.Value("Gauge32", 0)


def test_bgp_gate_and_sessions_follow_the_status():
    bgp = {"protocols": [{"name": "uplink", "state": "Established", "since_s": 12.3},
                         {"name": "uplink6", "state": "Active", "since_s": 1.5},
                         {"name": "odd", "state": "Bogus", "since_s": None}],
           "ready": True, "stable_for_s": 5.0, "hold": None}
    items = dict(r.render_bgp(bgp))
    assert items[oids.hapacsBgpReady + (0,)].value == 1
    assert items[oids.hapacsBgpSessionName + (1,)].value == b"uplink"
    assert [items[oids.hapacsBgpSessionState + (i,)].value for i in (1, 2, 3)] == [6, 3, 11]
    assert items[oids.hapacsBgpSessionTimeInState + (1,)].value == 1230
    assert r.render_bgp(None) == []
