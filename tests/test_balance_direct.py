"""Direct routing without namespaces: the `mode: direct` rules of the balance section, who is
alive for the bucket map, the table each node loads, what a member host needs (VIP on lo,
ARP sysctls), the status table, and drain (refused where it cannot work, the tables of a drained
member)."""

from __future__ import annotations

import dataclasses
import ipaddress
from types import SimpleNamespace

import pytest

from hapacs import config as cfg, directdrain, directhost, sysctl
from hapacs.balancer import members_of
from hapacs.buckets import BUCKETS
from hapacs.directbalancer import DirectBalancer, alive_members, service_rules
from hapacs.hostcheck import HostFacts
from hapacs.model import PeerView
from hapacs.netlink import INFINITE_LIFETIME
from hapacs.reload import restart_needed
from hapacs.states import State
from hapacs.status import balance_lines

from .fixtures import config_problems, drain_command, load_config

BASE = """\
node: {{name: pacs-a}}
cluster:
  interface: eth0
  peers: [192.0.2.12, 192.0.2.13]
  auth_key_file: {key}
vips:
  - address: 192.0.2.100/24
checks:
  - {{name: pacs-dicom, type: dicom-echo, port: 104, called_ae: PACS}}
  - {{name: soft, type: tcp, host: 127.0.0.1, port: 104, weight: -50}}
balance:
  mode: direct
{services}"""

SERVICE = """\
  services:
    - name: dicom
      address: 192.0.2.100
      port: 104
      health: pacs-dicom
"""


def load(tmp_path, key, services: str = SERVICE) -> cfg.Config:
    return load_config(tmp_path, BASE.format(key=key, services=services))


def test_a_direct_service_is_accepted_with_target_port_equal_to_port(tmp_path, key):
    balance = load(tmp_path, key).balance
    assert balance.mode == "direct" and balance.services[0].target_port == 104
    assert load(tmp_path, key, SERVICE + "      target_port: 104\n").balance.services[0].target_port == 104


BROKEN = [
    (SERVICE + "      target_port: 11112\n", 18, "balance.services[0].target_port",
     "11112 differs from port 104: direct routing delivers the packets unchanged, so each member's PACS must "
     "listen on the service's own port"),
    (SERVICE + "      schedule: leastconn\n", 18, "balance.services[0].schedule",
     "direct routing spreads associations by a hash of the workstation's address and port"),
    (SERVICE.replace("      health: pacs-dicom\n", ""), 14, "balance.services[0].health",
     "mode direct needs the check by which each member reports its PACS"),
    (SERVICE.replace("pacs-dicom", "soft"), 17, "balance.services[0].health",
     "check 'soft' has weight -50: in mode direct it must have weight: 0"),
    ("  client_address: snat\n" + SERVICE, 13, "balance.client_address",
     "applies to mode proxy only; with direct routing the PACS always sees the workstation's own address"),
]


@pytest.mark.parametrize("services, line, key_path, message", BROKEN, ids=[b[2] + str(i) for i, b in enumerate(BROKEN)])
def test_every_direct_mode_mistake_is_a_config_error_with_its_line(tmp_path, key, services, line, key_path, message):
    found = config_problems(tmp_path, BASE.format(key=key, services=services))
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path}/hapacs.yaml:{line}: {key_path}: "), found
    assert message in found[0], found


def test_a_handover_does_not_wait_for_the_associations_that_carry_on_through_the_next_balancer(tmp_path, key):
    vip, other = ipaddress.ip_address("192.0.2.100"), ipaddress.ip_address("192.0.2.101")
    assert load(tmp_path, key).drain_targets == ()
    # a service on another port: the check's port 104 on the VIP is drained, the service's 105 is not
    assert load(tmp_path, key, SERVICE.replace("port: 104", "port: 105")).drain_targets == ((vip, 104),)
    # a second VIP that is not balanced keeps its drain and hold on the same port
    two_vips = BASE.format(key=key, services=SERVICE).replace(
        "  - address: 192.0.2.100/24\n", "  - address: 192.0.2.100/24\n  - address: 192.0.2.101/24\n")
    assert load_config(tmp_path, two_vips).drain_targets == ((other, 104),)
    # mode proxy drains every VIP on the checks' and services' ports
    proxy = two_vips.replace("mode: direct", "mode: proxy").replace(
        "      port: 104\n", "      port: 104\n      target_port: 11112\n")
    assert load_config(tmp_path, proxy).drain_targets == ((vip, 104), (other, 104))


