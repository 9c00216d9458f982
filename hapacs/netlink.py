"""Thin adapter over rtnetlink (pyroute2's asyncio API): links, addresses, link events.

All calls are coroutines on the agent's loop; none blocks it. Addresses
are passed as `ipaddress` interface objects; interfaces by name, resolved
to an index once (pyroute2 refuses `ifname=` on address calls).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
from dataclasses import dataclass
from typing import Callable

import socket

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTMGRP_LINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFA_F_NODAD = 0x02
INFINITE_LIFETIME = 0xFFFFFFFF
CALL_TIMEOUT_S = 2.0

log = logging.getLogger("hapacs.netlink")

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class NetlinkFailure(Exception):
    """A netlink request failed; the message names the operation and the error."""


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    up: bool            # administratively up and carrier present
    mac: bytes
    state: str          # operstate as the kernel says it: UP, DOWN, LOWERLAYERDOWN, ...


@dataclass(frozen=True)
class Address:
    interface: Interface
    index: int
    secondary: bool
    valid_lft: int      # seconds; INFINITE_LIFETIME when permanent


@dataclass(frozen=True)
class LinkEvent:
    link: Link


def _link_from(msg) -> Link:
    flags = msg["flags"]
    mac = msg.get_attr("IFLA_ADDRESS") or "00:00:00:00:00:00"
    return Link(name=msg.get_attr("IFLA_IFNAME"), index=msg["index"],
                up=bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP),
                mac=bytes.fromhex(mac.replace(":", "")), state=msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN")


def _address_from(msg) -> Address | None:
    ip = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if ip is None:
        return None
    cache = msg.get_attr("IFA_CACHEINFO") or {}
    interface = ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}")
    return Address(interface, msg["index"], bool(msg["flags"] & 0x01) and interface.version == 4,
                   cache.get("ifa_valid", INFINITE_LIFETIME))


class Netlink:
    """One request socket and one event socket, opened in the current network namespace."""

    def __init__(self) -> None:
        self._ipr: AsyncIPRoute | None = None
        self._events: AsyncIPRoute | None = None
        self._lock = asyncio.Lock()
        self._renewals: dict[tuple[int, str, int], ifaddrmsg] = {}

    async def open(self) -> None:
        self._ipr = AsyncIPRoute()
        await self._ipr.setup_endpoint()

    async def close(self) -> None:
        for sock in (self._events, self._ipr):
            if sock is not None:
                try:
                    sock.close()
                except Exception:   # closing must never stop a shutdown
                    log.debug("closing netlink socket failed", exc_info=True)
        self._events = self._ipr = None

    async def _call(self, what: str, coro):
        # One request at a time on the request socket, each bounded in time.
        async with self._lock:
            try:
                return await asyncio.wait_for(coro, CALL_TIMEOUT_S)
            except NetlinkError as err:
                raise NetlinkFailure(f"{what}: {err.args[1] if len(err.args) > 1 else err} "
                                     f"(errno {err.code})") from err
            except asyncio.TimeoutError:
                raise NetlinkFailure(f"{what}: no answer from the kernel within {CALL_TIMEOUT_S} s") from None

    async def link(self, name: str) -> Link | None:
        assert self._ipr is not None
        try:
            msgs = await self._call(f"look up interface {name}", self._ipr.link("get", ifname=name))
        except NetlinkFailure as err:
            if isinstance(err.__cause__, NetlinkError) and err.__cause__.code == errno.ENODEV:
                return None
            raise
        return _link_from(msgs[0]) if msgs else None

    async def addresses(self, index: int) -> list[Address]:
        found = await self._address_dump(f"list addresses of interface {index}", index=index)
        return [address for address in found if address.index == index]

    async def links(self) -> list[Link]:
        """Every interface of this network namespace."""
        assert self._ipr is not None

        async def dump():
            return [_link_from(msg) async for msg in await self._ipr.link("dump")]
        return await self._call("list interfaces", dump())

    async def all_addresses(self) -> list[Address]:
        """Every address of every interface."""
        return await self._address_dump("list addresses")

    async def _address_dump(self, what: str, **match) -> list[Address]:
        assert self._ipr is not None

        async def dump():
            return [address async for msg in await self._ipr.addr("dump", **match)
                    if (address := _address_from(msg)) is not None]
        return await self._call(what, dump())

    async def add_lease(self, index: int, address: Interface, lease_s: int) -> None:
        """Add or renew `address` with a lifetime: the kernel removes it if we stop renewing."""
        assert self._ipr is not None
        kwargs = dict(index=index, address=str(address.ip), prefixlen=address.network.prefixlen,
                      valid_lft=lease_s, preferred_lft=lease_s)
        if address.version == 6:
            # No duplicate address detection: a tentative VIP cannot be used for 1-2 s.
            kwargs["flags"] = IFA_F_NODAD
        await self._call(f"add {address} to interface {index}", self._ipr.addr("replace", **kwargs))

    async def renew_lease(self, index: int, address: Interface, lease_s: int) -> None:
        """The same as add_lease, through a request built once: a MASTER renews several times
        a lease, and pyroute2's request building costs more than the kernel's work."""
        assert self._ipr is not None
        key = (index, str(address), lease_s)
        msg = self._renewals.get(key)
        if msg is None:
            msg = ifaddrmsg()
            msg["family"] = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            msg["prefixlen"] = address.network.prefixlen
            msg["index"] = index
            msg["flags"] = IFA_F_NODAD if address.version == 6 else 0
            ip = str(address.ip)
            msg["attrs"] = [["IFA_LOCAL", ip], ["IFA_ADDRESS", ip],
                            ["IFA_CACHEINFO", {"ifa_preferred": lease_s, "ifa_valid": lease_s,
                                               "cstamp": 0, "tstamp": 0}]]
            if len(self._renewals) > 64:   # VIPs changed by reloads: keep only what is current
                self._renewals.clear()
            self._renewals[key] = msg
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE

        async def request():
            reply = self._ipr.nlm_request(msg, msg_type=RTM_NEWADDR, msg_flags=flags)
            if hasattr(reply, "__aiter__"):
                async for _ in reply:
                    pass
            else:
                await reply
        await self._call(f"renew {address} on interface {index}", request())

    async def delete(self, index: int, address: Interface) -> bool:
        """Remove `address`; False if it was not there."""
        assert self._ipr is not None
        try:
            await self._call(f"remove {address} from interface {index}",
                             self._ipr.addr("del", index=index, address=str(address.ip),
                                            prefixlen=address.network.prefixlen))
            return True
        except NetlinkFailure as err:
            cause = err.__cause__
            if isinstance(cause, NetlinkError) and cause.code in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return False
            raise

    async def watch(self, on_event: Callable[[LinkEvent], None]) -> None:
        """Report link changes until cancelled.

        Not address changes: every lease renewal causes one, and parsing them costs
        more CPU than the heartbeats themselves; the next renewal (an address
        "replace") puts back a VIP someone removed anyway.
        """
        self._events = AsyncIPRoute()
        await self._events.bind(groups=RTMGRP_LINK)
        while True:
            async for msg in self._events.get():
                if msg.get("event") == "RTM_NEWLINK":
                    on_event(LinkEvent(_link_from(msg)))
