"""What proxy mode needs from the host for `client_address: transparent` and `outgoing_from_vip`.

Transparent: HAProxy connects to each member's PACS from the workstation's
own address (`source 0.0.0.0 usesrc clientip`, hapacs.haproxy), so the PACS
sees the workstation. The members' answers are addressed to the workstation;
they must come back to the HAProxy that holds the connection:

- a remote member's answers reach the VIP holder by routing: every node that
  does not hold the VIP routes the `workstations` networks via the VIP
  (table RETURN_TABLE, looked up for those networks only, by ip rules at
  RETURN_RULE_PRIORITY; the table is emptied on the node that holds the VIP,
  whose own routes then apply). A route via the VIP cannot be left to the
  operator: a node that gains the VIP keeps sending to the old holder's MAC;
- on the VIP holder, a packet for one of HAProxy's transparent sockets is
  taken in locally: nftables marks it (`socket transparent 1`, prerouting) and
  `ip rule fwmark MARK lookup LOCAL_TABLE` finds `local 0.0.0.0/0 dev lo`;
- the holder's own PACS answers HAProxy on the same host: such an answer
  never passes prerouting, so the output chain marks HAProxy's connections
  (conntrack mark) and reroutes their answers through LOCAL_TABLE too.

Outgoing from the VIP: connections the PACS opens itself (a C-MOVE's C-STORE
sub-associations) leave from the member's own address. While this node holds
the VIP, new TCP connections from a member's address to the workstations'
networks (not to a member) are SNATed to the VIP: this node's own, and the
other members' when their route to the workstations passes this node (always
with `transparent`; with `snat`, only if the operator routes so). A member
cannot send from the VIP by itself: answers to the VIP reach the holder only.

Everything lives in hapacs's own nftables table `ip hapacs_proxy`, its own
two routing tables and its own rules, created at start and removed at stop;
no other table, rule or route is touched. The numbers are fixed (104, the
DICOM port, and 105); a host that already uses them must change its own.

What it must never do: decide anything. It renders and applies the plan it is
given and reports the kernel's refusal word for word.
"""

from __future__ import annotations

import errno
import ipaddress
import shutil
import socket
from dataclasses import dataclass

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import nftcommand, sysctl
from .nftcommand import NftError

NFT_TABLE = "hapacs_proxy"
MARK = 104                     # fwmark and conntrack mark of HAProxy's transparent connections
LOCAL_TABLE = 104              # local 0.0.0.0/0 dev lo: marked packets are taken in here
MARK_RULE_PRIORITY = 104
RETURN_TABLE = 105             # the workstations' networks via the VIP, on nodes not holding it
RETURN_RULE_PRIORITY = 105
NEEDED_BY = "client_address: transparent or outgoing_from_vip"


class RoutingError(Exception):
    """nft or netlink refused part of the setup; the message says which."""


@dataclass(frozen=True)
class Plan:
    """What this host should carry now."""

    transparent: bool
    outgoing_from_vip: bool
    vip: ipaddress.IPv4Address
    workstations: tuple[ipaddress.IPv4Network, ...]
    members: tuple[str, ...]        # every member's address, this node's included
    vip_here: bool


def plan_for(balance, members: tuple[str, ...], vip_here: bool) -> Plan | None:
    """The plan for a balance section, or None when it needs nothing from the host."""
    if balance is None or balance.mode != "proxy" or not (balance.transparent or balance.outgoing_from_vip):
        return None
    ipv4 = tuple(m for m in members if ipaddress.ip_address(m).version == 4)   # the VIP is IPv4
    return Plan(balance.transparent, balance.outgoing_from_vip, balance.vip, balance.workstations, ipv4, vip_here)