def test_changing_the_mode_needs_a_restart(tmp_path, key):
    direct = load(tmp_path, key)
    proxy = BASE.format(key=key, services=SERVICE).replace("mode: direct", "mode: proxy")
    assert "balance.mode" in restart_needed(direct, load_config(tmp_path, proxy, "proxy.yaml"))


def peer(address: str, state: State, up: bool = True) -> PeerView:
    return PeerView("p" + address[-2:], ipaddress.ip_address(address).packed, state, 100, 0.1, up, False)


def view(state: State, *peers: PeerView):
    return SimpleNamespace(state=state, peers=peers)


def test_a_member_is_alive_while_heard_and_backup_or_master():
    peers = (peer("192.0.2.12", State.MASTER), peer("192.0.2.13", State.FAULT), peer("192.0.2.14", State.BACKUP,
                                                                                       up=False))
    assert alive_members(view(State.BACKUP, *peers), "192.0.2.11") == {"192.0.2.11", "192.0.2.12"}
    assert alive_members(view(State.FAULT, *peers), "192.0.2.11") == {"192.0.2.12"}
    assert alive_members(view(State.INIT), "192.0.2.11") == set()


def test_every_node_loads_tables_that_agree(tmp_path, key):
    config = load(tmp_path, key)
    alive = {"192.0.2.11", "192.0.2.13"}           # 192.0.2.12 is dead
    tables = {}
    for own in ("192.0.2.11", "192.0.2.12", "192.0.2.13"):
        # each node's own config lists the others as peers: this node and its peers are the three
        peers = tuple(ipaddress.ip_address(a) for a in ("192.0.2.11", "192.0.2.12", "192.0.2.13") if a != own)
        node_config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, peers=peers))
        members = members_of(node_config, ipaddress.ip_address(own))
        assert sorted(m.server for m in members) == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
        (rules,) = service_rules(config, members, alive, own)
        assert (rules.device, rules.port, str(rules.address)) == ("eth0", 104, "192.0.2.100")
        tables[own] = rules
    served = {own: set(r.local) for own, r in tables.items()}
    # the living serve every bucket between them, each bucket once; a forward lands where it is served
    assert served["192.0.2.11"] | served["192.0.2.13"] == set(range(BUCKETS))
    assert not served["192.0.2.11"] & served["192.0.2.13"]
    for own in alive:
        assert all(bucket in served[member] for bucket, member in tables[own].forward)


def facts(lo: list[str]) -> HostFacts:
    def address(text):
        return SimpleNamespace(interface=ipaddress.ip_interface(text), valid_lft=INFINITE_LIFETIME)
    return HostFacts({"lo": tuple(address(a) for a in ["127.0.0.1/8", *lo]),
                      "eth0": (address("192.0.2.11/24"),)})


def sysctls(monkeypatch, tmp_path, values: dict[tuple[str, str], int]):
    for (where, name), value in values.items():
        (tmp_path / "ipv4" / "conf" / where).mkdir(parents=True, exist_ok=True)
        (tmp_path / "ipv4" / "conf" / where / name).write_text(f"{value}\n")
    monkeypatch.setattr(sysctl, "ROOT", str(tmp_path))


def member_problems(config, lo) -> list[tuple[str, str]]:
    found = []
    directhost.problems(config, facts(lo), lambda key, message: found.append((key, message)))
    return found


