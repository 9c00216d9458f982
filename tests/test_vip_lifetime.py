"""The VIPs' address lifetime under `cluster.authority: etcd` (hapacs.vips with a recording netlink).

The kernel removes a VIP whose lifetime ran out; under the etcd lease that lifetime must end by
the lease's local deadline and be renewed as soon as the lease is (timing.vip_lifetime_s).
"""

from __future__ import annotations

import asyncio
import ipaddress

from hapacs.config import VipConfig
from hapacs.netlink import Link
from hapacs.vips import VipManager


class Netlink:
    def __init__(self):
        self.calls: list[tuple[str, float, int]] = []

    async def add_lease(self, index, address, lease_s):
        self.calls.append(("add", asyncio.get_running_loop().time(), lease_s))

    async def renew_lease(self, index, address, lease_s):
        self.calls.append(("renew", asyncio.get_running_loop().time(), lease_s))

    async def delete(self, index, address):
        self.calls.append(("delete", asyncio.get_running_loop().time(), 0))


class Announcer:
    def burst(self, key, targets):
        pass

    def stop_bursts(self):
        pass


def manager(netlink: Netlink) -> VipManager:
    vips = (VipConfig(ipaddress.ip_interface("203.0.113.100/32"), "lo", "routed"),)
    vip_manager = VipManager(netlink, Announcer(), vips, 2, lambda text: None)
    vip_manager.set_link(Link(index=1, name="lo", mac=b"\x00" * 6, up=True, state="UNKNOWN"))
    return vip_manager


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)      # let the renewal task run (no time passes)


def test_without_the_lease_the_vip_gets_the_heartbeat_lease():
    async def run():
        netlink = Netlink()
        vips = manager(netlink)
        await vips.acquire()
        await vips.release()
        await vips.close()
        return netlink.calls
    calls = asyncio.run(run())
    assert calls[0][0] == "add" and calls[0][2] == 2


def test_under_the_lease_the_vip_ends_by_its_deadline_and_is_renewed_with_it():
    async def run():
        netlink = Netlink()
        vips = manager(netlink)
        now = asyncio.get_running_loop().time()
        vips.follow_lease(now + 1.49)            # TTL 2: sent + 1.5, answered 10 ms later
        await vips.acquire()
        vips.follow_lease(now + 3.16)            # the next renewal moved it (capped by the lease of 2 s)
        await settle()
        vips.follow_lease(now + 0.9)             # under a second left: not renewed (it ends sooner)
        await settle()
        await vips.release()
        await vips.close()
        return now, netlink.calls
    now, calls = asyncio.run(run())
    kinds = [(kind, lifetime) for kind, _, lifetime in calls]
    assert kinds == [("add", 1), ("renew", 2), ("delete", 0)], kinds
    for kind, at, lifetime in calls:
        if kind == "add":
            assert at + lifetime <= now + 1.49
        if kind == "renew":
            assert at + lifetime <= now + 3.16
