"""Watching the balancer end to end: a member's PACS dies, and SNMP (net-snmp walking
hapacsBalanceMemberTable from the workstation), Prometheus's page and check_hapacs all name
it down, from the same snapshot as `hapacs status`.

Real HAProxy started by the agents, real forking storescp members, real net-snmp and the
real plugin; the cluster of tests/test_e2e_balance.py."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from lab.cluster import AgentCluster
from lab.dicom import kill_with_children, start_storescp

from .e2e import settle
from .fixtures import lab_fixture
from .snmp_helpers import MIB_DIRS
from .test_e2e_balance import CHECK, PACS_PORT, balance_config, states
from .test_e2e_nagios import check_hapacs

PROBE = str(Path(__file__).resolve().parent.parent / "lab" / "httpprobe.py")
SNMP = {"listen": ["0.0.0.0:161"], "community": "public"}
METRICS_PORT = 9641


def _need_tools():
    missing = [t for t in ("haproxy", "snmpwalk") if not shutil.which(t)]
    assert not missing, f"install the Debian packages haproxy and snmp (missing: {', '.join(missing)})"


lab = lab_fixture("lo", before=_need_tools)


def member_walk(lab, host_address: str) -> str:
    directory = lab.mkdtemp("snmp-client")
    walked = lab.exec("ws", ["env", f"SNMP_PERSISTENT_DIR={directory}", "snmpwalk", "-v2c", "-c", "public",
                             "-m", "HAPACS-MIB", "-M", MIB_DIRS, "-t", "1", "-r", "1", host_address,
                             "hapacsBalanceMemberTable"], check=False, timeout=15)
    assert walked.returncode == 0 and "Wrong Type" not in walked.stdout, walked.stdout + walked.stderr
    return walked.stdout


def metrics_page(lab, host_address: str) -> str:
    fetched = lab.exec("ws", [sys.executable, PROBE, "get", f"http://{host_address}:{METRICS_PORT}/metrics"],
                       timeout=20)
    answer = json.loads(fetched.stdout)
    assert answer["status"] == 200, answer
    return answer["body"]


def test_a_dead_member_shows_down_in_snmp_metrics_and_check_hapacs(lab):
    pacs = {host: start_storescp(lab, lab.ns(host), port=PACS_PORT, aet="PACS", fork=True) for host in "ab"}
    cluster = AgentCluster(lab, checks={"a": CHECK, "b": CHECK})
    for host, priority in (("a", 150), ("b", 100)):
        cluster.add(host, priority, balance=balance_config(), snmp=SNMP,
                    metrics={"listen": f"{lab.node(host).ipv4}:{METRICS_PORT}"})
    cluster.start_all()
    settle(lab, cluster, "a", timeout=15)
    lab.wait_for(lambda: states(cluster, "a") == {"pacs-a": "up", "pacs-b": "up"}, 10,
                 what="HAProxy on pacs-a sees both PACS up")

    walked = member_walk(lab, "192.0.2.11")
    for line in ("hapacsBalanceServiceName.1.1 = STRING: dicom", "hapacsBalanceServiceActive.1.1 = INTEGER: true(1)",
                 "hapacsBalanceMemberName.1.2 = STRING: pacs-b", "hapacsBalanceMemberState.1.2 = INTEGER: up(1)",
                 "hapacsBalanceMemberAddress.1.2 = Hex-STRING: C0 00 02 0C"):
        assert f"HAPACS-MIB::{line}" in walked, walked
    assert "hapacsBalanceServiceActive.1.1 = INTEGER: false(2)" in member_walk(lab, "192.0.2.12")
    lab.wait_for(lambda: check_hapacs(lab, cluster, "a")[0] == 0, 10, what="check_hapacs OK on pacs-a")
    assert 'hapacs_balance_active{cluster_id="51",node="pacs-a",service="dicom"} 1.0' in metrics_page(lab, "192.0.2.11")

    kill_with_children(lab, pacs["b"])
    lab.wait_for(lambda: states(cluster, "a").get("pacs-b") == "down", 10, what="pacs-a's status: pacs-b down")
    lab.wait_for(lambda: "hapacsBalanceMemberState.1.2 = INTEGER: down(3)" in member_walk(lab, "192.0.2.11"), 5,
                 what="SNMP: pacs-b down(3)")
    assert "hapacsBalanceMemberState.1.1 = INTEGER: up(1)" in member_walk(lab, "192.0.2.11")
    page = metrics_page(lab, "192.0.2.11")
    assert ('hapacs_balance_member_state{cluster_id="51",member="pacs-b",node="pacs-a",service="dicom",'
            'state="down"} 1.0') in page, page
    assert ('hapacs_balance_member_state{cluster_id="51",member="pacs-a",node="pacs-a",service="dicom",'
            'state="up"} 1.0') in page, page
    code, line = check_hapacs(lab, cluster, "a")
    assert code == 1, line
    assert "balanced member pacs-b of dicom down" in line and line.startswith("HAPACS WARNING - pacs-a MASTER"), line
