"""What the agent needs from the host before it starts: the address its heartbeats leave
from, and the kernel setting that keeps VIPs when the primary address goes."""

from __future__ import annotations

import ipaddress
import logging

from .config import Config

log = logging.getLogger("hapacs")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class StartupError(Exception):
    """The agent cannot start; the message tells the operator what to fix."""


def heartbeat_address(config: Config, interface: str, addresses) -> Address:
    """The address heartbeats leave from: node.address, or the interface's first own address
    of the peers' family (not a VIP). `addresses` are the interface's (netlink) addresses."""
    vip_ips = {v.address.ip for v in config.vips}
    if config.node.address is not None:
        if config.node.address not in {a.interface.ip for a in addresses}:
            raise StartupError(f"node.address {config.node.address} is not on {interface}")
        return config.node.address
    family = (config.cluster.peers[0].version if config.cluster.peers
              else config.cluster.multicast_group.version)
    for address in addresses:
        ip = address.interface.ip
        if ip.version != family or ip in vip_ips:
            continue
        # IPv6 multicast leaves from the link-local address; unicast from a global one.
        if family == 6 and ip.is_link_local != (not config.cluster.peers):
            continue
        return ip
    raise StartupError(f"{interface} has no IPv{family} address to send heartbeats from; "
                       "give it one or set node.address")


def promote_secondaries(config: Config) -> None:
    """Without it, removing the interface's primary address also removes IPv4 VIPs in its subnet."""
    for name in {v.interface for v in config.vips if v.address.version == 4}:
        path = f"/proc/sys/net/ipv4/conf/{name}/promote_secondaries"
        try:
            with open(path) as handle:
                if handle.read().strip() == "1":
                    continue
            with open(path, "w") as handle:
                handle.write("1")
        except OSError as err:
            log.warning("cannot set %s to 1 (%s): removing the primary address of %s would also "
                        "remove the VIPs", path, err.strerror or err, name)
