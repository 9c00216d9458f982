"""Direct routing end to end: real agents loading the nftables netdev table, real dcmtk storescp
members (forking, port 104, the VIP on lo), real associations from the workstation.

Three nodes: pacs-c only balances (it is not among the members), pacs-a and pacs-b are the
members. The MASTER forwards the workstation's packets by the bucket map. A member sees the
workstation's own address and answers it straight from its own card. pacs-c dies (its link
cut): pacs-a takes the VIP with the same map and every held association carries on; the VIP
moves on to pacs-b (release), again without losing one; pacs-a's PACS dies and only its
buckets move: new associations succeed, pacs-b's held ones carry on; it comes back and takes
back its own buckets, and pacs-b's held associations still carry on. An agent whose nft
refuses the table, or whose host lacks the VIP on lo, does not start and claims no VIP."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

from lab.cluster import AgentCluster
from lab.dicom import echo, kill_with_children, start_storescp

from .e2e import VIP, settle
from .fixtures import lab_fixture
from .test_e2e_balance import HOLDER, holder_lines

HELD = 12
CHECK = [{"name": "pacs-dicom", "type": "dicom-echo", "port": 104, "called_ae": "PACS",
          "interval": 0.2, "timeout": 1.0, "fall": 2, "rise": 2}]
BALANCE = {"mode": "direct", "services": [{"name": "dicom", "address": VIP, "port": 104, "health": "pacs-dicom"}]}


def _need_tools():
    for tool in ("nft", "storescp"):
        assert shutil.which(tool), f"the direct-routing tests need {tool} (Debian: nftables, dcmtk)"


lab = lab_fixture("ld", before=_need_tools, hosts=("a", "b", "c"))
MEMBERS = [{"name": "pacs-a", "address": "192.0.2.11"}, {"name": "pacs-b", "address": "192.0.2.12"}]


def make_member(lab, host: str) -> None:
    """What the README tells the administrator to do on every member."""
    ifname = lab.node(host).ifname
    lab.exec(host, ["ip", "address", "add", f"{VIP}/32", "dev", "lo"])
    lab.exec(host, ["sysctl", "-qw", f"net.ipv4.conf.{ifname}.arp_ignore=1",
                    f"net.ipv4.conf.{ifname}.arp_announce=2"])


def mac(lab, host: str) -> str:
    node = lab.node(host)
    return json.loads(lab.exec(node.ns, ["ip", "-j", "link", "show", "dev", node.ifname]).stdout)[0]["address"]


def workstation_sessions(lab, host: str) -> int:
    """Associations from the workstation established on this host's PACS (on the VIP)."""
    lines = lab.exec(host, ["ss", "-Htn", "state", "established", "( sport = :104 )"]).stdout.splitlines()
    return sum(1 for line in lines if f"{VIP}:104" in line and "192.0.2.200:" in line)


def buckets(cluster, host: str) -> dict[str, tuple[str, int]]:
    status = cluster.status(host) or {}
    services = status.get("balance", {}).get("services", [])
    return {m["name"]: (m["state"], m["buckets"]) for m in services[0]["members"]} if services else {}


def count_replies(lab, sender: str) -> None:
    """On the workstation: count the VIP's packets that arrive from `sender`'s card."""
    ws = lab.node("ws")
    lab.exec("ws", ["nft", "-f", "-"], input=(
        "table netdev ldcount {\n  chain in {\n"
        f'    type filter hook ingress device "{ws.ifname}" priority 0; policy accept;\n'
        f"    ether saddr {mac(lab, sender)} ip saddr {VIP} tcp sport 104 counter\n  }}\n}}\n"))


def replies_counted(lab) -> int:
    listing = json.loads(lab.exec("ws", ["nft", "-j", "list", "table", "netdev", "ldcount"]).stdout)
    return sum(item["rule"]["expr"][-1]["counter"]["packets"] for item in listing["nftables"] if "rule" in item)


def table(lab, host: str) -> str:
    """The direct-routing table in the host's namespace, as nft prints it ("" when there is none)."""
    return lab.exec(host, ["nft", "list", "table", "netdev", "hapacs_direct"], check=False).stdout


def echoes(lab, count: int) -> list[bool]:
    return [echo(lab.ns("ws"), VIP, 104, called_ae="PACS", timeout=2.0) for _ in range(count)]