def render(plan: Plan) -> str:
    """The nftables table for the plan (without the lines that replace the old one)."""
    members = ", ".join(plan.members)
    networks = ", ".join(str(n) for n in plan.workstations)
    out = [f"table ip {NFT_TABLE} {{"]
    if plan.transparent:
        out += ["\tchain prerouting {",
                "\t\ttype filter hook prerouting priority mangle; policy accept;",
                "\t\t# answers for HAProxy's connections made from a workstation's address: taken in here",
                f"\t\tmeta l4proto tcp socket transparent 1 meta mark set {MARK}",
                "\t}",
                "\tchain output {",
                "\t\ttype route hook output priority mangle; policy accept;",
                "\t\t# HAProxy opening a connection from a workstation's address (not its listener's answers)",
                f"\t\tmeta l4proto tcp ct direction original socket transparent 1 ct mark set {MARK}",
                "\t\t# this node's own PACS answering one of them: back to HAProxy, on this host",
                f"\t\tmeta l4proto tcp ct direction reply ct mark {MARK} meta mark set {MARK}",
                "\t}"]
    if plan.outgoing_from_vip and plan.vip_here and plan.members:
        out += ["\tchain postrouting {",
                "\t\ttype nat hook postrouting priority srcnat; policy accept;",
                "\t\t# connections the members' PACS open to the workstations leave from the VIP (a first SYN:",
                "\t\t# not the answer of a connection that reached a member without passing here)",
                f"\t\ttcp flags & (syn | ack) == syn ip saddr {{ {members} }} ip daddr != {{ {members} }} "
                f"ip daddr {{ {networks} }} snat ip to {plan.vip}",
                "\t}"]
    out.append("}")
    return "\n".join(out) + "\n"


def _replace(text: str) -> str:
    """Delete the old table and load `text` in one transaction (`table` first, so the delete
    never fails on a host that has none yet)."""
    return f"table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n{text}"


async def _load(args: list[str], table: str) -> None:
    """nft takes `table` in place of the old one (RoutingError naming the table when it does not)."""
    try:
        await nftcommand.load(args, _replace(table), needed_by=NEEDED_BY)
    except NftError as err:
        raise RoutingError(f"{err} (table ip {NFT_TABLE})") from None


def problems(config, problem) -> None:
    """What keeps this host from carrying the plan (for hostcheck: run, reload and check-config).
    It only reads the host."""
    balance = config.balance
    if plan_for(balance, (), False) is None:
        return
    key = "balance.client_address" if balance.transparent else "balance.outgoing_from_vip"
    if shutil.which(nftcommand.NFT) is None:
        problem(key, nftcommand.NEEDS_NFT)
    if not balance.transparent:
        return
    # The VIP holder forwards the other members' own connections to the workstations (C-MOVE
    # sub-associations); an ICMP redirect would send a member around it, answers of balanced
    # associations included, so the holder must not send any (the kernel sends if all OR the interface says so).
    interface = next((v.interface for v in config.vips if v.address.ip == balance.vip), config.cluster.interface)
    if sysctl.read("ipv4/ip_forward") == 0:
        problem(key, "transparent: this node must forward the other members' connections to the workstations "
                "when it holds the VIP (C-MOVE sub-associations): sysctl -w net.ipv4.ip_forward=1 (and in "
                "/etc/sysctl.d)")
    sending = [where for where in ("all", interface) if sysctl.read(f"ipv4/conf/{where}/send_redirects") == 1]
    if sending:
        problem(key, "transparent: ICMP redirects would send the members around the VIP holder: " + "; ".join(
            f"sysctl -w net.ipv4.conf.{where}.send_redirects=0" for where in sending) + " (and in /etc/sysctl.d)")


