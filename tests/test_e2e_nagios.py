"""Nagios and Icinga end to end: the real check_hapacs against live agents in
namespaces, and the real check_snmp (monitoring-plugins-standard) polling
the agents' VRRPV3-MIB from the workstation, with the command lines the
README gives."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path


from hapacs.snmp import oids
from lab.cluster import REPO, AgentCluster
from lab.dicom import start_storescp

from .e2e import VIP, settle
from .test_control_permissions import _python_for, accounts  # noqa: F401  (a fixture)
from .fixtures import lab_fixture

CHECK_SNMP = "/usr/lib/nagios/plugins/check_snmp"
ECHO = {"name": "pacs-dicom", "type": "dicom-echo", "port": 104, "called_ae": "PACS",
        "interval": 0.2, "timeout": 0.5, "fall": 2, "rise": 2, "weight": 0}
PERFDATA = re.compile(r"peer_pacs-(\w)_last_seen=\d+(\.\d+)?s;;;0 check_pacs-dicom_latency=\d+(\.\d+)?s;;;0")


def require_check_snmp() -> None:
    assert os.access(CHECK_SNMP, os.X_OK), \
        f"{CHECK_SNMP} is missing: install the Debian package monitoring-plugins-standard"


lab = lab_fixture("ng", before=require_check_snmp)


def start(lab, **extra) -> tuple[AgentCluster, dict]:
    """pacs-a (150) and pacs-b (100), each checking its own storescp with a weight-0 C-ECHO."""
    scp = {h: start_storescp(lab, lab.ns(h), port=104, aet="PACS") for h in ("a", "b")}
    cluster = AgentCluster(lab, checks={"a": [ECHO], "b": [ECHO]})
    cluster.add("a", 150, **extra)
    cluster.add("b", 100, **extra)
    cluster.start_all()
    return cluster, scp


def check_hapacs(lab, cluster, host, *argv, user=None) -> tuple[int, str]:
    """The real plugin, in the host's namespace, finding the socket from the host's config as NRPE would."""
    python = sys.executable if user is None else _python_for(user)
    command = ["env", f"PYTHONPATH={REPO}", python, "-m", "hapacs.nagios", "-c", cluster.config_path(host), *argv]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    completed = lab.exec(host, command, check=False, timeout=30)
    assert completed.stderr == "", completed.stderr
    assert completed.stdout.count("\n") == 1, completed.stdout
    return completed.returncode, completed.stdout.rstrip("\n")


def test_check_hapacs_on_a_live_cluster(lab):
    cluster, scp = start(lab)
    try:
        settle(lab, cluster, "a")
        for host in ("a", "b"):
            lab.wait_for(lambda: check_hapacs(lab, cluster, host)[0] == 0, 10, what=f"check_hapacs OK on {host}")
        code, line = check_hapacs(lab, cluster, "a")
        assert line.startswith("HAPACS OK - pacs-a MASTER; peer pacs-b BACKUP; checks: 1 up | "), line
        assert PERFDATA.fullmatch(line.split(" | ")[1]).group(1) == "b", line
        code, line = check_hapacs(lab, cluster, "b")
        assert line.startswith("HAPACS OK - pacs-b BACKUP, MASTER pacs-a; peer pacs-a MASTER; checks: 1 up | ")
        assert PERFDATA.fullmatch(line.split(" | ")[1]).group(1) == "a", line

        assert cluster.cli("b", "maintenance", "on").returncode == 0
        code, line = check_hapacs(lab, cluster, "b")
        assert (code, line.split(" | ")[0]) == (
            1, "HAPACS WARNING - pacs-b BACKUP, MASTER pacs-a: maintenance on: no automatic transition")
        assert cluster.cli("b", "maintenance", "off").returncode == 0
        assert check_hapacs(lab, cluster, "b")[0] == 0

        # b's PACS dies: its weight-0 check puts it in FAULT.
        lab.stop(scp["b"], timeout=1.0)
        cluster.wait_state("b", "FAULT", timeout=5)
        code, line = check_hapacs(lab, cluster, "b")
        assert code == 2, line
        assert line.startswith("HAPACS CRITICAL - pacs-b FAULT, MASTER pacs-a: FAULT (check pacs-dicom down: "), line
        assert "connection refused" in line
        # The MASTER's own check stays OK: each node reports itself; b's service is the CRITICAL one.
        lab.wait_for(lambda: [p["state"] for p in cluster.status("a")["peers"]] == ["FAULT"], 5, what="b FAULT on a")
        code, line = check_hapacs(lab, cluster, "a")
        assert (code, line.split(" | ")[0]) == (0, "HAPACS OK - pacs-a MASTER; peer pacs-b FAULT; checks: 1 up")

        # The MASTER's agent is killed: its plugin cannot ask anyone.
        cluster.kill("a", signal.SIGKILL)
        code, line = check_hapacs(lab, cluster, "a")
        assert (code, line) == (3, f"HAPACS UNKNOWN - no agent answers at {cluster.socket_path('a')} (the socket "
                                   "was left by an agent that died): is hapacs running?")
        # ... and b, in FAULT, hears no MASTER once a is declared lost.
        lab.wait_for(lambda: [p["state"] for p in cluster.status("b")["peers"]] == ["LOST"], 5, what="a LOST on b")
        code, line = check_hapacs(lab, cluster, "b")
        assert code == 2
        assert re.match(r"HAPACS CRITICAL - pacs-b FAULT: FAULT \(check pacs-dicom down: .*\); no MASTER heard; "
                        r"peer pacs-a lost \(last heard \d+\.\d s ago\) \| peer_pacs-a_last_seen=", line), line
    finally:
        print(cluster.logs())


def test_check_hapacs_as_a_member_of_control_group(lab, accounts):  # noqa: F811  (the fixture)
    """The README's way for the nagios user: control.group. Outside it, UNKNOWN with the reason."""
    group = accounts.group("ng")
    member, outsider = accounts.user("nm", groups_=(group,)), accounts.user("no")
    cluster, _ = start(lab, control={"group": group})
    # The test's directory must be reachable, as /run/hapacs is (0755); the socket itself stays 0660.
    os.chmod(lab.tmpdir, 0o755)
    os.chmod(cluster.dir, 0o755)
    try:
        settle(lab, cluster, "a")
        lab.wait_for(lambda: check_hapacs(lab, cluster, "a", user=member)[0] == 0, 10, what="OK for the member")
        path = cluster.socket_path("a")
        assert check_hapacs(lab, cluster, "a", user=outsider) == (
            3, f"HAPACS UNKNOWN - permission denied on {path}: run as root or as a member of control.group")
    finally:
        print(cluster.logs())