def test_direct_routing_keeps_the_workstation_s_address_survives_failover_and_a_dead_member(lab):
    pacs = {}
    for host in "abc":      # pacs-c's PACS only keeps its health check up: it is no member
        if host != "c":
            make_member(lab, host)
        pacs[host] = start_storescp(lab, lab.ns(host), port=104, aet="PACS", fork=True)
    cluster = AgentCluster(lab, checks={host: CHECK for host in "abc"})
    for host, priority in (("c", 200), ("a", 150), ("b", 100)):
        cluster.add(host, priority, balance={**BALANCE, "members": MEMBERS})
    cluster.start_all()
    try:
        settle(lab, cluster, "c", timeout=15)
        both_up = {"pacs-a": ("up", 32), "pacs-b": ("up", 32)}
        for host in "abc":
            lab.wait_for(lambda: buckets(cluster, host) == both_up, 10, what=f"pacs-{host}'s map: 32 buckets each")
        assert cluster.status("c")["balance"]["active"] is True and cluster.status("a")["balance"]["active"] is False

        # Held associations through pacs-c spread over both PACS; pacs-b's see the workstation and
        # answer it from pacs-b's own card (the workstation's ARP entry for the VIP is pacs-c's).
        count_replies(lab, "b")
        output = Path(lab.mkdtemp("holder")) / "out"
        with open(output, "w") as out:
            holder = lab.spawn("ws", [sys.executable, HOLDER, VIP, "104", str(HELD)], stdout=out, stderr=out)
        lab.wait_for(lambda: f"established {HELD} of {HELD}" in holder_lines(output), 20,
                     what=f"{HELD} associations held through the VIP")
        on_a, on_b = workstation_sessions(lab, "a"), workstation_sessions(lab, "b")
        assert on_a + on_b == HELD and on_a > 0 and on_b > 0, (on_a, on_b)
        assert replies_counted(lab) > 0

        # The balancer dies (pacs-c's link cut): pacs-a takes the VIP with the same map, and every held
        # association carries on.
        lab.link_down("c")
        settle_started = time.monotonic()
        lab.wait_for(lambda: cluster.state("a") == "MASTER" and "a" in lab.holders(VIP), 10,
                     what="pacs-a MASTER and holder of the VIP")
        print(f"pacs-a took the VIP {time.monotonic() - settle_started:.2f} s after pacs-c's link was cut")
        lab.kill(holder, signal.SIGUSR1)
        lab.wait_for(lambda: f"echo {HELD} of {HELD}" in holder_lines(output), 10,
                     what="every held association answers C-ECHO through pacs-a")

        # The balancer moves (release): pacs-b holds the VIP with the same map; every held association
        # carries on, on both members.
        started = time.monotonic()
        released = cluster.cli("a", "release")
        assert released.returncode == 0, released.stderr
        print(f"release took {time.monotonic() - started:.2f} s: {released.stdout.strip()}")
        lab.wait_for(lambda: cluster.state("b") == "MASTER" and "b" in lab.holders(VIP)
                     and "a" not in lab.holders(VIP), 10, what="pacs-b MASTER and holder")
        lab.kill(holder, signal.SIGUSR1)
        lab.wait_for(lambda: holder_lines(output).count(f"echo {HELD} of {HELD}") == 2, 10,
                     what="every held association answers C-ECHO through the new balancer")
        assert (workstation_sessions(lab, "a"), workstation_sessions(lab, "b")) == (on_a, on_b)

        # pacs-a's PACS dies: its node goes to FAULT and its buckets move to pacs-b. New associations
        # succeed; pacs-b's held associations carry on (their buckets did not move).
        kill_with_children(lab, pacs["a"])
        killed = time.monotonic()
        lab.wait_for(lambda: buckets(cluster, "b") == {"pacs-a": ("down", 0), "pacs-b": ("up", 64)}, 10,
                     what="pacs-a's buckets moved to pacs-b")
        print(f"pacs-a's buckets moved {time.monotonic() - killed:.2f} s after its PACS was killed")
        assert all(echoes(lab, 8))
        lab.kill(holder, signal.SIGUSR1)
        lab.wait_for(lambda: holder_lines(output)[-1] == f"echo {on_b} of {HELD}", 10,
                     what="pacs-b's held associations still answer")

        # pacs-a's PACS back: its node leaves FAULT and takes back exactly its own buckets; pacs-b's
        # held associations carry on.
        start_storescp(lab, lab.ns("a"), port=104, aet="PACS", fork=True)
        lab.wait_for(lambda: buckets(cluster, "b") == both_up, 10, what="pacs-a's buckets back")
        lab.kill(holder, signal.SIGUSR1)
        lab.wait_for(lambda: holder_lines(output).count(f"echo {on_b} of {HELD}") == 2, 10,
                     what="pacs-b's held associations still answer after pacs-a's return")
        assert all(echoes(lab, 4))
        lab.stop(holder)

        # A reload adds a service: the tables gain it. A stopped agent leaves no table behind.
        second = {"name": "dicom-2", "address": VIP, "port": 105, "health": "pacs-dicom"}
        for host in "ab":
            cluster.specs[host].extra["balance"] = {**BALANCE, "members": MEMBERS,
                                                    "services": BALANCE["services"] + [second]}
            cluster.write(host)
            reloaded = cluster.cli(host, "reload")
            assert reloaded.returncode == 0, reloaded.stderr + reloaded.stdout
        for host in "ab":
            lab.wait_for(lambda: "tcp dport 105" in table(lab, host), 5, what=f"pacs-{host}'s table with port 105")
        cluster.kill("a", signal.SIGTERM)
        assert table(lab, "a") == "" and "tcp dport 104" in table(lab, "b")
    finally:
        print(cluster.logs())


def test_an_agent_whose_nft_refuses_the_table_or_whose_host_is_no_member_does_not_start(lab):
    fake = Path(lab.mkdtemp("fakenft"))
    (fake / "nft").write_text("#!/bin/sh\necho 'Error: Could not process rule: Operation not supported' >&2\nexit 1\n")
    (fake / "nft").chmod(0o755)
    make_member(lab, "a")
    cluster = AgentCluster(lab, checks={"a": CHECK, "b": CHECK})
    cluster.add("a", 150, balance={**BALANCE, "members": [{"address": "192.0.2.11"}]})
    proc = cluster.start("a", env={"PATH": f"{fake}:/usr/sbin:/usr/bin:/sbin:/bin"})
    assert proc.wait(timeout=30) == 1
    log = cluster.logs()
    assert "cannot start: balance: nft refuses the ruleset: Error: Could not process rule" in log, log
    assert lab.holders(VIP) == []
    # pacs-b has no VIP on lo: its agent says what to do, and does not start either
    cluster.add("b", 100, balance={**BALANCE, "members": [{"address": "192.0.2.12"}]})
    proc = cluster.start("b")
    assert proc.wait(timeout=30) != 0
    log = cluster.logs()
    assert f"mode direct: {VIP} is not on lo on this host" in log, log
    assert lab.holders(VIP) == []