class HostRouting:
    """Applies plans to this host (its own network namespace) and removes them."""

    def __init__(self) -> None:
        self.applied: Plan | None = None

    async def check(self, plan: Plan) -> None:
        """RoutingError unless nft would take the plan's table (nothing is changed)."""
        await _load(["-c", "-f", "-"], render(plan))

    async def apply(self, plan: Plan) -> None:
        """Bring the host to `plan`: the nft table in one transaction, then rules and routes."""
        if plan == self.applied:
            return
        await _load(["-f", "-"], render(plan))
        before = self.applied
        self.applied = None     # until all of it is in place
        same_rules = before is not None and (before.transparent, before.workstations) == \
            (plan.transparent, plan.workstations)
        async with AsyncIPRoute() as ipr:
            if not same_rules:      # a VIP that moves changes the return routes only
                await self._rules(ipr, plan)
                await self._local_table(ipr, plan)
            await self._return_table(ipr, plan)
        self.applied = plan

    async def remove(self) -> None:
        """Remove everything hapacs set up here; what is not there is not an error. The two routing
        tables are emptied only if hapacs's rules were there (or it set them up itself): a host where
        hapacs never ran transparent keeps whatever its tables 104 and 105 hold."""
        ours, self.applied = self.applied is not None, None
        try:
            await nftcommand.load(["-f", "-"], _replace(""), needed_by=NEEDED_BY)
        except NftError as err:
            raise RoutingError(f"cannot remove table ip {NFT_TABLE}: {err}") from None
        async with AsyncIPRoute() as ipr:
            if await _flush_rules(ipr) or ours:
                for table in (LOCAL_TABLE, RETURN_TABLE):
                    await _flush_table(ipr, table)

    async def _rules(self, ipr, plan: Plan) -> None:
        await _flush_rules(ipr)
        if not plan.transparent:
            return
        await _netlink(f"rule fwmark {MARK} lookup {LOCAL_TABLE}", ipr.rule(
            "add", family=socket.AF_INET, fwmark=MARK, table=LOCAL_TABLE, priority=MARK_RULE_PRIORITY))
        for network in plan.workstations:
            await _netlink(f"rule to {network} lookup {RETURN_TABLE}", ipr.rule(
                "add", family=socket.AF_INET, dst=str(network.network_address), dst_len=network.prefixlen,
                table=RETURN_TABLE, priority=RETURN_RULE_PRIORITY))

    async def _local_table(self, ipr, plan: Plan) -> None:
        await _flush_table(ipr, LOCAL_TABLE)
        if plan.transparent:
            lo = (await _netlink("link lo", ipr.link_lookup(ifname="lo")))[0]
            await _netlink(f"route local 0.0.0.0/0 dev lo (table {LOCAL_TABLE})", ipr.route(
                "add", dst="0.0.0.0/0", type="local", oif=lo, table=LOCAL_TABLE, scope=254))

    async def _return_table(self, ipr, plan: Plan) -> None:
        await _flush_table(ipr, RETURN_TABLE)
        if plan.transparent and not plan.vip_here:
            for network in plan.workstations:
                await _netlink(f"route {network} via {plan.vip} (table {RETURN_TABLE})", ipr.route(
                    "add", dst=str(network), gateway=str(plan.vip), table=RETURN_TABLE))


async def _netlink(what: str, request):
    """One netlink request; RoutingError naming it and the kernel's answer when it is refused."""
    try:
        return await request
    except NetlinkError as err:
        raise RoutingError(f"netlink refuses {what}: {err.args[1] if len(err.args) > 1 else err} "
                           f"(errno {err.code})") from None
    except OSError as err:
        raise RoutingError(f"netlink cannot be asked for {what}: {err.strerror or err}") from None


async def _flush_rules(ipr) -> int:
    """Remove hapacs's own rules (those at its two priorities that look up its two tables); how many."""
    found = [msg async for msg in await _netlink("rule dump", ipr.rule("dump", family=socket.AF_INET))]
    removed = 0
    for msg in found:
        table = msg.get_attr("FRA_TABLE") or msg["table"]
        if msg.get_attr("FRA_PRIORITY") in (MARK_RULE_PRIORITY, RETURN_RULE_PRIORITY) \
                and table in (LOCAL_TABLE, RETURN_TABLE):
            removed += 1
            try:
                await ipr.rule("del", family=socket.AF_INET, priority=msg.get_attr("FRA_PRIORITY"),
                               table=table, fwmark=msg.get_attr("FRA_FWMARK"),
                               dst=msg.get_attr("FRA_DST"), dst_len=msg["dst_len"])
            except NetlinkError as err:
                if err.code != errno.ENOENT:
                    raise RoutingError(f"netlink refuses to remove hapacs's rule at priority "
                                       f"{msg.get_attr('FRA_PRIORITY')}: {err}") from None
    return removed


async def _flush_table(ipr, table: int) -> None:
    found = [msg async for msg in await _netlink(f"route dump (table {table})",
                                                 ipr.route("dump", family=socket.AF_INET, table=table))]
    for msg in found:
        if (msg.get_attr("RTA_TABLE") or msg["table"]) != table:
            continue
        try:
            await ipr.route("del", table=table, dst=f"{msg.get_attr('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}",
                            type=msg["type"], scope=msg["scope"])
        except NetlinkError as err:
            if err.code not in (errno.ESRCH, errno.ENOENT):
                raise RoutingError(f"netlink refuses to remove a route of table {table}: {err}") from None
