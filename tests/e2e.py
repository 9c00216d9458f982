"""Helpers shared by the end-to-end tests: a cluster of real agents in a Lab."""

from __future__ import annotations

import json

from lab.cluster import AgentCluster
from lab.dicom import echo, start_storescp

VIP = "192.0.2.100"
VIP6 = "2001:db8::100"

# A viewer's long study transfer: one association that stays open until killed.
HOLD_ASSOCIATION = """
import sys, time
from pynetdicom import AE
from pynetdicom.sop_class import Verification
ae = AE(ae_title="VIEWER"); ae.add_requested_context(Verification)
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
assoc = ae.associate(sys.argv[1], 104, ae_title="PACS")
print("established" if assoc.is_established else "failed", flush=True)
time.sleep(60)
"""


def make_cluster(lab, hosts=(("a", 150), ("b", 100)), pacs=True, **kwargs) -> AgentCluster:
    cluster = AgentCluster(lab, **kwargs)
    for host, priority in hosts:
        cluster.add(host, priority)
        if pacs:
            start_storescp(lab, lab.ns(host), port=104, aet="PACS")
    cluster.start_all()
    return cluster


def one_holder(lab, vip=VIP) -> str:
    """The one host holding `vip`; "" when none does; "a+b" when several do (never "" nor a host)."""
    return "+".join(lab.holders(vip))


def workstation_echo(lab, vip=VIP) -> bool:
    return echo(lab.ns("ws"), vip, 104, called_ae="PACS", timeout=2.0)


def neighbour_mac(lab, ns: str, ip: str) -> str | None:
    out = lab.exec(ns, ["ip", "-j", "neigh", "show", ip], check=False).stdout
    entries = json.loads(out or "[]")
    return entries[0].get("lladdr") if entries else None


def mac_of(lab, host: str) -> str:
    node = lab.node(host)
    out = json.loads(lab.exec(host, ["ip", "-j", "link", "show", node.ifname]).stdout)
    return out[0]["address"]


def settle(lab, cluster, master: str, timeout=10.0, vip=VIP) -> None:
    lab.wait_for(lambda: cluster.masters() == [master], timeout, what=f"{master} sole MASTER")
    lab.wait_for(lambda: one_holder(lab, vip) == master, timeout, what=f"{master} sole holder of {vip}")


def assert_served(lab, master: str, vip=VIP) -> None:
    assert lab.holders(vip) == [master]
    assert workstation_echo(lab, vip), f"workstation C-ECHO to {vip} failed"
