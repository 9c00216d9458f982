"""SNMP end to end: real agents in namespaces, net-snmp clients and snmptrapd on the
workstation (the NMS), a real failover."""

from __future__ import annotations

import os
import shutil
import signal


from lab.cluster import AgentCluster
from lab.dicom import start_storescp

from .e2e import settle
from .snmp_helpers import MIB_DIRS
from .fixtures import lab_fixture

NMS = "192.0.2.200"
SNMP = {
    "listen": ["0.0.0.0:161"],
    "community": "public",
    "users": [{"name": "nms", "auth_protocol": "sha256", "auth_key": "authpass123",
               "priv_protocol": "aes128", "priv_key": "privpass123"}],
    "traps": [{"host": NMS, "port": 162, "version": "2c", "community": "public"}],
}
MIBS = ["-m", "HAPACS-MIB:VRRPV3-MIB", "-M", MIB_DIRS]


def require_net_snmp() -> None:
    missing = [t for t in ("snmpwalk", "snmpget", "snmpset", "snmptrapd") if not shutil.which(t)]
    assert not missing, f"install the Debian packages snmp and snmptrapd (missing: {', '.join(missing)})"


lab = lab_fixture("sn", before=require_net_snmp)


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


def test_check_and_split_brain_traps_from_running_agents(lab):
    _, trap_log = start_trapd(lab)
    # a's web service: a check with a small negative weight, so a stays MASTER while it is down.
    web = start_storescp(lab, lab.ns("a"), port=8080, aet="WEB")
    check = {"name": "pacs-web", "type": "tcp", "host": "127.0.0.1", "port": 8080, "interval": 0.2,
             "timeout": 0.5, "fall": 2, "rise": 2, "weight": -10}
    cluster = AgentCluster(lab, checks={"a": [check]}, preempt=False)
    cluster.add("a", 150, snmp=SNMP)
    cluster.add("b", 100, snmp=SNMP)
    cluster.start("a")       # a first: without preempt, a b that started first would stay MASTER

    def trap_from(source: str, name: str, *words: str) -> bool:
        return any(f"[{source}]:" in t and name in t and all(w in t for w in words) for t in traps(trap_log))

    try:
        settle(lab, cluster, "a")
        cluster.start("b")
        cluster.wait_state("b", "BACKUP")
        lab.stop(web, timeout=1.0)
        lab.wait_for(lambda: trap_from("192.0.2.11", "hapacsCheckDown", "pacs-web", "connection refused"), 5,
                     what="hapacsCheckDown naming pacs-web from pacs-a")
        start_storescp(lab, lab.ns("a"), port=8080, aet="WEB")
        lab.wait_for(lambda: trap_from("192.0.2.11", "hapacsCheckUp", "pacs-web"), 5,
                     what="hapacsCheckUp naming pacs-web from pacs-a")
        # A partition: b becomes MASTER on its side; healed, the two MASTERs hear each other.
        lab.partition("b")
        lab.wait_for(lambda: cluster.state("b") == "MASTER", 5, what="b MASTER on its own side")
        lab.heal("b")
        lab.wait_for(lambda: cluster.masters() == ["b"], 5, what="b, the newer MASTER, stays")
        # The loser (a) always hears the winner as MASTER and tells the NMS (the winner does too
        # when it heard a as MASTER before a stepped down: a race, not asserted).
        lab.wait_for(lambda: trap_from("192.0.2.11", "hapacsSplitBrain", "hapacsPeerName.1 = STRING: pacs-b",
                                       "hapacsSplitBrainWinner.0 = STRING: pacs-b"), 5,
                     what="hapacsSplitBrain from pacs-a naming pacs-b, the winner")
    finally:
        print(cluster.logs())
        print("".join(traps(trap_log)))
