"""UDP heartbeat sockets: unicast to the configured peers, or multicast with TTL 1.

Only bytes move here; decoding and counting happen in the agent. Sockets
are non-blocking and read by the asyncio loop: one datagram per callback,
so a flood cannot starve the timers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from typing import Callable

log = logging.getLogger("hapacs.transport")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
RCVBUF_BYTES = 1 << 20


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, str], None]):
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr) -> None:
        self.on_datagram(data, addr[0])

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for unicast sends (peer host down): normal while a peer is away.
        log.debug("heartbeat socket error: %s", exc)


class HeartbeatTransport:
    """Send to every peer (or the group); hand every received datagram to `on_datagram`."""

    def __init__(self, interface: str, ifindex: int, own_address: IP, port: int,
                 peers: tuple[IP, ...], group: IP):
        self.interface, self.ifindex = interface, ifindex
        self.own_address, self.port = own_address, port
        self.peers, self.group = peers, group
        self._send_sock: socket.socket | None = None
        self._transports: list[asyncio.DatagramTransport] = []
        self.send_errors = 0

    @property
    def destinations(self) -> list[tuple]:
        if self.peers:
            return [self._sockaddr(p) for p in self.peers]
        return [self._sockaddr(self.group)]

    def _sockaddr(self, address: IP) -> tuple:
        if address.version == 6:
            scope = self.ifindex if address.is_link_local or address.is_multicast else 0
            return (str(address), self.port, 0, scope)
        return (str(address), self.port)

    async def open(self, on_datagram: Callable[[bytes, str], None]) -> None:
        loop = asyncio.get_running_loop()
        if self.peers:
            sock = self._unicast_socket()
            self._send_sock = sock
            socks = [sock]
        else:
            self._send_sock = self._multicast_sender()
            socks = [self._multicast_receiver(), self._send_sock]
        for sock in socks:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(on_datagram), sock=sock)
            self._transports.append(transport)

    def _family(self) -> int:
        return socket.AF_INET6 if self.own_address.version == 6 else socket.AF_INET

    def _unicast_socket(self) -> socket.socket:
        sock = socket.socket(self._family(), socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind(self._sockaddr(self.own_address))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def _multicast_receiver(self) -> socket.socket:
        sock = socket.socket(self._family(), socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
            if self.group.version == 4:
                # Bound to the group: datagrams to other groups on this port stay out.
                sock.bind((str(self.group), self.port))
                mreqn = struct.pack("4s4si", self.group.packed, b"\0" * 4, self.ifindex)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            else:
                sock.bind((str(self.group), self.port, 0, self.ifindex))
                mreq = self.group.packed + struct.pack("@I", self.ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def _multicast_sender(self) -> socket.socket:
        sock = socket.socket(self._family(), socket.SOCK_DGRAM)
        try:
            if self.group.version == 4:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                struct.pack("4s4si", b"\0" * 4, b"\0" * 4, self.ifindex))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            # Sent from our own address, so receivers can break priority ties by it.
            sock.bind(self._sockaddr(self.own_address)[:1] + (0,) + self._sockaddr(self.own_address)[2:])
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def send(self, data: bytes) -> int:
        """Send to every destination; return how many sends failed (logged by the caller)."""
        failed = 0
        for destination in self.destinations:
            try:
                self._send_sock.sendto(data, destination)
            except OSError as err:
                failed += 1
                self.send_errors += 1
                self.last_error = f"{destination[0]}: {err.strerror or err}"
        return failed

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()
