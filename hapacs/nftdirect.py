"""The nftables adapter of direct-routing balancing (`balance: mode: direct`).

One netdev table, `hapacs_direct`, with one ingress chain per interface that
carries a balanced VIP. For each service, packets to VIP:port are hashed
(`jhash` of the client's address and port, BUCKETS buckets, a pinned seed)
and each bucket is either accepted here (this node's own PACS serves it) or
sent unchanged to a member's MAC address with `fwd ... device`: the member
has the VIP on `lo`, answers the workstation directly (replies never pass
through the balancer) and sees the workstation's own address. The kernel
keeps no state per association, which is what lets associations held through
one balancer carry on through the next: every node loads the same table
from the same facts (hapacs.buckets), and the SEED below never changes.

The table is written whole and loaded in one `nft -f -` transaction (the
old table deleted and the new one created atomically, through
hapacs.nftcommand), so a change of the map never leaves a moment without
rules.

Passing on what a member cannot serve. Every member has a second table
(`ip`/`ip6` hapacs_direct_pass, at prerouting, where the kernel's socket
lookup works). A packet of its buckets that finds a socket here is served
here; any other packet goes on, unchanged, to the member that would serve
the bucket without this one (`dup to ... device`, then drop). While its PACS
listens, every packet finds a socket (the listener, an open or a closing
association), so nothing changes; when its PACS is gone, new associations
go on to the next member at once, before the health check has seen it. A
drained member (`hapacs drain on`) accepts only its open associations
(`socket wildcard 0`: an established socket bound to the VIP; the PACS's
listener on every address has wildcard 1), so new SYNs, and every later
packet of an association that began elsewhere, go on. The map does not
change, so no open association moves. So that the next member does not send
such a packet back: every node accepts a bucket's packets that come from the
MAC address of the member serving that bucket (that member never sends its
own buckets on otherwise), before the `fwd` rule.

nft 1.0.6 details this relies on: `fwd ip to EXPR map {...} device "IF"`
must name the device; an anonymous map or set may not be empty (a rule
whose set would be empty is left out); a bucket in no map falls through to
the chain's `accept` policy, that is to this node's own stack.

What it must never do: decide anything. It renders what it is given and
reports nft's answer word for word.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import nftcommand
from .buckets import BUCKETS

TABLE = "hapacs_direct"
PASS_TABLE = "hapacs_direct_pass"
# Pinned: a balancer that takes over must hash every packet to the same bucket as the one before it.
# Changing it in a new release moves live associations on the upgrade's first failover.
SEED = 0x7


@dataclass(frozen=True)
class ServiceRules:
    """One balanced service as the kernel sees it on this node."""

    name: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    device: str                              # where the VIP's packets arrive and where members are reached
    local: tuple[int, ...]                   # buckets this node's own PACS serves
    forward: tuple[tuple[int, str], ...]     # (bucket, member address) pairs sent on
    # (MAC address, buckets): packets of those buckets that come from the member serving them are
    # its drain passing them on: served here, never sent back
    passed_on: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # (bucket, member address): where this member passes packets of its buckets it does not take
    pass_to: tuple[tuple[int, str], ...] = ()
    drained: bool = False                    # takes only the packets of its open associations


def _hash(family: str) -> str:
    return f"jhash {family} saddr . tcp sport mod {BUCKETS} seed {SEED:#x}"


def _match(service: ServiceRules) -> tuple[str, str]:
    """The service's address family in nft's words, and the match of its packets (VIP and port)."""
    family = "ip" if service.address.version == 4 else "ip6"
    return family, f"{family} daddr {service.address} tcp dport {service.port}"


def _rules(service: ServiceRules) -> list[str]:
    family, match = _match(service)
    lines = [f"# service {service.name}"]
    for mac, buckets in service.passed_on:
        lines.append(f"{match} ether saddr {mac} {_hash(family)} {{ {', '.join(str(b) for b in buckets)} }} accept")
    if service.local:
        lines.append(f"{match} {_hash(family)} {{ {', '.join(str(b) for b in service.local)} }} accept")
    if service.forward:
        pairs = ", ".join(f"{bucket} : {member}" for bucket, member in service.forward)
        lines.append(f'{match} fwd {family} to {_hash(family)} map {{ {pairs} }} device "{service.device}"')
    return lines


def _pass_rules(service: ServiceRules) -> list[str]:
    family, match = _match(service)
    buckets = ", ".join(str(b) for b, _ in service.pass_to)
    pairs = ", ".join(f"{bucket} : {member}" for bucket, member in service.pass_to)
    if service.drained:
        taken = [f"# service {service.name}: drained, only its open associations", f"{match} socket wildcard 0 accept"]
    else:
        taken = [f"# service {service.name}: whatever a socket here takes",
                 f"{match} socket transparent 0 accept", f"{match} socket transparent 1 accept"]
    return taken + [f'{match} {_hash(family)} {{ {buckets} }} dup to {_hash(family)} map {{ {pairs} }} '
                    f'device "{service.device}" drop']


def render_pass(services: list[ServiceRules]) -> str:
    """The pass-on tables (one per address family with a service that passes buckets on); ""
    when none."""
    out = []
    for family, version in (("ip", 4), ("ip6", 6)):
        passing = [s for s in services if s.pass_to and s.address.version == version]
        if passing:
            out += [f"table {family} {PASS_TABLE} {{", "\tchain prerouting {",
                    "\t\ttype filter hook prerouting priority -150; policy accept;"]
            out += [f"\t\t{line}" for s in passing for line in _pass_rules(s)]
            out += ["\t}", "}"]
    return "\n".join(out) + "\n" if out else ""


def render(services: list[ServiceRules]) -> str:
    """The table, as `nft -f` reads it (without the lines that delete the old one)."""
    devices = list(dict.fromkeys(s.device for s in services))
    out = [f"table netdev {TABLE} {{"]
    for index, device in enumerate(devices):
        out += [f"\tchain ingress{index} {{",
                f'\t\ttype filter hook ingress device "{device}" priority 0; policy accept;']
        out += [f"\t\t{line}" for s in services if s.device == device for line in _rules(s)]
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def _replace(text: str) -> str:
    """Delete the old tables and load the new ones in one transaction (`table` first, so the
    delete never fails on a host that has none yet)."""
    old = [("netdev", TABLE), ("ip", PASS_TABLE), ("ip6", PASS_TABLE)]
    return "".join(f"table {family} {name}\ndelete table {family} {name}\n" for family, name in old) + text


async def _load(args: list[str], text: str) -> None:
    await nftcommand.load(args, text, needed_by="direct mode")


def _tables(services: list[ServiceRules]) -> str:
    return _replace(render(services) + render_pass(services))


async def check(services: list[ServiceRules]) -> None:
    """NftError unless the kernel would take the table (`nft -c`: nothing is changed)."""
    await _load(["-c", "-f", "-"], _tables(services))


async def apply(services: list[ServiceRules]) -> None:
    """Load the table, replacing the one before in the same transaction."""
    await _load(["-f", "-"], _tables(services))


async def remove() -> None:
    """Delete the tables (and nothing else); no table is not an error."""
    await _load(["-f", "-"], _replace(""))
