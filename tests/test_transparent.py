"""`client_address: transparent` and `outgoing_from_vip` without a PACS: the configuration's rules (with
file, line and key), the HAProxy source line (accepted by the real `haproxy -c`), the nftables table, and
hapacs.transparent against a real kernel in a namespace: what it adds, how the return route follows the
VIP, that it leaves other tables and rules alone, removes all of its own, and refuses clearly."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hapacs import haproxy
from lab.cluster import AgentCluster
from hapacs.reload import describe, restart_needed
from hapacs.transparent import Plan, plan_for, render

from .fixtures import lab_fixture
from .fixtures import config_problems
from .test_balance import BASE, SERVICE, load, members, problems

TRANSPARENT = "  client_address: transparent\n  workstations: [198.51.100.0/24, 192.0.2.200/32]\n" + SERVICE
TWO_VIPS = SERVICE + SERVICE.replace("  services:\n", "").replace("name: dicom", "name: second") \
    .replace("192.0.2.100", "192.0.2.101")


def test_transparent_with_the_workstations_networks(tmp_path, key):
    balance = load(tmp_path, key, TRANSPARENT + "  outgoing_from_vip: true\n").balance
    assert balance.transparent and balance.outgoing_from_vip
    assert balance.workstations == (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("192.0.2.200/32"))
    plain = load(tmp_path, key).balance
    assert not plain.transparent and not plain.outgoing_from_vip and plain.workstations == ()
    assert plan_for(plain, ("192.0.2.11",), True) is None, "snat needs nothing from the host"


BROKEN = [
    ("  client_address: transparent\n" + SERVICE, 12, "balance.client_address",
     "client_address: transparent needs workstations: the networks the workstations are in"),
    ("  outgoing_from_vip: true\n" + SERVICE, 12, "balance.outgoing_from_vip",
     "outgoing_from_vip needs workstations"),
    ("  workstations: [198.51.100.0/24]\n" + SERVICE, 12, "balance.workstations",
     "is used only with client_address: transparent or outgoing_from_vip: true"),
    ("  client_address: transparent\n  workstations: [198.51.100.1/24]\n" + SERVICE, 13, "balance.workstations[0]",
     "'198.51.100.1/24' is not an IPv4 network"),
    ("  client_address: transparent\n  workstations: [2001:db8::/64]\n" + SERVICE, 13, "balance.workstations[0]",
     "2001:db8::/64 is IPv6"),
    ("  client_address: transparent\n  workstations:\n    - 198.51.100.0/24\n    - 192.0.2.0/24\n" + SERVICE, 15,
     "balance.workstations[1]", "192.0.2.0/24 contains 192.0.2.100, 192.0.2.12 (a node or the VIP)"),
    ("  mode: direct\n  outgoing_from_vip: true\n  workstations: [198.51.100.0/24]\n"
     + SERVICE.replace("      target_port: 11112\n", ""), 13, "balance.outgoing_from_vip", "applies to mode proxy only"),
    ("  client_address: transparent\n  workstations: [198.51.100.0/24]\n" + TWO_VIPS, 13, "balance.client_address",
     "needs every service on one VIP"),
]


@pytest.mark.parametrize("balance, line, key_path, message", BROKEN, ids=[f"{b[2]}-{i}" for i, b in enumerate(BROKEN)])
def test_what_transparent_and_outgoing_from_vip_require(tmp_path, key, balance, line, key_path, message):
    found = _two_vips(tmp_path, key, balance) if "192.0.2.101" in balance else problems(tmp_path, key, balance)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path}/hapacs.yaml:{line}: {key_path}: "), found
    assert message in found[0], found


def _two_vips(tmp_path, key, balance) -> list[str]:
    return config_problems(tmp_path, BASE.format(key=key, balance=balance).replace(
        "  - address: 192.0.2.100/24\n", "  - address: 192.0.2.100/24\n  - address: 192.0.2.101/24\n"))


def test_haproxy_connects_from_the_workstation_s_address_and_accepts_it(tmp_path, key):
    assert shutil.which("haproxy"), "install HAProxy (Debian: apt install haproxy)"
    snat, transparent = load(tmp_path, key).balance, load(tmp_path, key, TRANSPARENT).balance
    assert "usesrc" not in haproxy.render(snat, members(), str(tmp_path))
    text = haproxy.render(transparent, members(), str(tmp_path))
    assert "    source 0.0.0.0 usesrc clientip\n" in text and "\n    user " not in text   # runs as root
    asyncio.run(haproxy.HAProxy(str(tmp_path / "state")).check(text))


def test_a_reload_switches_between_snat_and_transparent_without_a_restart(tmp_path, key):
    snat, transparent = load(tmp_path, key), load(tmp_path, key, TRANSPARENT)
    assert restart_needed(snat, transparent) == [] and restart_needed(transparent, snat) == []
    assert "balance changed (HAProxy reloaded)" in describe(snat, transparent)


PLAN = Plan(True, True, ipaddress.ip_address("192.0.2.100"),
            (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("192.0.2.200/32")),
            ("192.0.2.11", "192.0.2.12"), vip_here=True)


def test_the_nftables_table():
    text = render(PLAN)
    assert text.startswith("table ip hapacs_proxy {")
    assert "meta l4proto tcp socket transparent 1 meta mark set 104" in text           # prerouting
    assert "ct direction original socket transparent 1 ct mark set 104" in text        # HAProxy's own
    assert "ct direction reply ct mark 104 meta mark set 104" in text                  # local PACS answers
    assert ("tcp flags & (syn | ack) == syn ip saddr { 192.0.2.11, 192.0.2.12 } ip daddr != { 192.0.2.11, "
            "192.0.2.12 } ip daddr { 198.51.100.0/24, 192.0.2.200/32 } snat ip to 192.0.2.100") in text
    elsewhere = render(Plan(**{**PLAN.__dict__, "vip_here": False}))
    assert "snat" not in elsewhere, "a node without the VIP cannot send from it"
    outgoing_only = render(Plan(**{**PLAN.__dict__, "transparent": False}))
    assert "mark" not in outgoing_only and "snat ip to 192.0.2.100" in outgoing_only


lab = lab_fixture("tp", hosts=("a",), workstation=False)
AGENT_BALANCE = {"client_address": "transparent", "workstations": ["198.51.100.0/24"],
                 "members": [{"address": "192.0.2.11"}],
                 "services": [{"name": "dicom", "address": "192.0.2.100", "port": 104, "target_port": 11112}]}

ROUTING_SCRIPT = r"""
import asyncio, ipaddress, json, subprocess, sys
from hapacs.transparent import HostRouting, Plan, RoutingError

