"""The `balance:` section: every healthy PACS serves, the VIP holder balances.

Read like the rest of the configuration (hapacs.config): every problem is
reported at once as `FILE:LINE: balance.services[0].address: ...`. What
this release supports is mode `proxy` (HAProxy on every node, serving
where the VIP is) with `client_address: snat` or `transparent` (the PACS sees
the workstation's address, hapacs.transparent), and mode `direct` (direct
routing by the kernel, hapacs.nftdirect).

`workstations` (the networks the workstations are in) and
`outgoing_from_vip` (connections the PACS opens to them leave from the VIP)
belong to hapacs.transparent: both are IPv4 only and need every service on
one VIP, since the return route and the source address name one address.

Direct mode has rules of its own: the packets reach the member unchanged,
so `target_port` must equal `port`; the kernel spreads associations by a
hash of the workstation's address and port, so `schedule` and
`client_address` (the PACS always sees the workstation) are left out; and
the balancer learns that a member's PACS is down only from that node's
FAULT in its heartbeats, so each service names its `health` check, with
`weight: 0` (a failing check puts the node in FAULT).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .checktypes import DICOM_CHECK_TYPES
from .fields import (
    INVALID, Context, Section, boolean, choice, ip_address, list_of, name_text, number, port, shown,
)

MODES = ("proxy", "direct")
CLIENT_ADDRESSES = ("snat", "transparent")
SCHEDULES = ("leastconn", "source", "roundrobin")
DEFAULT_AGENT_PORT = 5406
DEFAULT_CHECK_INTERVAL_S = 2.0


@dataclass(frozen=True)
class MemberConfig:
    name: str | None                 # None: named after the node heard at this address
    address: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address   # one of the VIPs
    port: int                        # what workstations connect to
    target_port: int                 # the PACS port on every member
    schedule: str
    health: str | None               # a check of checks:, by which each member reports itself
    called_ae: str | None = None     # from the health check, when it is a DICOM one
    calling_ae: str = "HAPACS"


@dataclass(frozen=True)
class BalanceConfig:
    mode: str
    client_address: str
    members: tuple[MemberConfig, ...]   # empty: this node and every peer, at their cluster addresses
    services: tuple[ServiceConfig, ...]
    agent_port: int                     # where each node's agent answers HAProxy's agent-check
    check_interval_s: float             # HAProxy's own DICOM check of each member
    workstations: tuple[ipaddress.IPv4Network, ...] = ()   # routed via the VIP holder (hapacs.transparent)
    outgoing_from_vip: bool = False     # connections the PACS opens to the workstations leave from the VIP

    @property
    def transparent(self) -> bool:
        return self.mode == "proxy" and self.client_address == "transparent"

    @property
    def vip(self):
        """The one VIP of the services (transparent and outgoing_from_vip need exactly one)."""
        return self.services[0].address


def read(ctx: Context, sec: Section, vips, checks, peers) -> BalanceConfig | None:
    """The balance section, or None (with the problems recorded in ctx); `peers`: cluster.peers."""
    mode = sec.take("mode", choice(*MODES), default="proxy")
    client = sec.take("client_address", choice(*CLIENT_ADDRESSES), default="snat")
    members = sec.take("members", list_of(_member), default=())
    checks_by_name = {c.name: c for c in checks}
    services = sec.take("services", list_of(_service_reader(vips, checks_by_name, mode), min_items=1))
    agent_port = sec.take("agent_port", port, default=DEFAULT_AGENT_PORT)
    interval = sec.take("check_interval", number(0.1, 60.0), default=DEFAULT_CHECK_INTERVAL_S)
    workstations = sec.take("workstations", list_of(_network), default=())
    outgoing = sec.take("outgoing_from_vip", boolean, default=False)
    sec.done()
    if mode == "direct" and "client_address" in sec:
        sec.problem("client_address", "applies to mode proxy only; with direct routing the PACS always sees "
                    "the workstation's own address: leave client_address out")
    if INVALID not in (mode, client, services, workstations, outgoing):
        _routing_rules(sec, mode, client, services, workstations, outgoing)
        nodes = [m.address for m in members] if members not in ((), INVALID) else list(peers or ())
        _workstations_apart(sec, workstations, nodes + [s.address for s in services])
    if members == () and peers == ():     # None: cluster: is invalid, reported there
        sec.problem("members", "with multicast heartbeats (no cluster.peers) the members cannot be known in "
                    "advance: list every node here, such as members: [{name: pacs-a, address: 192.0.2.11}, ...]")
    if members is not INVALID:
        _unique(sec, "members", [str(m.address) for m in members], "address")
        _unique(sec, "members", [m.name for m in members if m.name], "name")
    if services is not INVALID:
        _unique(sec, "services", [s.name for s in services], "name")
        _unique(sec, "services", [f"{s.address} port {s.port}" for s in services], "address and port")
        if agent_port is not INVALID and any(s.port == agent_port for s in services):
            sec.problem("agent_port", f"{agent_port} is also a service port; give the agent-check its own port")
    if INVALID in (mode, client, members, services, agent_port, interval, workstations, outgoing):
        return None
    return BalanceConfig(mode, client, tuple(members), tuple(services), agent_port, interval,
                         tuple(workstations), outgoing)


def _routing_rules(sec: Section, mode, client, services, workstations, outgoing) -> None:
    """What client_address: transparent and outgoing_from_vip need (see the module's docstring)."""
    transparent = client == "transparent"
    if transparent and mode != "proxy":
        return          # client_address in mode direct: reported above
    if not (transparent or outgoing):
        if workstations:
            sec.problem("workstations", "is used only with client_address: transparent or outgoing_from_vip: "
                        "true; leave it out")
        return
    what = "client_address: transparent" if transparent else "outgoing_from_vip"
    key = "client_address" if transparent else "outgoing_from_vip"
    if outgoing and mode != "proxy":
        sec.problem("outgoing_from_vip", "applies to mode proxy only; leave it out with mode direct")
    if not workstations:
        sec.problem(key, f"{what} needs workstations: the networks the workstations are in, such as "
                    "workstations: [198.51.100.0/24] (the members reach them through the VIP's holder)")
    if any(s.address.version != 4 for s in services):
        sec.problem(key, f"{what} supports IPv4 services only in this release")
    elif len({s.address for s in services}) > 1:
        sec.problem(key, f"{what} needs every service on one VIP (the members' return route and the source "
                    f"address name one address), not {', '.join(sorted({str(s.address) for s in services}))}")


def _workstations_apart(sec: Section, workstations, addresses) -> None:
    """The nodes and the VIP are never routed via the VIP: heartbeats between two nodes would then
    pass a third, and go when it does."""
    for index, network in enumerate(workstations):
        inside = sorted({str(a) for a in addresses if a.version == 4 and a in network})
        if inside:
            sec.problem(f"workstations[{index}]", f"{network} contains {', '.join(inside)} (a node or the VIP); "
                        "list only the workstations' networks (a workstation on the nodes' subnet as a /32)",
                        line=sec.item_line("workstations", index))


def _network(ctx: Context, located, path: str):
    if located.kind != "scalar":
        return ctx.bad(located, path, f"must be an IPv4 network such as 198.51.100.0/24, not {shown(located)}")
    try:
        value = ipaddress.ip_network(str(located.value))
    except ValueError:
        return ctx.bad(located, path, f"{located.value!r} is not an IPv4 network (such as 198.51.100.0/24 or "
                       "198.51.100.7/32; host bits must be zero)")
    if value.version != 4:
        return ctx.bad(located, path, f"{value} is IPv6; workstations supports IPv4 networks only in this release")
    return value


def _unique(sec: Section, key: str, values: list[str], what: str) -> None:
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            sec.problem(key, f"{value} is given twice; each entry needs its own {what}",
                        line=sec.item_line(key, index))
        seen.add(value)


def _member(ctx: Context, located, path: str):
    sec = Section(ctx, located, path)
    name = sec.take("name", name_text, default=None)
    address = sec.take("address", ip_address)
    sec.done()
    if INVALID in (name, address):
        return INVALID
    return MemberConfig(name, address)


def _direct_rules(sec: Section, front, target, check) -> bool:
    """Mode direct's rules for one service (see the module's docstring); False when one is broken."""
    ok = True
    if INVALID not in (front, target) and target != front:
        sec.problem("target_port", f"{target} differs from port {front}: direct routing delivers the packets "
                    "unchanged, so each member's PACS must listen on the service's own port (leave target_port "
                    "out, or give it equal to port)")
        ok = False
    if "schedule" in sec:
        sec.problem("schedule", "direct routing spreads associations by a hash of the workstation's address and "
                    "port (no leastconn, source or roundrobin in the kernel): leave schedule out")
        ok = False
    if "health" not in sec:
        sec.problem("health", "mode direct needs the check by which each member reports its PACS (a member's "
                    "PACS is known down only through its node's FAULT), such as health: pacs-dicom")
        ok = False
    elif check is not None and check.weight != 0:
        sec.problem("health", f"check {check.name!r} has weight {check.weight}: in mode direct it must have "
                    "weight: 0, so that a failing PACS puts its node in FAULT and its buckets move")
        ok = False
    return ok


def _service_reader(vips, checks_by_name, mode):
    vip_addresses = {v.address.ip for v in vips}

    def one(ctx: Context, located, path: str):
        sec = Section(ctx, located, path)
        name = sec.take("name", name_text)
        address = sec.take("address", ip_address)
        front = sec.take("port", port, default=104)
        target = sec.take("target_port", port, default=front if front is not INVALID else 104)
        schedule = sec.take("schedule", choice(*SCHEDULES), default="leastconn")
        health = sec.take("health", name_text, default=None)
        sec.done()
        if address is not INVALID and vip_addresses and address not in vip_addresses:
            listed = ", ".join(str(a) for a in sorted(vip_addresses, key=str))
            sec.problem("address", f"{address} is not one of the VIPs ({listed}); a service is served on a VIP")
            address = INVALID
        check = checks_by_name.get(health) if health not in (None, INVALID) else None
        if health not in (None, INVALID) and check is None:
            known = ", ".join(checks_by_name) or "none configured"
            sec.problem("health", f"no check named {health!r} in checks: (known: {known})")
            health = INVALID
        if mode == "direct" and not _direct_rules(sec, front, target, check):
            return INVALID
        if INVALID in (name, address, front, target, schedule, health):
            return INVALID
        dicom = check is not None and check.type in DICOM_CHECK_TYPES
        return ServiceConfig(name, address, front, target, schedule, health,
                             check.called_ae if dicom else None, check.calling_ae if dicom else "HAPACS")
    return one

