"""What the agent needs from the host before it starts: the address its heartbeats leave
from (and the peer list without it), the kernel setting that keeps VIPs when the primary
address goes, and the election's parameters from the configuration and that address."""

from __future__ import annotations

import ipaddress
import logging

from . import hostcheck, wire
from .config import Config
from .model import Params

log = logging.getLogger("hapacs")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class StartupError(Exception):
    """The agent cannot start; the message tells the operator what to fix."""


def heartbeat_address(config: Config, addresses) -> Address:
    """The address heartbeats leave from (hostcheck.heartbeat_source), or StartupError saying why
    there is none, as check-config says it. `addresses` are cluster.interface's (netlink)."""
    source = hostcheck.heartbeat_source(config, addresses)
    if source is None:
        key, message = hostcheck.no_heartbeat_source(config, addresses)
        raise StartupError(f"{key}: {message}")
    return source


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


def skip_own_address(config: Config, own: Address) -> Config:
    """One peer list copied to every node names this node too: skip that entry."""
    config, skipped = hostcheck.without_own_address(config, own)
    if skipped:
        log.info("cluster.peers lists this node's own address %s: skipped (heartbeats go to the others)", own)
    return config


def election_params(config: Config, own: Address) -> Params:
    """What the election core is told of the configuration and of this host."""
    return Params(
        name=config.node.name, address=own.packed, priority=config.node.priority,
        advert_interval_s=config.cluster.advert_interval_s, dead_after=config.cluster.dead_after,
        preempt=config.cluster.preempt, preempt_delay_s=config.cluster.preempt_delay_s,
        vip_digest=wire.vip_digest(v.label for v in config.vips),
        drain_timeout_s=config.handover.drain_timeout_s, witness=bool(config.cluster.witness),
        cluster_size=1 + len(config.cluster.peers) if config.cluster.quorum == "majority" else 0,
        lease_ttl_s=config.etcd.ttl_s if config.cluster.authority == "etcd" and config.etcd else 0)