# --- check_snmp against the VRRPV3-MIB, with the README's command lines ----------------------

# check_snmp 2.3 offers SHA-1 and AES-128 only.
SNMP = {"listen": ["0.0.0.0:161"], "community": "public",
        "users": [{"name": "nagios", "auth_protocol": "sha", "auth_key": "auth-key-for-nagios",
                   "priv_protocol": "aes128", "priv_key": "priv-key-for-nagios"}]}
# hapacsNodeState.0, a scalar: init(1) backup(2) master(3) fault(4)
NODE_STATE = ".".join(map(str, oids.hapacsNodeState + (0,)))
# vrrpv3OperationsStatus.{ifIndex}.{VRID = cluster.id}.{1 = IPv4}: initialize(1) backup(2) master(3)
VRRP_STATUS = "1.3.6.1.2.1.207.1.1.1.1.6.{if_index}.51.1"
OPTIONS = "-P 2c -C public -t 3 -e 1"
README_LINES = {   # what each line is for -> the line, as the README shows it for pacs-a (ifIndex 2)
    "is MASTER": f"check_snmp -H {{host}} {OPTIONS} -o {VRRP_STATUS} -l 'VRRP state' -c 3:3",
    "is MASTER or BACKUP": f"check_snmp -H {{host}} {OPTIONS} -o {VRRP_STATUS} -l 'VRRP state' -c 2:3",
    "hapacs state": f"check_snmp -H {{host}} {OPTIONS} -o {NODE_STATE} -l 'hapacs state' -w 2:3 -c 1:3",
    "VIP holder is MASTER": f"check_snmp -H {{vip}} {OPTIONS} -o {NODE_STATE} -l 'VIP holder' -c 3:3",
    "is MASTER or BACKUP, SNMPv3": "check_snmp -H {host} -P 3 -L authPriv -U nagios -a SHA -A '{auth_key}' -x AES "
                                   f"-X '{{priv_key}}' -t 3 -e 1 -o {VRRP_STATUS} -l 'VRRP state' -c 2:3",
}


def if_index(lab, host) -> int:
    links = json.loads(lab.exec(host, ["ip", "-j", "link", "show", lab.node(host).ifname]).stdout)
    return links[0]["ifindex"]


def check_snmp(lab, line: str, host: str, index: int) -> tuple[int, str]:
    """Run one README line with the real check_snmp on the workstation (the NMS)."""
    user = SNMP["users"][0]
    argv = shlex.split(line.format(host=lab.node(host).ipv4, vip=VIP, if_index=index, auth_key=user["auth_key"],
                                   priv_key=user["priv_key"]))
    assert argv[0] == "check_snmp"
    completed = lab.exec("ws", ["env", f"SNMP_PERSISTENT_DIR={client_dir(lab)}", CHECK_SNMP, *argv[1:]],
                         check=False, timeout=30)
    return completed.returncode, (completed.stdout + completed.stderr).strip()


