"""The VIPs on this host, held as leases.

A VIP is added with a lifetime of `lease_s` seconds (Linux `valid_lft`)
and renewed while this node is MASTER. If the agent is killed or hangs,
nobody renews it and the kernel removes the address by itself a few
seconds later, so a standby that took over is left as the only holder.
keepalived leaves the address on a dead agent's host for good.

Under `cluster.authority: etcd` the lifetime also ends by the lease's local
deadline (`follow_lease`, timing.vip_lifetime_s): renewed as soon as the lease
is, and once more when whole seconds can end just before that deadline
(timing.vip_timed_renewal), never shortened. A killed agent's host (its BGP
speaker still announcing a routed VIP) stops serving before etcd can give
the lease to another node.
The kernel counts lifetimes in whole seconds and removes an expired address
at its next lifetime check: normally within 0.25 s of the end, up to a
second later when another address on the host changed in that last second.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from . import timing
from .announce import Announcer
from .config import VipConfig
from .netlink import Link, Netlink, NetlinkFailure
from .status import VipStatus

log = logging.getLogger("hapacs.vips")


class VipManager:
    def __init__(self, netlink: Netlink, announcer: Announcer, vips: tuple[VipConfig, ...], lease_s: int,
                 on_failure: Callable[[str], None]):
        self.netlink = netlink
        self.announcer = announcer
        self.vips = vips
        self.lease_s = lease_s
        self.on_failure = on_failure
        self.links: dict[str, Link] = {}
        self.held: dict[str, bool] = {vip.label: False for vip in vips}
        self.wanted = False
        self.renewals = 0
        self.until: float | None = None        # the etcd lease's local deadline (loop time), if any
        self.timed_at: float | None = None     # the renewal that ends just before it
        self.ends_at = 0.0                     # when the addresses' current lifetime ends (loop time)
        self._renew_task: asyncio.Task | None = None
        self._renew_now = asyncio.Event()

    def follow_lease(self, until: float) -> None:
        """The etcd lease was granted or renewed: from now on every VIP ends by `until`; the held
        ones are renewed at once."""
        self.until = until
        self.timed_at = timing.vip_timed_renewal(self.lease_s, until, asyncio.get_running_loop().time())
        if self.wanted:
            self._renew_now.set()

    def lifetime_s(self) -> int:
        """The valid_lft for a VIP added or renewed now (0: do not renew, under a second left)."""
        return timing.vip_lifetime_s(self.lease_s, self.until, asyncio.get_running_loop().time())

    def set_link(self, link: Link) -> None:
        self.links[link.name] = link

    def statuses(self) -> tuple[VipStatus, ...]:
        return tuple(VipStatus(v.label, v.interface, self.held.get(v.label, False)) for v in self.vips)

    async def find_present(self) -> list[str]:
        """VIPs already on our interfaces (a previous agent's leases, or added by hand)."""
        present = []
        for name in {vip.interface for vip in self.vips}:
            link = self.links.get(name)
            if link is None:
                continue
            on_link = {a.interface.ip for a in await self.netlink.addresses(link.index)}
            for vip in self.vips:
                if vip.interface == name and vip.address.ip in on_link:
                    self.held[vip.label] = True
                    present.append(vip.label)
        return present

    async def acquire(self) -> None:
        """Add every VIP as a lease, then announce it."""
        self.wanted = True
        failures = []
        for vip in self.vips:
            try:
                await self._add(vip)
            except (NetlinkFailure, KeyError) as err:
                failures.append(f"{vip.label}: {err}")
        self.announce()
        if self._renew_task is None or self._renew_task.done():
            self._renew_task = asyncio.get_running_loop().create_task(self._renew_loop())
        if failures:
            self.on_failure("; ".join(failures))

    def _link_of(self, vip: VipConfig) -> Link:
        link = self.links.get(vip.interface)
        if link is None:
            raise KeyError(f"interface {vip.interface} not found")
        return link

    async def _add(self, vip: VipConfig) -> None:
        link = self._link_of(vip)
        # At least a second, the kernel's unit: under the lease that is only when its take took
        # longer than TTL - margin - 1 s to answer.
        lifetime = max(1, self.lifetime_s())
        await self.netlink.add_lease(link.index, vip.address, lifetime)
        self.ends_at = asyncio.get_running_loop().time() + lifetime
        self.held[vip.label] = True

    async def release(self) -> None:
        self.wanted = False
        self.announcer.stop_bursts()
        for vip in self.vips:
            link = self.links.get(vip.interface)
            if link is None:
                self.held[vip.label] = False
                continue
            try:
                await self.netlink.delete(link.index, vip.address)
                self.held[vip.label] = False
            except NetlinkFailure as err:
                log.error("cannot remove VIP %s from %s: %s", vip.label, vip.interface, err)

    async def update(self, vips: tuple[VipConfig, ...], lease_s: int) -> tuple[list[str], list[str]]:
        """A reloaded VIP set: VIPs that stay are not touched; removed ones go, added ones come
        (on the MASTER). Returns (added, removed) labels."""
        added = [v for v in vips if v not in self.vips]
        removed = [v for v in self.vips if v not in vips]
        for vip in removed:
            link = self.links.get(vip.interface)
            if link is not None:
                try:
                    await self.netlink.delete(link.index, vip.address)
                except NetlinkFailure as err:
                    log.error("cannot remove VIP %s from %s: %s", vip.label, vip.interface, err)
        self.vips = vips
        self.lease_s = lease_s
        self.held = {v.label: self.held.get(v.label, False) for v in vips}
        if self.wanted and added:
            failures = []
            for vip in added:
                try:
                    await self._add(vip)
                except (NetlinkFailure, KeyError) as err:
                    failures.append(f"{vip.label}: {err}")
            self.announce()
            if failures:
                self.on_failure("; ".join(failures))
        return [v.label for v in added], [v.label for v in removed]

    def announce(self) -> None:
        """Gratuitous ARP / unsolicited NA for the held VIPs on an interface. A routed VIP is
        announced by the host's BGP speaker when it appears on lo, never on the wire by us."""
        targets = []
        for vip in self.vips:
            link = self.links.get(vip.interface)
            if link is not None and self.held.get(vip.label) and not vip.routed:
                targets.append((link.name, link.index, link.mac, vip.address.ip))
        if targets:
            self.announcer.burst("vips", targets)

    async def _renew_loop(self) -> None:
        # Renew three times per lease: one missed renewal must not let it lapse. (Each renewal
        # costs a netlink round trip and an address event, so not more often than that.)
        # Under the etcd lease also at once when the lease was renewed (follow_lease).
        loop = asyncio.get_running_loop()
        period = self.lease_s / 3
        while self.wanted:
            wait = period if self.timed_at is None else max(0.0, min(period, self.timed_at - loop.time()))
            try:
                await asyncio.wait_for(self._renew_now.wait(), wait)
            except TimeoutError:
                pass
            self._renew_now.clear()
            now = loop.time()
            if self.timed_at is not None and now >= self.timed_at:
                self.timed_at = None
            lifetime = self.lifetime_s()
            if not self.wanted or lifetime < 1 or now + lifetime <= self.ends_at:
                continue      # never shorten a lifetime already given
            self.ends_at = now + lifetime
            for vip in self.vips:
                try:
                    await self.netlink.renew_lease(self._link_of(vip).index, vip.address, lifetime)
                    self.held[vip.label] = True
                except (NetlinkFailure, KeyError) as err:
                    log.error("cannot renew VIP %s: %s", vip.label, err)
            self.renewals += 1

    async def close(self) -> None:
        if self._renew_task is not None:
            self._renew_task.cancel()
            try:
                await self._renew_task
            except asyncio.CancelledError:
                pass

