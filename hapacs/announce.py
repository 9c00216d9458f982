"""Tell the LAN where a VIP lives now: gratuitous ARP (IPv4), unsolicited NA (IPv6).

The frame builders are pure. `Announcer` sends them on raw sockets in a
short bounded burst after a takeover, because a single frame can be lost
and a switch or host may miss the first one.

Why both an ARP request and a reply: Linux updates an existing neighbour
entry at once on a gratuitous request; it takes a reply as gratuitous only
when the target hardware address equals the sender's (net/ipv4/arp.c, arp_process).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct

log = logging.getLogger("hapacs.announce")

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ALL_NODES = "ff02::1"
BURST_SCHEDULE_S = (0.0, 0.1, 0.5, 1.0, 2.0)   # five rounds, then quiet


def garp_frames(mac: bytes, vip: ipaddress.IPv4Address) -> tuple[bytes, bytes]:
    """A gratuitous ARP request and reply for `vip` at `mac` (Ethernet frames)."""
    ip = vip.packed
    ethernet = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    request = ethernet + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, ip)
    reply = ethernet + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, ip, mac, ip)
    return request, reply


def unsolicited_na(mac: bytes, vip: ipaddress.IPv6Address) -> bytes:
    """An ICMPv6 Neighbor Advertisement with the Override flag and our link-layer address.

    The kernel fills in the checksum on a raw ICMPv6 socket.
    """
    override = 0x20000000
    return (struct.pack("!BBHI16s", 136, 0, 0, override, vip.packed)
            + struct.pack("!BB6s", 2, 1, mac))


class Announcer:
    """Raw sockets per interface; bursts run as tasks and never block the loop."""

    def __init__(self) -> None:
        self._packet: dict[str, socket.socket] = {}
        self._icmp6: socket.socket | None = None
        self._bursts: dict[str, asyncio.Task] = {}
        self.sent = 0

    def _packet_socket(self, ifname: str) -> socket.socket:
        sock = self._packet.get(ifname)
        if sock is None:
            # Protocol 0: the socket only sends; it must not queue every ARP frame on the LAN.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind((ifname, 0))
            sock.setblocking(False)
            self._packet[ifname] = sock
        return sock

    def _icmp6_socket(self) -> socket.socket:
        if self._icmp6 is None:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setblocking(False)
            self._icmp6 = sock
        return self._icmp6

    def send_once(self, ifname: str, ifindex: int, mac: bytes, vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        try:
            if vip.version == 4:
                sock = self._packet_socket(ifname)
                for frame in garp_frames(mac, vip):
                    sock.send(frame)
                    self.sent += 1
            else:
                sock = self._icmp6_socket()
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                sock.sendto(unsolicited_na(mac, vip), (ALL_NODES, 0, 0, ifindex))
                self.sent += 1
        except OSError as err:
            log.warning("cannot announce %s on %s: %s", vip, ifname, err.strerror or err)

    def burst(self, key: str, targets: list[tuple[str, int, bytes, ipaddress.IPv4Address | ipaddress.IPv6Address]]) -> None:
        """Announce every target now and a few more times; a new burst replaces the old one."""
        old = self._bursts.pop(key, None)
        if old is not None:
            old.cancel()
        self._bursts[key] = asyncio.get_running_loop().create_task(self._run(targets))

    def stop_bursts(self) -> None:
        for task in self._bursts.values():
            task.cancel()
        self._bursts.clear()

    async def _run(self, targets) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for offset in BURST_SCHEDULE_S:
            delay = start + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for ifname, ifindex, mac, vip in targets:
                self.send_once(ifname, ifindex, mac, vip)

    def close(self) -> None:
        self.stop_bursts()
        for sock in list(self._packet.values()) + ([self._icmp6] if self._icmp6 else []):
            sock.close()
        self._packet.clear()
        self._icmp6 = None