def client_dir(lab) -> str:
    """net-snmp's persistent directory for the clients, made once (it says so when it makes it)."""
    path = os.path.join(lab.tmpdir, "snmp-client")
    os.makedirs(os.path.join(path, "cert_indexes"), exist_ok=True)
    return path


def test_readme_shows_the_check_snmp_lines_and_the_oids_are_the_mibs():
    readme = (Path(REPO) / "README.md").read_text()
    for line in README_LINES.values():
        shown = line.format(host="pacs-a", vip="192.0.2.100", if_index=2, auth_key="AUTH_KEY", priv_key="PRIV_KEY")
        assert shown in readme, f"README.md should show: {shown}"
    assert VRRP_STATUS.startswith(".".join(map(str, oids.vrrpv3OperationsStatus)) + ".")


def test_check_snmp_reads_the_vrrp_state_of_live_agents(lab):
    cluster, scp = start(lab, snmp=SNMP)
    try:
        settle(lab, cluster, "a")
        index = {h: if_index(lab, h) for h in ("a", "b")}
        # The walk shows the row the lines name: the interface's ifIndex, VRID 51, IPv4.
        walk = lab.exec("ws", ["env", f"SNMP_PERSISTENT_DIR={client_dir(lab)}", "snmpwalk", "-v2c",
                               "-c", "public", "-On", "192.0.2.11", "1.3.6.1.2.1.207.1.1.1.1.6"]).stdout
        assert walk.strip() == "." + VRRP_STATUS.format(if_index=index["a"]) + " = INTEGER: 3", walk

        def result(what, host):
            return check_snmp(lab, README_LINES[what], host, index[host])

        lab.wait_for(lambda: result("is MASTER or BACKUP", "b")[0] == 0, 10, what="b BACKUP over SNMP")
        assert result("is MASTER", "a") == (0, "SNMP OK - VRRP state 3 | 'VRRP state'=3;;3:3")
        assert result("is MASTER", "b") == (2, "SNMP CRITICAL - VRRP state *2* | 'VRRP state'=2;;3:3")
        assert result("is MASTER or BACKUP", "a") == (0, "SNMP OK - VRRP state 3 | 'VRRP state'=3;;2:3")
        assert result("is MASTER or BACKUP", "b") == (0, "SNMP OK - VRRP state 2 | 'VRRP state'=2;;2:3")
        assert result("hapacs state", "b") == (0, "SNMP OK - hapacs state 2 | 'hapacs state'=2;2:3;1:3")
        assert result("VIP holder is MASTER", "a") == (0, "SNMP OK - VIP holder 3 | 'VIP holder'=3;;3:3")
        assert result("is MASTER or BACKUP, SNMPv3", "a") == (0, "SNMP OK - VRRP state 3 | 'VRRP state'=3;;2:3")

        # b's PACS dies: FAULT is initialize(1) in VRRP terms, fault(4) in HAPACS-MIB.
        lab.stop(scp["b"], timeout=1.0)
        cluster.wait_state("b", "FAULT", timeout=5)
        lab.wait_for(lambda: result("is MASTER or BACKUP", "b")[0] == 2, 10, what="b CRITICAL over SNMP")
        assert result("is MASTER or BACKUP", "b") == (2, "SNMP CRITICAL - VRRP state *1* | 'VRRP state'=1;;2:3")
        assert result("hapacs state", "b") == (2, "SNMP CRITICAL - hapacs state *4* | 'hapacs state'=4;2:3;1:3")
        assert result("is MASTER or BACKUP, SNMPv3", "b") == (2, "SNMP CRITICAL - VRRP state *1* | 'VRRP state'=1;;2:3")

        # b's PACS is back; a's agent is killed: SNMP on a no longer answers, and b takes over.
        start_storescp(lab, lab.ns("b"), port=104, aet="PACS")
        cluster.kill("a", signal.SIGKILL)
        code, out = result("is MASTER", "a")
        assert code == 3 and out.endswith("Timeout: No Response from 192.0.2.11:161."), out
        settle(lab, cluster, "b")
        lab.wait_for(lambda: result("VIP holder is MASTER", "b")[0] == 0, 10, what="the VIP holder MASTER")
        assert result("is MASTER", "b") == (0, "SNMP OK - VRRP state 3 | 'VRRP state'=3;;3:3")
    finally:
        print(cluster.logs())
