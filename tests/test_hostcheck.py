"""hostcheck.problems on made-up hosts: the rules without namespaces (the real hosts are in
tests/test_e2e_hostcheck.py)."""

from __future__ import annotations

import ipaddress
import textwrap

from hapacs import config as cfg
from hapacs import hostcheck
from hapacs.netlink import INFINITE_LIFETIME, Address
from hapacs.yamlsource import parse as parse_yaml

BASE = """\
node:
  name: pacs-a
cluster:
  interface: eth0
  peers: [192.0.2.11, 192.0.2.12]
  auth_key_file: {key}
vips:
  - address: 192.0.2.100/24
"""


def host(**interfaces: list[str]) -> hostcheck.HostFacts:
    """Addresses as 'ip/len' (permanent) or 'ip/len lease' (with a lifetime, as a held VIP)."""
    facts = {}
    for index, (name, addresses) in enumerate(interfaces.items(), start=1):
        found = []
        for text in addresses:
            address, _, lease = text.partition(" ")
            found.append(Address(ipaddress.ip_interface(address), index, False,
                                 2 if lease else INFINITE_LIFETIME))
        facts[name] = tuple(found)
    return hostcheck.HostFacts(facts)


def problems(text: str, key: str, facts: hostcheck.HostFacts) -> list[str]:
    text = textwrap.dedent(text).replace("{key}", key)
    config = cfg.parse(text, "h.yaml")
    root, _ = parse_yaml(text, "h.yaml")
    return [str(p) for p in hostcheck.problems(config, facts, hostcheck.Lines(root))]


def test_a_fitting_host_has_no_problem_and_a_held_vip_is_not_its_own_address(key):
    assert problems(BASE, key, host(lo=["127.0.0.1/8"], eth0=["192.0.2.11/24"])) == []
    assert problems(BASE, key, host(eth0=["192.0.2.11/24", "192.0.2.100/24 lease"])) == []


def test_vip_equal_to_the_only_address_is_named_not_the_missing_heartbeat_source(key):
    text = BASE.replace("192.0.2.100/24", "192.0.2.11/24").replace("192.0.2.11, ", "")
    found = problems(text, key, host(eth0=["192.0.2.11/24"]))
    assert found == ["h.yaml:8: vips[0].address: 192.0.2.11 is this host's own address (on eth0, on this host); "
                     "a VIP must be an address no host owns: pick a free one in the workstations' subnet"]


def test_vip_equal_to_an_address_of_another_interface(key):
    found = problems(BASE, key, host(eth0=["192.0.2.11/24"], eth1=["192.0.2.100/24"]))
    assert len(found) == 1 and "192.0.2.100 is this host's own address (on eth1" in found[0]


def test_vip_outside_the_subnets_and_ipv6(key):
    text = BASE + "  - address: 2001:db8::100/64\n"
    found = problems(text, key, host(eth0=["192.0.2.11/24", "fe80::1/64"]))
    assert found == ["h.yaml:9: vips[1].address: 2001:db8::100 is outside every subnet of eth0 on this host "
                     "(it has no IPv6 address); workstations find a VIP only in a subnet the interface is in"]
    assert problems(text, key, host(eth0=["192.0.2.11/24", "2001:db8::11/64", "fe80::1/64"])) == []


def test_heartbeat_source_and_node_address(key):
    found = problems(BASE, key, host(eth0=["2001:db8::11/64", "192.0.2.100/24 lease"]))
    assert "h.yaml:4: cluster.interface: eth0 has no IPv4 address to send heartbeats from on this host; give it " \
           "one or set node.address" in found, found
    text = BASE.replace("  name: pacs-a\n", "  name: pacs-a\n  address: 192.0.2.13\n")
    found = problems(text, key, host(eth0=["192.0.2.11/24"]))
    assert found == ["h.yaml:3: node.address: 192.0.2.13 is not an address of eth0 on this host (it has: 192.0.2.11)"]


def test_peers_naming_only_this_host_and_quorum_after_skipping_it(key):
    text = BASE.replace("[192.0.2.11, 192.0.2.12]", "[192.0.2.11]")
    found = problems(text, key, host(eth0=["192.0.2.11/24"]))
    assert len(found) == 1 and "cluster.peers: lists only this host's own address" in found[0]
    text = BASE.replace("  auth_key_file", "  quorum: majority\n  auth_key_file")
    found = problems(text, key, host(eth0=["192.0.2.11/24"]))
    assert len(found) == 1 and "cluster.quorum: majority needs three or more nodes" in found[0], found


def test_without_own_address_skips_only_that_entry(key):
    config = cfg.parse(BASE.replace("{key}", key), "h.yaml")
    skipped, was_there = hostcheck.without_own_address(config, ipaddress.ip_address("192.0.2.11"))
    assert was_there and skipped.cluster.peers == (ipaddress.ip_address("192.0.2.12"),)
    same, was_there = hostcheck.without_own_address(skipped, ipaddress.ip_address("192.0.2.11"))
    assert not was_there and same is skipped
