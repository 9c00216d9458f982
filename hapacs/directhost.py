"""What direct routing (`balance: mode: direct`) needs from each node as a member.

The balancer sends a workstation's packets unchanged (destination the VIP)
to a member's MAC address. The member takes them only if the VIP is one of
its own addresses, so every node carries each balanced VIP on `lo` (as
/32 or /128), permanently: the administrator configures it, hapacs does not.
And a member must not answer ARP for that address, or workstations would
reach it without the balancer: on the VIP's interface `arp_ignore` 1 or 2
(answer only for addresses on the interface asked; the node holding the VIP
has it on that interface too) and `arp_announce` 2 (its own ARP requests name
its own address, never the VIP). The kernel applies the larger of the `all`
and the interface's value. IPv6 needs nothing more: a node answers neighbour
solicitations only for addresses of the interface asked.

A node that is not among the listed `members` only balances and needs none
of this. Used by hostcheck (run, reload and check-config agree). It only reads the
host (its addresses, /proc/sys); it never changes anything.
"""

from __future__ import annotations

import shutil

from . import nftcommand, sysctl

WANTED = {"arp_ignore": (1, 2), "arp_announce": (2,)}


def balanced_vips(config) -> set:
    if config.balance is None or config.balance.mode != "direct":
        return set()
    return {s.address for s in config.balance.services}


def on_loopback(config, ip, owner: str | None) -> bool:
    """A VIP this node carries on lo as a direct-routing member: not a VIP 'owned' by the host."""
    return owner == "lo" and ip in balanced_vips(config)


def is_member(config, facts) -> bool:
    """This node is a member: members are not listed (this node and its peers), or one of the
    listed addresses is this host's own. A node that is not one only balances."""
    members = config.balance.members
    return not members or any(facts.permanent(m.address) is not None for m in members)


def problems(config, facts, problem) -> None:
    """Report what keeps this node from being a direct-routing member (nothing in mode proxy)."""
    if not balanced_vips(config):
        return
    if shutil.which(nftcommand.NFT) is None:
        problem("balance.mode", "direct " + nftcommand.NEEDS_NFT)
    if not is_member(config, facts):
        return
    on_lo = {a.interface.ip for a in facts.addresses("lo") if a.interface.network.prefixlen in (32, 128)}
    interfaces = {v.address.ip: v.interface for v in config.vips}
    for index, service in enumerate(config.balance.services):
        ip, bits = service.address, 32 if service.address.version == 4 else 128
        if ip not in on_lo:
            problem(f"balance.services[{index}].address", f"mode direct: {ip} is not on lo on this host; every "
                    f"member carries the VIP there: ip address add {ip}/{bits} dev lo (and in the host's network "
                    "configuration, so it stays after a reboot)")
        if ip.version == 4:
            _arp(interfaces.get(ip, config.cluster.interface), f"balance.services[{index}].address", problem)


def _arp(interface: str, key: str, problem) -> None:
    for name, allowed in WANTED.items():
        values = [sysctl.read(f"ipv4/conf/{where}/{name}") for where in ("all", interface)]
        if None in values:
            continue        # no such interface: reported by hostcheck already
        if max(values) not in allowed:
            problem(key, f"mode direct: net.ipv4.conf.{interface}.{name} is {max(values)} on this host (the larger "
                    f"of all and {interface}); a member must have {' or '.join(map(str, allowed))}: sysctl -w "
                    f"net.ipv4.conf.{interface}.{name}={allowed[-1]} (and in /etc/sysctl.d)")
