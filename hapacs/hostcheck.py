"""Does a valid configuration fit the host it runs on?

`config.load()` judges the file alone and never looks at the host, so a
file can be checked anywhere. What only the host can tell is checked here,
on the host (in its network namespace): that the interfaces exist, that a
VIP is not one of the host's own addresses and lies in a subnet of its
interface, that there is an address to send heartbeats from, that the
script checks and the notify command can be run. `hapacs run` (at start),
`hapacs reload` and `hapacs check-config` all call `check()`, so they agree.

Problems are reported like the file's own, `FILE:LINE: key: message`,
and every message says "on this host": the same file may be right on
another host. This module only reads the host; it never changes anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import shutil
import stat
from dataclasses import dataclass

from . import directhost, transparent
from .config import Config
from .netlink import INFINITE_LIFETIME, Address, Netlink, NetlinkFailure
from .yamlsource import Located, Problem, parse_file

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class HostFacts:
    """What the checks need to know about the host: interface names and their addresses."""

    interfaces: dict[str, tuple[Address, ...]]

    def addresses(self, interface: str) -> tuple[Address, ...]:
        return self.interfaces.get(interface, ())

    def permanent(self, ip: IP) -> str | None:
        """The interface on which `ip` is a permanent address of this host, if it is one.

        Permanent, because the VIPs hapacs adds carry a lifetime (a lease): a VIP the
        agent holds now, or one an agent left behind, is not the host's own address.
        """
        for name, addresses in self.interfaces.items():
            if any(a.interface.ip == ip and a.valid_lft == INFINITE_LIFETIME for a in addresses):
                return name
        return None


async def gather(netlink: Netlink) -> HostFacts:
    """Interfaces and addresses of the current network namespace, through an open Netlink."""
    links = await netlink.links()
    names = {link.index: link.name for link in links}
    interfaces: dict[str, list[Address]] = {link.name: [] for link in links}
    for address in await netlink.all_addresses():
        if address.index in names:
            interfaces[names[address.index]].append(address)
    return HostFacts({name: tuple(found) for name, found in interfaces.items()})


async def check(config: Config, netlink: Netlink | None = None) -> list[Problem]:
    """Every way `config` does not fit this host; empty when it fits.

    Uses `netlink` if given (the running agent's), else opens and closes its own."""
    own = netlink is None
    try:
        if own:
            netlink = Netlink()
            await netlink.open()
        facts = await gather(netlink)
    except (NetlinkFailure, OSError) as err:
        return [Problem(config.path, 0, "(host)", f"cannot read the interfaces of this host: {err}")]
    finally:
        if own:
            await netlink.close()
    lines = await asyncio.to_thread(_read_lines, config.path)     # YAML parsing: not on the agent's loop
    return problems(config, facts, lines)


def heartbeat_source(config: Config, addresses: tuple[Address, ...] | list[Address]) -> IP | None:
    """The address heartbeats leave from: node.address, else the first suitable address of
    cluster.interface (of the peers' family, not a VIP; for IPv6 multicast the link-local
    one, for IPv6 unicast a global one). None when the interface has none."""
    if config.node.address is not None:
        present = {a.interface.ip for a in addresses}
        return config.node.address if config.node.address in present else None
    family = heartbeat_family(config)
    vip_ips = {v.address.ip for v in config.vips}
    for address in addresses:
        ip = address.interface.ip
        if ip.version != family or ip in vip_ips:
            continue
        if family == 6 and ip.is_link_local != (not config.cluster.peers):
            continue
        return ip
    return None


def no_heartbeat_source(config: Config, addresses: tuple[Address, ...] | list[Address]) -> tuple[str, str]:
    """Why `heartbeat_source` found no address: the key to blame and what to do (for check-config
    and reload, and for a start whose interface lost its address after the check)."""
    interface = config.cluster.interface
    if config.node.address is not None:
        shown = ", ".join(str(a.interface.ip) for a in addresses) or "none"
        return "node.address", (f"{config.node.address} is not an address of {interface} on this host "
                                f"(it has: {shown})")
    return "cluster.interface", (f"{interface} has no IPv{heartbeat_family(config)} address to send heartbeats "
                                 "from on this host; give it one or set node.address")


def heartbeat_family(config: Config) -> int:
    if config.node.address is not None:
        return config.node.address.version
    return config.cluster.peers[0].version if config.cluster.peers else config.cluster.multicast_group.version


def without_own_address(config: Config, own: IP) -> tuple[Config, bool]:
    """`config` with this node's own address left out of cluster.peers, and whether it was there.

    One peer list copied to every node lists each node itself too; a node skips its own
    entry (sending heartbeats to itself would count them as received and make it look
    like another host with its name).
    """
    peers = config.cluster.peers
    if own not in peers:
        return config, False
    cluster = dataclasses.replace(config.cluster, peers=tuple(p for p in peers if p != own))
    return dataclasses.replace(config, cluster=cluster), True


# --- the checks ---------------------------------------------------------------------------

def problems(config: Config, facts: HostFacts, lines: "Lines") -> list[Problem]:
    found: list[Problem] = []

    def problem(key: str, message: str) -> None:
        found.append(Problem(config.path, lines.line(key), key, message))

    _interfaces(config, facts, problem)
    collided = _vips(config, facts, problem)
    _heartbeats(config, facts, problem, collided)
    for index, check in enumerate(config.checks):
        if check.type == "script" and check.command:
            _executable(check.command[0], f"checks[{index}].command", problem)
    if config.notify.command:
        _executable(config.notify.command[0], "notify.command", problem)
    directhost.problems(config, facts, problem)
    transparent.problems(config, problem)
    if config.balance is not None and config.balance.mode == "proxy" and shutil.which("haproxy") is None:
        problem("balance.mode", "proxy needs HAProxy, which is not installed on this host (Debian: apt install "
                "haproxy; hapacs starts it itself, leave the haproxy service disabled)")
    return sorted(found, key=lambda p: p.line)


def _interfaces(config: Config, facts: HostFacts, problem) -> None:
    here = ", ".join(sorted(facts.interfaces)) or "none"
    if config.cluster.interface not in facts.interfaces:
        problem("cluster.interface", f"interface {config.cluster.interface} not found on this host "
                f"(interfaces here: {here})")
    for index, vip in enumerate(config.vips):
        if vip.interface != config.cluster.interface and vip.interface not in facts.interfaces:
            problem(f"vips[{index}].interface", f"interface {vip.interface} not found on this host "
                    f"(interfaces here: {here})")


def _vips(config: Config, facts: HostFacts, problem) -> bool:
    """VIPs that are the host's own address, or outside their interface's subnets."""
    collided = False
    vip_ips = {v.address.ip for v in config.vips}
    for index, vip in enumerate(config.vips):
        ip = vip.address.ip
        owner = facts.permanent(ip)
        if owner is not None and not directhost.on_loopback(config, ip, owner):
            collided = True
            problem(f"vips[{index}].address", f"{ip} is this host's own address (on {owner}, on this host); "
                    "a VIP must be an address no host owns: pick a free one in the workstations' subnet")
            continue
        if vip.interface not in facts.interfaces or vip.routed:
            continue      # reported as a missing interface; a routed VIP is a host route on lo, in no subnet
        # The subnets of the interface's own addresses (a VIP's lease, held now, is not one).
        subnets = sorted({str(a.interface.network) for a in facts.addresses(vip.interface)
                          if a.interface.version == ip.version and not a.interface.ip.is_link_local
                          and not (a.interface.ip in vip_ips and a.valid_lft != INFINITE_LIFETIME)})
        if not any(ip in ipaddress.ip_network(net) for net in subnets):
            problem(f"vips[{index}].address", f"{ip} is outside every subnet of {vip.interface} on this host "
                    f"({', '.join(subnets) or f'it has no IPv{ip.version} address'}); workstations find a "
                    "VIP only in a subnet the interface is in")
    return collided


def _heartbeats(config: Config, facts: HostFacts, problem, collided: bool) -> None:
    interface = config.cluster.interface
    if interface not in facts.interfaces:
        return
    addresses = facts.addresses(interface)
    if heartbeat_source(config, addresses) is None:
        # Without node.address, a VIP equal to the only address was said above, and is the cause.
        if config.node.address is not None or not collided:
            problem(*no_heartbeat_source(config, addresses))
        return
    others = [p for p in config.cluster.peers if facts.permanent(p) is None]
    if config.cluster.peers and not others:
        problem("cluster.peers", "lists only this host's own address(es) on this host; list the other nodes "
                "(or leave peers out for multicast)")
    elif config.cluster.quorum == "majority" and len(others) < 2:
        problem("cluster.quorum", "majority needs three or more nodes, and cluster.peers lists only "
                f"{len(others)} other than this host; with two nodes use a witness instead")


def _executable(command: str, key: str, problem) -> None:
    if "/" not in command:
        if shutil.which(command) is None:
            problem(key, f"{command} is not found in PATH on this host; give the full path of the program")
        return
    try:
        mode = os.stat(command).st_mode
    except OSError as err:
        problem(key, f"{command}: {err.strerror.lower()} on this host")
        return
    if not stat.S_ISREG(mode):
        problem(key, f"{command} is not a file on this host")
    elif not os.access(command, os.X_OK):
        problem(key, f"{command} is not executable on this host (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod +x {command}")


# --- lines of keys in the file --------------------------------------------------------------

class Lines:
    """The line of a dotted key (`vips[0].address`) in the file, or of its closest parent."""

    def __init__(self, root: Located | None):
        self.root = root

    def line(self, key: str) -> int:
        node, line = self.root, 1
        for part in _key_parts(key):
            if node is None:
                break
            if isinstance(part, int):
                if node.kind != "seq" or part >= len(node.value):
                    break
                node = node.value[part]
                line = node.line
            else:
                if node.kind != "map" or part not in node.value:
                    break
                line = node.key_lines.get(part, line)
                node = node.value[part]
        return line


def _key_parts(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for word in key.split("."):
        name, _, rest = word.partition("[")
        parts.append(name)
        if rest:
            parts.append(int(rest.rstrip("]")))
    return parts


def _read_lines(path: str) -> Lines:
    try:
        return Lines(parse_file(path))
    except (OSError, UnicodeDecodeError):
        return Lines(None)