def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True).stdout.strip()

def seen():
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {"rules": [r for r in ip("rule").splitlines() if not r.startswith(("0:", "32766:", "32767:"))],
            "local": ip("route", "show", "table", "104"), "return": ip("route", "show", "table", "105"),
            "tables": sorted(nft.split("\n")), "main": ip("route", "show", "table", "main")}

async def main():
    plan = Plan(**{**json.loads(sys.argv[1]), "vip": ipaddress.ip_address("192.0.2.100"),
                   "workstations": (ipaddress.ip_network("198.51.100.0/24"),)})
    routing, out = HostRouting(), {}
    await routing.remove()          # at the start of an agent with snat: no rule of hapacs's, nothing flushed
    out["untouched"] = seen()
    await routing.apply(Plan(**{**plan.__dict__, "vip_here": False}))
    out["elsewhere"] = seen()
    await routing.apply(plan)
    out["here"] = seen()
    await routing.remove()
    await routing.remove()          # twice: nothing left is not an error
    out["removed"] = seen()
    try:
        await routing.apply(Plan(**{**plan.__dict__, "vip_here": False, "vip": ipaddress.ip_address("203.0.113.1")}))
    except RoutingError as err:
        out["refused"] = str(err)
    await routing.remove()
    out["after_refusal"] = seen()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_the_host_s_routing_follows_the_vip_and_leaves_other_tables_alone(lab):
    assert shutil.which("nft"), "install nftables (Debian: apt install nftables)"
    lab.exec("a", ["nft", "add table ip someone_else"])
    lab.exec("a", ["ip", "rule", "add", "fwmark", "7", "lookup", "104", "priority", "200"])   # not hapacs's
    before = lab.exec("a", ["ip", "rule"]).stdout
    lab.exec("a", ["ip", "route", "add", "203.0.113.0/24", "dev", "lo", "table", "105"])   # not hapacs's either
    plan = {"transparent": True, "outgoing_from_vip": True, "members": ["192.0.2.11", "192.0.2.12"],
            "vip_here": True}
    done = lab.exec("a", [sys.executable, "-c", ROUTING_SCRIPT, json.dumps(plan)], timeout=30)
    seen = json.loads(done.stdout)
    elsewhere, here = seen["elsewhere"], seen["here"]
    assert seen["untouched"]["return"] == "203.0.113.0/24 dev lo scope link", seen["untouched"]
    assert "104:\tfrom all fwmark 0x68 lookup 104" in elsewhere["rules"]
    assert "105:\tfrom all to 198.51.100.0/24 lookup 105" in elsewhere["rules"]
    assert elsewhere["local"].startswith("local default dev lo")
    assert elsewhere["return"].startswith("198.51.100.0/24 via 192.0.2.100 dev ")
    assert here["return"] == "", "the VIP holder uses its own routes to the workstations"
    assert here["rules"] == elsewhere["rules"] and here["local"] == elsewhere["local"]
    assert "table ip hapacs_proxy" in here["tables"] and "table ip someone_else" in here["tables"]
    removed = seen["removed"]
    assert removed["rules"] == ["200:\tfrom all fwmark 0x7 lookup 104"], "only hapacs's own rules go"
    assert removed["local"] == removed["return"] == ""
    assert removed["tables"] == ["", "table ip someone_else"]
    assert seen["refused"] == ("netlink refuses route 198.51.100.0/24 via 203.0.113.1 (table 105): Network is "
                               "unreachable (errno 101)"), seen["refused"]
    assert seen["after_refusal"] == removed
    assert lab.exec("a", ["ip", "rule"]).stdout == before


