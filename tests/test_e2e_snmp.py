"""SNMP end to end: real agents in namespaces, net-snmp clients and snmptrapd on the
workstation (the NMS), a real failover."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from lab import Lab, unique_prefix
from lab.cluster import AgentCluster

from .e2e import settle
from .snmp_helpers import MIB_DIRS

NMS = "192.0.2.200"
SNMP = {
    "listen": ["0.0.0.0:161"],
    "community": "public",
    "users": [{"name": "nms", "auth_protocol": "sha256", "auth_key": "authpass123",
               "priv_protocol": "aes128", "priv_key": "privpass123"}],
    "traps": [{"host": NMS, "port": 162, "version": "2c", "community": "public"}],
}
MIBS = ["-m", "HAPACS-MIB:VRRPV3-MIB", "-M", MIB_DIRS]


@pytest.fixture
def lab():
    missing = [t for t in ("snmpwalk", "snmpget", "snmpset", "snmptrapd") if not shutil.which(t)]
    assert not missing, f"install the Debian packages snmp and snmptrapd (missing: {', '.join(missing)})"
    with Lab(unique_prefix("sn")) as lab:
        yield lab


def net_snmp(lab, argv, timeout=15):
    env_dir = lab.mkdtemp("snmp-client")
    return lab.exec("ws", ["env", f"SNMP_PERSISTENT_DIR={env_dir}", *argv], check=False, timeout=timeout)


def walk(lab, host, *auth, oid="hapacsMIB"):
    return net_snmp(lab, ["snmpwalk", *auth, *MIBS, "-t", "1", "-r", "1", host, oid])


def start_trapd(lab):
    directory = lab.mkdtemp("trapd")
    conf = os.path.join(directory, "snmptrapd.conf")
    with open(conf, "w") as handle:
        handle.write("authCommunity log public\n")
    out = os.path.join(directory, "traps.log")
    proc = lab.spawn("ws", ["/usr/sbin/snmptrapd", "-f", "-Lf", out, "-C", "-c", conf,
                            f"--persistentDir={directory}", *MIBS, "-F", "TRAPD %b | %v\n", f"udp:{NMS}:162"],
                     env={"SNMP_PERSISTENT_DIR": directory})
    lab.wait_for(lambda: "162" in lab.exec("ws", ["ss", "-uln"]).stdout, 5, what="snmptrapd listening")
    return proc, out


def traps(path):
    try:
        with open(path) as handle:
            return [line for line in handle if line.startswith("TRAPD")]
    except FileNotFoundError:
        return []


def test_walks_traps_and_failover_seen_by_a_real_nms(lab):
    _, trap_log = start_trapd(lab)
    cluster = AgentCluster(lab)
    cluster.add("a", 150, snmp=SNMP)
    cluster.add("b", 100, snmp=SNMP)
    cluster.start_all()
    try:
        settle(lab, cluster, "a")
        v2c = walk(lab, "192.0.2.11", "-v2c", "-c", "public")
        assert v2c.returncode == 0, v2c.stderr
        assert "HAPACS-MIB::hapacsNodeName.0 = STRING: pacs-a" in v2c.stdout
        assert "hapacsNodeState.0 = INTEGER: master(3)" in v2c.stdout
        assert "hapacsPeerName.1 = STRING: pacs-b" in v2c.stdout
        v3 = walk(lab, "192.0.2.12", "-v3", "-l", "authPriv", "-u", "nms", "-a", "SHA-256", "-A", "authpass123",
                  "-x", "AES", "-X", "privpass123")
        assert v3.returncode == 0, v3.stderr
        assert "hapacsNodeState.0 = INTEGER: backup(2)" in v3.stdout
        vrrp = walk(lab, "192.0.2.11", "-v2c", "-c", "public", oid="vrrpv3OperationsStatus")
        assert "= INTEGER: master(3)" in vrrp.stdout, vrrp.stdout + vrrp.stderr

        # Refusals: wrong community gets no answer; SET is refused.
        wrong = walk(lab, "192.0.2.11", "-v2c", "-c", "private")
        assert wrong.returncode != 0 and "Timeout" in wrong.stderr
        refused = net_snmp(lab, ["snmpset", "-v2c", "-c", "public", *MIBS, "-t", "1", "-r", "0", "192.0.2.11",
                                 "hapacsNodePriority.0", "u", "200"])
        assert refused.returncode != 0

        cluster.kill("a", signal.SIGKILL)
        settle(lab, cluster, "b")
        after = walk(lab, "192.0.2.12", "-v2c", "-c", "public")
        assert "hapacsNodeState.0 = INTEGER: master(3)" in after.stdout
        lab.wait_for(lambda: any("vrrpv3NewMaster" in t and "192.0.2.12" in t for t in traps(trap_log)), 5,
                     what="vrrpv3NewMaster from pacs-b at the NMS")
        lab.wait_for(lambda: any("hapacsStateChange" in t and "192.0.2.12" in t and "master" in t
                                 for t in traps(trap_log)), 5, what="hapacsStateChange from pacs-b")
        lab.wait_for(lambda: any("hapacsPeerLost" in t and "pacs-a" in t for t in traps(trap_log)), 5,
                     what="hapacsPeerLost naming pacs-a")
    finally:
        print(cluster.logs())
        print("".join(traps(trap_log)))
