"""What a direct-routing drain needs from the host: the members' MAC addresses, and a PACS that
listens on every address.

A drained member passes the packets that are not of its own open associations to another member
(hapacs.nftdirect); that member recognises them by the drained member's MAC address and serves
them instead of sending them back. So every node keeps the MAC address of each member it sends
buckets to, read from the kernel's neighbour table; a member missing there (multicast heartbeats:
nothing was ever sent to it) is asked for with one empty UDP datagram to its discard port, which
makes the kernel resolve it (the member answers with an ICMP port unreachable, or nothing).

The drained member tells its own associations from the others by the kernel's socket lookup:
an established socket is bound to the VIP, the PACS's listener to every address. A PACS listening
on the VIP's address itself looks like an open association to every new SYN, so the drain is
refused there (`listening_on`).

It only reads the host (and sends that datagram); it decides nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

import psutil
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .drain import local_endpoints

log = logging.getLogger("hapacs.balance")

DISCARD_PORT = 9


def neighbour_macs(addresses: list[str]) -> dict[str, str]:
    """Address -> MAC address, for those of `addresses` the kernel's neighbour table knows; OSError
    when netlink cannot be asked or refuses. Blocking (netlink): call it from a thread."""
    wanted = {str(ipaddress.ip_address(a)) for a in addresses}
    found: dict[str, str] = {}
    try:
        with IPRoute() as ipr:
            for message in ipr.get_neighbours():
                destination, mac = message.get_attr("NDA_DST"), message.get_attr("NDA_LLADDR")
                if destination and mac and str(ipaddress.ip_address(destination)) in wanted:
                    found[str(ipaddress.ip_address(destination))] = mac
    except NetlinkError as err:     # not an OSError: the table loop would take it for a bug (traceback, a pause)
        raise OSError(err.code, f"netlink refuses the neighbour table dump: {err}") from None
    return found


def ask_for(address: str) -> None:
    """Make the kernel resolve `address`'s MAC: one empty datagram to its discard port."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"", (address, DISCARD_PORT))
    except OSError as err:
        log.debug("cannot ask for %s's MAC address: %s", address, err)


def listening_on(address: str, port: int) -> bool:
    """Whether a program listens on exactly (address, port), not on every address."""
    return (str(ipaddress.ip_address(address)), port) in local_endpoints(psutil.CONN_LISTEN)