def test_check_config_names_what_transparent_needs_from_the_host(lab):
    """Forwarding off and redirects on (the kernel's defaults): check-config names both, with the key."""
    cluster = AgentCluster(lab)
    cluster.add("a", 150, balance=AGENT_BALANCE)
    checked = subprocess.run(["ip", "netns", "exec", lab.ns("a"), sys.executable, "-m", "hapacs", "check-config",
                              "-c", cluster.write("a")], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    interface = lab.hosts["a"].ifname
    assert "balance.client_address: transparent: this node must forward" in checked.stdout + checked.stderr
    assert (f"balance.client_address: transparent: ICMP redirects would send the members around the VIP holder: "
            f"sysctl -w net.ipv4.conf.all.send_redirects=0; sysctl -w net.ipv4.conf.{interface}.send_redirects=0"
            ) in checked.stdout + checked.stderr


def test_an_agent_whose_nft_refuses_the_table_does_not_start_and_claims_no_vip(lab):
    fake = Path(lab.mkdtemp("fakenft"))
    (fake / "nft").write_text("#!/bin/sh\necho 'Error: Could not process rule: Operation not supported' >&2\nexit 1\n")
    (fake / "nft").chmod(0o755)
    lab.exec("a", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                   f"net.ipv4.conf.{lab.hosts['a'].ifname}.send_redirects=0"])
    cluster = AgentCluster(lab)
    cluster.add("a", 150, balance=AGENT_BALANCE)
    agent = cluster.start("a", env={"PATH": f"{fake}:/usr/sbin:/usr/bin:/sbin:/bin"})
    assert agent.wait(timeout=30) == 1
    log = cluster.logs()
    assert ("cannot start: balance: nft refuses the ruleset: Error: Could not process rule: Operation not "
            "supported (table ip hapacs_proxy)") in log, log
    assert lab.holders("192.0.2.100") == []
    assert "New worker" not in log, "HAProxy starts only once the routing is in place"