def test_a_member_needs_the_vip_on_lo_and_the_arp_sysctls(tmp_path, key, monkeypatch):
    config = load(tmp_path, key)
    good = {("all", "arp_ignore"): 0, ("eth0", "arp_ignore"): 1, ("all", "arp_announce"): 2,
            ("eth0", "arp_announce"): 0}
    sysctls(monkeypatch, tmp_path / "sys", good)
    assert member_problems(config, ["192.0.2.100/32"]) == []
    assert directhost.on_loopback(config, ipaddress.ip_address("192.0.2.100"), "lo")
    (missing,) = member_problems(config, [])
    assert missing == ("balance.services[0].address", "mode direct: 192.0.2.100 is not on lo on this host; every "
                       "member carries the VIP there: ip address add 192.0.2.100/32 dev lo (and in the host's "
                       "network configuration, so it stays after a reboot)")
    # a node that is not among the listed members only balances: it needs none of it
    listed = dataclasses.replace(config, balance=dataclasses.replace(config.balance, members=(
        SimpleNamespace(address=ipaddress.ip_address("192.0.2.12")),)))
    assert member_problems(listed, []) == []
    listed = dataclasses.replace(listed, balance=dataclasses.replace(listed.balance, members=(
        SimpleNamespace(address=ipaddress.ip_address("192.0.2.11")),)))
    assert [key for key, _ in member_problems(listed, [])] == ["balance.services[0].address"]
    sysctls(monkeypatch, tmp_path / "sys", {**good, ("eth0", "arp_ignore"): 0, ("all", "arp_announce"): 1})
    found = [message for _, message in member_problems(config, ["192.0.2.100/32"])]
    assert found == [
        "mode direct: net.ipv4.conf.eth0.arp_ignore is 0 on this host (the larger of all and eth0); a member must "
        "have 1 or 2: sysctl -w net.ipv4.conf.eth0.arp_ignore=2 (and in /etc/sysctl.d)",
        "mode direct: net.ipv4.conf.eth0.arp_announce is 1 on this host (the larger of all and eth0); a member "
        "must have 2: sysctl -w net.ipv4.conf.eth0.arp_announce=2 (and in /etc/sysctl.d)"]


def test_status_shows_buckets():
    balance = {"mode": "direct", "active": False, "drain": False, "services": [
        {"name": "dicom", "address": "192.0.2.100", "port": 104, "active": False, "members": [
            {"name": "pacs-a", "address": "192.0.2.11", "state": "up", "buckets": 64, "associations": None,
             "total": None},
            {"name": "pacs-b", "address": "192.0.2.12", "state": "down", "buckets": 0, "associations": None,
             "total": None}]}]}
    lines = balance_lines(balance)
    assert lines[1] == "balancing (direct): standby, same bucket map loaded"
    assert lines[2].split() == ["SERVICE", "MEMBER", "ADDRESS", "STATE", "BUCKETS"]
    assert lines[4].split() == ["dicom", "192.0.2.100:104", "pacs-b", "192.0.2.12", "down", "0"]


def direct_balancer(config, own: str, alive: set[str]) -> DirectBalancer:
    """A DirectBalancer with what `hapacs drain` looks at: its config, members and who is alive."""
    balancer = DirectBalancer.__new__(DirectBalancer)
    balancer.config, balancer.own, balancer.alive, balancer.drained = config, own, alive, False
    balancer.members = members_of(config, ipaddress.ip_address(own))
    return balancer


def drain(balancer: DirectBalancer, on: bool = True) -> dict:
    return drain_command(SimpleNamespace(balancer=balancer), on)


def test_drain_is_refused_where_it_cannot_work_and_says_why(tmp_path, key, monkeypatch):
    config = load(tmp_path, key)
    alone = direct_balancer(config, "192.0.2.11", {"192.0.2.11"})
    assert drain(alone) == {"ok": False, "message": "refused: no other member is up to take the new associations"}
    listed = load(tmp_path, key, SERVICE + "  members: [{address: 192.0.2.12}, {address: 192.0.2.13}]\n")
    outside = direct_balancer(listed, "192.0.2.11", {"192.0.2.12", "192.0.2.13"})
    assert drain(outside)["message"].startswith("refused: this node is no member of the balance")
    monkeypatch.setattr(directdrain, "listening_on", lambda address, port: (address, port) == ("192.0.2.100", 104))
    bound = direct_balancer(config, "192.0.2.11", {"192.0.2.11", "192.0.2.12"})
    assert drain(bound)["message"] == (
        "refused: the PACS listens on 192.0.2.100 port 104 itself: a drain tells its open associations from "
        "new ones only when the PACS listens on every address (0.0.0.0 or ::)")
    assert not bound.drained


