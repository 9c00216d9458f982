"""The real SnmpAgent against real net-snmp clients and a real snmptrapd.

The agent runs on its own event loop in a thread of this process, on
127.0.0.1 and [::1] (ports chosen by the kernel); the Status behind it is a
plain object the tests replace. Every process started here is killed by
pid in teardown. snmptrapd and the clients keep their files in tmp dirs.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from hapacs.effects import Misconfigured
from hapacs.snmp import oids
from hapacs.snmp.agent import SnmpBindError
from hapacs.snmp.render import OBJECT_TYPES
from hapacs.status import PeerStatus
from tests.snmp_helpers import (
    BALANCE, BGP, COMMUNITY, ROOT, IF_INDEX, MIB_DIRS, USERS, AgentHarness, TrapReceiver, balance_with, make_status,
    missing_tools, raw_v2c_get, response_request_id, run, snmp_config, trap_target, v3_args, wait_for,
)

# pysnmp 7 warns on its old camelCase names. The only DeprecationWarnings tolerated (pyproject) are pysmi's; the agent
# does not import pysmi at all, and test_agent_runs_with_deprecation_warnings_as_errors proves
# the agent itself uses no deprecated pysnmp name.
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated. Please use:DeprecationWarning")

if missing_tools():
    pytest.fail(f"net-snmp tools missing: {', '.join(missing_tools())} "
                "(Debian: apt-get install snmp snmptrapd smitools)", pytrace=False)

HAPACS = ["-M", MIB_DIRS, "-m", "HAPACS-MIB"]
VRRP = ["-M", MIB_DIRS, "-m", "VRRPV3-MIB"]
QUICK = ["-r", "0", "-t", "1"]          # one try, one second: "no answer" tests stay short
V2C = ["-v2c", "-c", COMMUNITY]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    directory = tmp_path_factory.mktemp("net-snmp")
    (directory / "cert_indexes").mkdir()          # else the first client says it created it, on stderr
    return {**os.environ, "SNMP_PERSISTENT_DIR": str(directory)}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    agent = AgentHarness(snmp_config(), str(tmp_path_factory.mktemp("state"))).start()
    yield agent
    agent.close()


@pytest.fixture(autouse=True)
def fresh_status(request):
    if "harness" in request.fixturenames:
        request.getfixturevalue("harness").status = make_status()


def snmp(tool: str, *args: str, env) -> subprocess.CompletedProcess:
    return run([tool, *args], env)


def walked_names(output: str) -> set[str]:
    return set(re.findall(r"^HAPACS-MIB::(\w+)\.", output, re.M))


# --- reading ----------------------------------------------------------------------

def test_v2c_walk_shows_every_hapacs_object_by_name(harness, env):
    harness.status = make_status(balance=BALANCE, bgp=BGP)
    walk = snmp("snmpwalk", *V2C, *HAPACS, harness.v4, "hapacsMIB", env=env)
    assert walk.returncode == 0 and walk.stderr == "", walk.stderr
    readable = {name for name, oid in oids.named("hapacs").items() if oid in OBJECT_TYPES}
    assert walked_names(walk.stdout) == readable
    assert "Wrong Type" not in walk.stdout            # net-snmp checks every value against the MIB
    assert "HAPACS-MIB::hapacsNodeState.0 = INTEGER: master(3)" in walk.stdout
    assert "HAPACS-MIB::hapacsCheckStatus.2 = INTEGER: pending(3)" in walk.stdout
    assert "HAPACS-MIB::hapacsBgpSessionState.1 = INTEGER: established(6)" in walk.stdout
    assert "HAPACS-MIB::hapacsCheckLatency.1 = Gauge32: 3100 microseconds" in walk.stdout
    assert "HAPACS-MIB::hapacsNodeLastReason.0 = STRING: master pacs-b silent for 0.35 s" in walk.stdout


def test_the_contracts_walk_command_works(harness, env):
    """README: `snmpwalk -m +HAPACS-MIB -M +etc` (etc/ also holds the IETF modules Debian lacks).
    The + form also loads net-snmp's default module list, hence noise on stderr about modules
    Debian does not ship."""
    walk = snmp("snmpwalk", *V2C, "-m", "+HAPACS-MIB", "-M", f"+{MIB_DIRS}", harness.v4, "hapacsMIB", env=env)
    assert walk.returncode == 0
    assert "HAPACS-MIB::hapacsNodeName.0 = STRING: pacs-a" in walk.stdout


def test_system_group_points_into_hapacs_mib(harness, env):
    got = snmp("snmpget", *V2C, "-M", MIB_DIRS, "-m", "HAPACS-MIB:SNMPv2-MIB", harness.v4,
               "sysObjectID.0", "sysName.0", "sysDescr.0", env=env)
    assert "SNMPv2-MIB::sysObjectID.0 = OID: HAPACS-MIB::hapacsAgent" in got.stdout
    assert "SNMPv2-MIB::sysName.0 = STRING: pacs-a" in got.stdout
    assert "hapacs 0.1.0" in got.stdout


def test_vrrpv3_operations_row(harness, env):
    walk = snmp("snmpwalk", *V2C, *VRRP, harness.v4, "vrrpv3MIB", env=env)
    assert walk.returncode == 0 and "Wrong Type" not in walk.stdout, walk.stderr
    row = f"{IF_INDEX}.51.ipv4"
    for line in (f"vrrpv3OperationsStatus.{row} = INTEGER: master(3)",
                 f"vrrpv3OperationsPriority.{row} = Gauge32: 140",
                 f"vrrpv3OperationsMasterIpAddr.{row} = Hex-STRING: C0 00 02 0B",
                 f"vrrpv3OperationsAdvInterval.{row} = INTEGER: 100 centiseconds",
                 f"vrrpv3OperationsPreemptMode.{row} = INTEGER: true(1)",
                 f"vrrpv3OperationsUpTime.{row} = Timeticks: (11240) 0:01:52.40",
                 f"vrrpv3OperationsStatus.{IF_INDEX}.51.ipv6 = INTEGER: master(3)",
                 f"vrrpv3StatisticsMasterTransitions.{row} = Counter32: 1",
                 f"vrrpv3StatisticsNewMasterReason.{row} = INTEGER: masterNoResponse(3)"):
        assert f"VRRPV3-MIB::{line}" in walk.stdout


def test_values_and_rows_follow_the_status(harness, env):
    def node_state():
        return snmp("snmpget", *V2C, *HAPACS, harness.v4, "hapacsNodeState.0", env=env).stdout

    assert "master(3)" in node_state()
    harness.status = make_status(state="BACKUP", master="pacs-b", master_address="192.0.2.12",
                                 peers=make_status().peers + (PeerStatus("pacs-c", "2001:db8::13", "LOST", 90, 9.5),))
    wait_for(lambda: "backup(2)" in node_state(), 3, "hapacsNodeState to become backup(2)")
    row = f"{IF_INDEX}.51.ipv4"
    got = snmp("snmpget", *V2C, "-M", MIB_DIRS, "-m", "HAPACS-MIB:VRRPV3-MIB", harness.v4,
               f"vrrpv3OperationsStatus.{row}", f"vrrpv3OperationsMasterIpAddr.{row}", "hapacsPeerState.2",
               "hapacsNodeMasterName.0", env=env).stdout
    assert f"vrrpv3OperationsStatus.{row} = INTEGER: backup(2)" in got
    assert f"vrrpv3OperationsMasterIpAddr.{row} = Hex-STRING: C0 00 02 0C" in got
    assert "hapacsPeerState.2 = INTEGER: lost(5)" in got
    assert "hapacsNodeMasterName.0 = STRING: pacs-b" in got

    harness.status = make_status(peers=())
    wait_for(lambda: "hapacsPeerName" not in snmp("snmpwalk", *V2C, *HAPACS, harness.v4, "hapacsPeerTable",
                                                   env=env).stdout, 3, "the peer rows to go")


def test_balance_member_table_walks_by_name_and_follows_the_status(harness, env):
    harness.status = make_status(balance=BALANCE)
    # The agent keeps a rendered snapshot for a moment (snapshot_ttl_s): wait for this status's rows.
    walk = wait_for(lambda: (found := snmp("snmpwalk", *V2C, *HAPACS, harness.v4, "hapacsBalanceMemberTable",
                                           env=env)).returncode == 0 and "MemberTotal.1.2" in found.stdout
                    and found, 3, "the balance rows")
    assert walk.returncode == 0 and walk.stderr == "" and "Wrong Type" not in walk.stdout, walk.stdout + walk.stderr
    for line in ("hapacsBalanceServiceName.1.1 = STRING: dicom",
                 "hapacsBalanceServiceActive.1.2 = INTEGER: true(1)",
                 "hapacsBalanceMemberName.1.2 = STRING: pacs-b",
                 "hapacsBalanceMemberAddressType.1.1 = INTEGER: ipv4(1)",
                 'hapacsBalanceMemberAddress.1.2 = Hex-STRING: C0 00 02 0C',
                 "hapacsBalanceMemberState.1.1 = INTEGER: up(1)",
                 "hapacsBalanceMemberAssociations.1.1 = Gauge32: 3",
                 "hapacsBalanceMemberTotal.1.2 = Counter32: 118"):
        assert f"HAPACS-MIB::{line}" in walk.stdout, line
    assert len(walk.stdout.splitlines()) == 2 * 8

    def states():
        return snmp("snmpwalk", *V2C, *HAPACS, harness.v4, "hapacsBalanceMemberState", env=env).stdout

    harness.status = make_status(balance=balance_with("drain", "down", "maint"))
    wait_for(lambda: "hapacsBalanceMemberState.1.3 = INTEGER: maint(4)" in states(), 3, "a third member, maint(4)")
    assert "hapacsBalanceMemberState.1.1 = INTEGER: drain(2)" in states()
    assert "hapacsBalanceMemberState.1.2 = INTEGER: down(3)" in states()
    table = snmp("snmptable", *V2C, *HAPACS, "-Cf", ",", harness.v4, "hapacsBalanceMemberTable", env=env)
    assert "dicom,true,pacs-c,ipv4,\"C0 00 02 0D \",maint,3,102" in table.stdout, table.stdout + table.stderr
    harness.status = make_status()
    wait_for(lambda: "hapacsBalanceMemberState.1" not in states(), 3, "the balance rows to go")


@pytest.mark.parametrize("user", USERS, ids=[u.name for u in USERS])
def test_v3_walk(harness, env, user):
    walk = snmp("snmpwalk", *v3_args(user), *HAPACS, harness.v4, "hapacsNode", env=env)
    assert walk.returncode == 0, walk.stderr
    assert "HAPACS-MIB::hapacsNodeName.0 = STRING: pacs-a" in walk.stdout


def test_ipv6_listen(harness, env):
    got = snmp("snmpget", *V2C, *HAPACS, harness.v6, "hapacsNodeName.0", env=env)
    assert got.stdout.strip() == "HAPACS-MIB::hapacsNodeName.0 = STRING: pacs-a", got.stderr
    walk = snmp("snmpwalk", *v3_args(USERS[0]), *HAPACS, harness.v6, "hapacsCheckTable", env=env)
    assert "hapacsCheckName.1 = STRING: pacs-dicom" in walk.stdout


def test_snmpv1_reads_too_without_counter64(harness, env):
    got = snmp("snmpget", "-v1", "-c", COMMUNITY, *HAPACS, harness.v4, "hapacsNodeState.0", env=env)
    assert "INTEGER: master(3)" in got.stdout
    walk = snmp("snmpwalk", "-v1", "-c", COMMUNITY, "-On", harness.v4, ".1.3.6.1.2.1.207", env=env)
    assert walk.returncode == 0 and "Counter64" not in walk.stdout       # RFC 2576 4.1.2.1: skipped
    assert "Counter32" in walk.stdout


# --- refusing ------------------------------------------------------------------------

def test_wrong_community_gets_no_answer(harness, env):
    got = snmp("snmpget", "-v2c", "-c", "private", *QUICK, *HAPACS, harness.v4, "hapacsNodeName.0", env=env)
    assert got.returncode != 0 and got.stdout == "" and "Timeout" in got.stderr


@pytest.mark.parametrize("change, error", [
    ({"auth_key": "wrong-auth-pass"}, "Authentication failure"),
    ({"priv_key": "wrong-priv-pass"}, "Decryption error"),
    ({"name": "intruder"}, "Unknown user name"),
])
def test_wrong_v3_credentials_get_no_value(harness, env, change, error):
    # RFC 3414 3.2 answers with a Report (usmStats...) carrying no data, which net-snmp names.
    user = replace(USERS[0], **change)
    got = snmp("snmpget", *v3_args(user), *QUICK, *HAPACS, harness.v4, "hapacsNodeName.0", env=env)
    assert got.returncode != 0 and got.stdout == ""
    assert error in got.stderr


def test_no_auth_no_priv_is_refused(harness, env):
    got = snmp("snmpget", "-v3", "-l", "noAuthNoPriv", "-u", USERS[0].name, *QUICK, *HAPACS, harness.v4,
               "hapacsNodeName.0", env=env)
    assert got.returncode != 0 and got.stdout == "" and "Unsupported security level" in got.stderr


@pytest.mark.parametrize("credentials", [V2C, v3_args(USERS[1])], ids=["v2c", "v3"])
def test_set_is_refused(harness, env, credentials):
    got = snmp("snmpset", *credentials, *QUICK, *HAPACS, harness.v4, "hapacsNodePriority.0", "u", "200", env=env)
    assert got.returncode != 0 and "notWritable" in got.stdout + got.stderr
    unknown = snmp("snmpset", *credentials, *QUICK, "-On", harness.v4, ".1.3.6.1.4.1.32473.9.9.0", "i", "1", env=env)
    assert unknown.returncode != 0 and "notWritable" in unknown.stdout + unknown.stderr
    after = snmp("snmpget", *V2C, *HAPACS, harness.v4, "hapacsNodePriority.0", env=env)
    assert "Gauge32: 150" in after.stdout


def test_unknown_oids(harness, env):
    got = snmp("snmpget", *V2C, *HAPACS, harness.v4, "hapacsNodeState.1", "hapacsPeerName.9",
               ".1.3.6.1.4.1.32473.9.9.0", "hapacsSplitBrainWinner.0", env=env)
    assert "hapacsNodeState.1 = No Such Instance" in got.stdout
    assert "hapacsPeerName.9 = No Such Instance" in got.stdout
    assert "hapacsMIB.9.9.0 = No Such Object" in got.stdout
    assert "hapacsSplitBrainWinner.0 = No Such Object" in got.stdout     # accessible-for-notify


def test_getnext_and_getbulk_walk_the_whole_tree_alike(harness, env):
    walk = snmp("snmpwalk", *V2C, "-On", harness.v4, ".1", env=env)
    bulk = snmp("snmpbulkwalk", *V2C, "-On", "-Cr25", harness.v4, ".1", env=env)
    assert walk.returncode == 0 and bulk.returncode == 0, walk.stderr + bulk.stderr

    def lines(output):
        # sysUpTime and snmpEngineTime move between the two walks; past the end, pysnmp repeats
        # endOfMibView once per repetition, which snmpbulkwalk prints each time (net-snmp 5.9).
        return [line for line in output.splitlines()
                if not line.startswith((".1.3.6.1.2.1.1.3.0 ", ".1.3.6.1.6.3.10.2.1.3.0 "))
                and "No more variables left" not in line]

    assert lines(walk.stdout) == lines(bulk.stdout)
    walked = [tuple(int(part) for part in line.split(" ", 1)[0].strip(".").split("."))
              for line in walk.stdout.splitlines() if "No more variables left" not in line]
    assert walked == sorted(walked) and len(set(walked)) == len(walked)
    assert walked[0] == oids.sysDescr + (0,) and walked[-1] == oids.snmpEngineMaxMessageSize + (0,)
    assert any(oid[:len(oids.vrrpv3MIB)] == oids.vrrpv3MIB for oid in walked)
    # 12 node scalars, 14 counters, 1 peer x 7, 2 checks x 7, 2 VIPs x 5, 5 authority scalars
    assert sum(oid[:len(oids.hapacsMIB)] == oids.hapacsMIB for oid in walked) == 62


# --- robustness -----------------------------------------------------------------------

def test_a_failing_status_gives_gen_err_and_the_agent_recovers(harness, env, caplog):
    harness.status = None                           # status() now returns garbage: rendering fails

    def get():
        got = snmp("snmpget", *V2C, *QUICK, *HAPACS, harness.v4, "hapacsNodeName.0", env=env)
        return got.stdout + got.stderr
    # Once the cached snapshot (reused for 0.1 s) has expired, the GET meets the failure.
    wait_for(lambda: "genErr" in get(), 3, "genErr from a failing status")
    assert "cannot render the status" in caplog.text
    harness.status = make_status()
    wait_for(lambda: "pacs-a" in snmp("snmpget", *V2C, *HAPACS, harness.v4, "hapacsNodeName.0", env=env).stdout,
             3, "answers again")


def test_notify_with_bad_arguments_logs_and_returns(harness, caplog):
    harness.in_loop(harness.agent.notify, "reboot", node="pacs-a")
    harness.in_loop(harness.agent.notify, "check_down", check="pacs-dicom")
    assert "SNMP notification reboot not sent: unknown notification kind 'reboot'" in caplog.text
    assert "SNMP notification check_down not sent: notification check_down needs message" in caplog.text



def test_a_burst_of_1000_gets_is_all_answered(harness):
    host, port = harness.v4.split(":")[1:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        client.settimeout(5)
        for request_id in range(1, 1001):
            client.sendto(raw_v2c_get(request_id, oids.hapacsNodeState + (0,)), (host, int(port)))
        answered = set()
        try:
            while len(answered) < 1000:
                answered.add(response_request_id(client.recv(2048)))
        except socket.timeout:
            pass
    assert answered == set(range(1, 1001)), f"{1000 - len(answered)} of 1000 unanswered"


def test_a_bind_error_names_the_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        harness = AgentHarness(snmp_config(listen=[("::1", 0), ("127.0.0.1", port)]))
        try:
            with pytest.raises(SnmpBindError, match=rf"cannot listen for SNMP on 127\.0\.0\.1:{port}: "
                                                    r"Address already in use"):
                harness.call(harness.agent.start())
        finally:
            harness.close()


def test_an_address_not_yet_on_the_host_is_bound_for_later(caplog):
    harness = AgentHarness(snmp_config(listen=[("127.0.0.1", 0), ("192.0.2.199", 0)]))
    try:
        harness.start()
        assert ("192.0.2.199", harness.agent.addresses[1][1]) == harness.agent.addresses[1]
        assert "IP_FREEBIND" in caplog.text
    finally:
        harness.close()


def test_engine_id_is_stable_and_boots_grow_across_restarts(tmp_path, env):
    state = str(tmp_path / "state")
    engine_ids, boots = [], []
    for _ in range(2):
        harness = AgentHarness(snmp_config(), state).start()
        try:
            engine_ids.append(harness.agent.engine_id)
            got = snmp("snmpget", *v3_args(USERS[0]), "-e", "0x" + harness.agent.engine_id.hex(), "-On",
                       harness.v4, ".1.3.6.1.6.3.10.2.1.2.0", env=env)
            boots.append(int(got.stdout.rsplit(":", 1)[1]))
        finally:
            harness.close()
    assert engine_ids[0] == engine_ids[1] == bytes.fromhex("80007ed904") + b"pacs-a"
    assert boots == [1, 2]

    configured = AgentHarness(snmp_config(engine_id="0x80007ed90401020304")).start()
    try:
        got = snmp("snmpget", *V2C, "-On", configured.v4, ".1.3.6.1.6.3.10.2.1.1.0", env=env)
        assert "80 00 7E D9 04 01 02 03 04" in got.stdout
    finally:
        configured.close()


# --- notifications -----------------------------------------------------------------------

@pytest.fixture
def trap_receiver(tmp_path):
    receiver = TrapReceiver(tmp_path).start()
    yield receiver
    receiver.stop()


def test_notifications_reach_snmptrapd_as_v2c_traps_and_v3_informs(trap_receiver, tmp_path):
    targets = [trap_target(trap_receiver, "2c"), trap_target(trap_receiver, "3", USERS[1].name)]
    harness = AgentHarness(snmp_config(traps=targets), str(tmp_path / "state")).start()
    try:
        started = time.monotonic()
        harness.in_loop(harness.agent.notify, "state_change", old="BACKUP", new="MASTER",
                        reason="master pacs-b silent for 0.35 s", code="master-down")
        queued_s = time.monotonic() - started
        harness.in_loop(harness.agent.notify, "check_down", check="pacs-dicom", message="C-ECHO timed out")
        harness.in_loop(harness.agent.notify, "check_up", check="pacs-dicom", message="C-ECHO success")
        harness.in_loop(harness.agent.notify, "peer_lost", peer="pacs-b")
        harness.in_loop(harness.agent.notify, "split_brain", peer="pacs-b", winner="pacs-a")
        assert harness.call(harness.agent.flush(10))
        # 7 notifications: the state change, a vrrpv3NewMaster per VRRP row (IPv4, IPv6), 4 events.
        lines = wait_for(lambda: len(trap_receiver.lines()) >= 14 and trap_receiver.lines(), 5,
                         "14 notifications at snmptrapd")
        assert [(r.sent, r.failed) for r in harness.agent.receivers] == [(7, 0), (7, 0)]
    finally:
        harness.close()
    assert queued_s < 0.5
    traps = [line for line in lines if "TRAP2, SNMP v2c, community public" in line]
    informs = [line for line in lines if f"INFORM, SNMP v3, user {USERS[1].name}" in line]
    assert len(traps) == len(informs) == 7
    for received in (traps, informs):
        state = next(line for line in received if "OID: HAPACS-MIB::hapacsStateChange" in line)
        assert "HAPACS-MIB::hapacsNodeState.0 = INTEGER: master(3)" in state
        assert "HAPACS-MIB::hapacsNodePreviousState.0 = INTEGER: backup(2)" in state
        assert "HAPACS-MIB::hapacsNodeLastReason.0 = STRING: master pacs-b silent for 0.35 s" in state
        # One per VRRP row; INFORMs may arrive in any order (SNMPv3 discovery, retries).
        new_master = sorted(line for line in received if "OID: VRRPV3-MIB::vrrpv3NewMaster" in line)
        assert len(new_master) == 2
        ipv4 = next(line for line in new_master if f"{IF_INDEX}.51.ipv4" in line)
        assert f"vrrpv3OperationsMasterIpAddr.{IF_INDEX}.51.ipv4 = Hex-STRING: C0 00 02 0B" in ipv4
        assert f"vrrpv3StatisticsNewMasterReason.{IF_INDEX}.51.ipv4 = INTEGER: masterNoResponse(3)" in ipv4
        assert any(f"{IF_INDEX}.51.ipv6" in line for line in new_master)
        down = next(line for line in received if "OID: HAPACS-MIB::hapacsCheckDown" in line)
        assert "HAPACS-MIB::hapacsCheckName.1 = STRING: pacs-dicom" in down
        assert "HAPACS-MIB::hapacsCheckMessage.1 = STRING: C-ECHO timed out" in down
        assert any("OID: HAPACS-MIB::hapacsCheckUp" in line for line in received)
        assert any("OID: HAPACS-MIB::hapacsPeerLost" in line and "hapacsPeerName.1 = STRING: pacs-b" in line
                   for line in received)
        assert any("hapacsSplitBrainWinner.0 = STRING: pacs-a" in line for line in received)


def test_a_misconfigured_peer_reaches_snmptrapd_once_and_not_when_it_falls_silent(trap_receiver, tmp_path):
    harness = AgentHarness(snmp_config(traps=[trap_target(trap_receiver, "2c")]), str(tmp_path / "state")).start()
    text = ("a living peer at 192.0.2.12 (pacs-b BACKUP priority 100) cannot be understood: "
            "its heartbeats fail authentication: another key in cluster.auth_key_file")
    try:
        # The effects the core gives; the SNMP adapter listens to them as the agent wires it.
        harness.in_loop(harness.agent.observe, Misconfigured("192.0.2.12", "auth", text))
        harness.in_loop(harness.agent.observe, Misconfigured("192.0.2.12", "auth", "fell silent", gone=True))
        harness.in_loop(harness.agent.notify, "peer_lost", peer="pacs-b")    # a marker sent after both
        assert harness.call(harness.agent.flush(10))
        lines = wait_for(lambda: len(trap_receiver.lines()) >= 2 and trap_receiver.lines(), 5,
                         "2 notifications at snmptrapd")
        assert [(r.sent, r.failed) for r in harness.agent.receivers] == [(2, 0)]
    finally:
        harness.close()
    found = [line for line in lines if "OID: HAPACS-MIB::hapacsMisconfiguredPeer" in line]
    assert len(found) == 1, lines
    assert "HAPACS-MIB::hapacsMisconfiguredAddressType.0 = INTEGER: ipv4(1)" in found[0]
    assert "HAPACS-MIB::hapacsMisconfiguredAddress.0 = Hex-STRING: C0 00 02 0C" in found[0]
    assert "HAPACS-MIB::hapacsMisconfiguredCause.0 = INTEGER: auth(1)" in found[0]
    assert f"HAPACS-MIB::hapacsMisconfiguredMessage.0 = STRING: {text}" in found[0]
    assert "HAPACS-MIB::hapacsNodeName.0 = STRING: pacs-a" in found[0]


def test_an_unanswered_inform_is_logged_and_the_agent_keeps_answering(tmp_path, caplog, env):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:      # receives, never answers
        silent.bind(("127.0.0.1", 0))
        target = trap_target(None, "3", USERS[0].name, timeout_s=0.3, retries=1, port=silent.getsockname()[1])
        harness = AgentHarness(snmp_config(traps=[target]), str(tmp_path)).start()
        try:
            harness.in_loop(harness.agent.notify, "peer_lost", peer="pacs-b")
            got = snmp("snmpget", *V2C, *HAPACS, harness.v4, "hapacsNodeName.0", env=env)
            assert "pacs-a" in got.stdout
            receiver, = harness.agent.receivers
            wait_for(lambda: receiver.failed == 1, 5, "the inform to be given up")
            assert receiver.sent == 0
        finally:
            harness.close()
    assert "hapacsPeerLost not delivered" in caplog.text


def test_agent_runs_with_deprecation_warnings_as_errors(tmp_path):
    """pysnmp 7's old camelCase names warn; under -W error they would raise.
    A child process with every DeprecationWarning an error serves a GET and sends a TRAP."""
    code = """
import asyncio, logging, socket
from tests.snmp_helpers import COMMUNITY, make_status, raw_v2c_get, response_request_id, snmp_config
from hapacs.config import SnmpTrapTarget
from hapacs.snmp.agent import SnmpAgent
from hapacs.effects import Misconfigured
from hapacs.snmp import oids

async def main():
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    trap = SnmpTrapTarget("127.0.0.1", sink.getsockname()[1], "2c", COMMUNITY, None, 1.0, 0)
    agent = SnmpAgent(snmp_config(traps=[trap], listen=[("127.0.0.1", 0)]), "pacs-a", make_status,
                      logging.getLogger("t"), None, if_indexes={"eth0": 2})
    await agent.start()
    loop = asyncio.get_running_loop()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); client.setblocking(False)
    await loop.sock_sendto(client, raw_v2c_get(7, oids.hapacsNodeName + (0,)), agent.addresses[0])
    assert response_request_id(await asyncio.wait_for(loop.sock_recv(client, 2048), 5)) == 7
    agent.notify("peer_lost", peer="pacs-b")
    assert b"pacs-b" in await asyncio.wait_for(loop.sock_recv(sink, 2048), 5)
    await agent.stop()
    print("ok")

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "ok", done.stderr