def test_drain_on_and_off_with_another_member_up(tmp_path, key):
    balancer = direct_balancer(load(tmp_path, key), "192.0.2.11", {"192.0.2.11", "192.0.2.12"})
    assert drain(balancer)["message"].startswith("drain on: this node's PACS takes no new association")
    assert balancer.drained and drain(balancer)["message"] == "drain was already on"
    assert drain(balancer, False)["message"] == "drain off: this node's PACS takes new associations again"
    assert not balancer.drained


def test_listening_on_tells_a_listener_on_one_address_from_one_on_every_address():
    import socket
    with socket.socket() as one, socket.socket() as every:
        one.bind(("127.0.0.1", 0))
        one.listen()
        every.bind(("0.0.0.0", 0))
        every.listen()
        assert directdrain.listening_on("127.0.0.1", one.getsockname()[1])
        assert not directdrain.listening_on("127.0.0.1", every.getsockname()[1])


def test_established_counts_the_connections_to_the_drained_endpoints_only():
    import socket

    from hapacs.drain import established
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)), listener.accept()[0]:
            assert established({("127.0.0.1", port)}) == 1     # the accepted side; the listener is not counted
            assert established({("127.0.0.1", port + 1), ("192.0.2.100", port)}) == 0


def test_a_member_passes_on_what_it_does_not_take_and_every_node_knows_the_members_macs(tmp_path, key):
    config = load(tmp_path, key)
    members = members_of(config, ipaddress.ip_address("192.0.2.11"))
    alive = {"192.0.2.11", "192.0.2.12", "192.0.2.13"}
    macs = {"192.0.2.12": "02:00:00:00:00:12", "192.0.2.13": "02:00:00:00:00:13"}
    rules = service_rules(config, members, alive, "192.0.2.11", drained=True, macs=macs)[0]
    # each bucket pacs-a serves goes, for new associations, to the member that serves it were pacs-a dead
    assert rules.drained and {b for b, _ in rules.pass_to} == set(rules.local) and len(rules.local) in (21, 22)
    assert {m for _, m in rules.pass_to} == {"192.0.2.12", "192.0.2.13"}
    # what a member passes on of its own buckets is served here (by its MAC), never sent back
    assert dict(rules.passed_on) == {mac: tuple(b for b, m in rules.forward if m == address)
                                     for address, mac in macs.items()}
    undrained = service_rules(config, members, alive, "192.0.2.11", macs={})[0]
    assert (undrained.drained, undrained.pass_to, undrained.passed_on) == (False, rules.pass_to, ())
    # not alive (its PACS gone, the others already know): the buckets it still serves itself because
    # it comes before their owner go on to that owner
    gone = service_rules(config, members, alive - {"192.0.2.11"}, "192.0.2.11")[0]
    assert gone.pass_to and dict(gone.pass_to) == {b: m for b, m in gone.pass_to if m in alive - {"192.0.2.11"}}
    assert {b for b, _ in gone.pass_to} == set(gone.local)
    # a node that only balances takes no bucket, so it passes nothing on
    listed = load(tmp_path, key, SERVICE + "  members: [{address: 192.0.2.12}, {address: 192.0.2.13}]\n")
    balancer_only = members_of(listed, ipaddress.ip_address("192.0.2.11"))
    assert service_rules(listed, balancer_only, alive, "192.0.2.11")[0].pass_to == ()


def test_netlink_refusing_the_neighbour_table_is_an_oserror_which_the_table_loop_catches(monkeypatch):
    from pyroute2.netlink.exceptions import NetlinkError

    class Refusing:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def get_neighbours(self):
            raise NetlinkError(1, "Operation not permitted")

    monkeypatch.setattr(directdrain, "IPRoute", Refusing)
    with pytest.raises(OSError, match="netlink refuses the neighbour table dump"):
        directdrain.neighbour_macs(["192.0.2.12"])
