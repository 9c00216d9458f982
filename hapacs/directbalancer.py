"""Direct-routing balancing in the shell (`balance: mode: direct`): the bucket map kept in the kernel.

Every node loads the same nftables table (hapacs.nftdirect) from the same
facts: the members (balance.members, or this node and every peer) and which
of them are alive. A member is alive while its node is heard and is BACKUP or
MASTER: its PACS's health check (weight 0) puts a node whose PACS fails in
FAULT, which its heartbeats tell every other node. This node is alive by its
own state. The map (hapacs.buckets) depends on nothing else, so the node
that takes the VIP over already forwards every held association to the member
that served it.

nft missing or refusing the table stops the agent at start (StartupError)
before any VIP is claimed. nft refusing a later change puts this node in
FAULT (its buckets then move to the others, and it holds no VIP) until the
table loads again.

Drain: the kernel keeps no state per association, so taking buckets from a
living member moves its open associations too (they are cut). There is no
graceful drain in this mode; `hapacs drain` is refused and says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING

from . import nftdirect
from .balancer import balance_status, members_of
from .buckets import assign, counts, split
from .hostsetup import StartupError
from .model import CommandRefused, ElectionView
from .nftdirect import NftError, ServiceRules
from .states import State

if TYPE_CHECKING:
    from .agent import Agent
    from .config import Config
    from .haproxy import Member

log = logging.getLogger("hapacs.balance")

FOLLOW_PERIOD_S = 0.1
RETRY_DELAY_S = 2.0      # after nft refused a table: not a new nft process every turn
FAULT_SOURCE = "nftables"
SERVING = (State.BACKUP, State.MASTER)


def alive_members(view: ElectionView, own_address: str) -> set[str]:
    """The addresses of the nodes that take associations now: this one by its own state, each
    peer while it is heard and BACKUP or MASTER."""
    alive = {str(ipaddress.ip_address(p.address)) for p in view.peers if p.up and p.state in SERVING}
    if view.state in SERVING:
        alive.add(own_address)
    return alive


def service_rules(config: Config, members: tuple[Member, ...], alive: set[str], own_address: str) \
        -> list[ServiceRules]:
    """The table's content for this node: every service on the interface of its VIP."""
    interfaces = {v.address.ip: v.interface for v in config.vips}
    addresses = [m.server for m in members]
    local, forward = split(assign(addresses, alive), addresses, own_address)
    return [ServiceRules(s.name, s.address, s.port, interfaces.get(s.address, config.cluster.interface),
                         local, forward) for s in config.balance.services]


class DirectBalancer:
    def __init__(self, agent: Agent):
        self.agent = agent
        self.config = agent.config
        self.own = str(agent.own_address)
        self.members = members_of(self.config, agent.own_address)
        self.alive: set[str] = set()
        self.loaded: list[ServiceRules] | None = None
        self._fault_text: str | None = None

    async def start(self) -> None:
        self.alive = alive_members(self.agent.core.view(self.agent.loop.time()), self.own)
        rules = service_rules(self.config, self.members, self.alive, self.own)
        try:
            await nftdirect.apply(rules)
        except NftError as err:
            raise StartupError(f"balance: {err}") from None
        self.loaded = rules
        log.info("balancing %s by direct routing (nftables table netdev %s) over %s", ", ".join(
            f"{s.name} ({s.address}:{s.port})" for s in self.config.balance.services), nftdirect.TABLE,
            ", ".join(m.server for m in self.members))
        self.agent.start_task(self._follow(), "nft-direct")

    async def stop(self) -> None:
        try:
            await nftdirect.remove()
        except NftError as err:
            log.error("balance: cannot remove the nftables table %s: %s", nftdirect.TABLE, err)

    async def refuses(self, new: Config) -> str | None:
        """Why the kernel would refuse the table written from `new` (a reload asks first)."""
        if new.balance is None or new.balance == self.config.balance:
            return None
        try:
            await nftdirect.check(service_rules(new, members_of(new, self.agent.own_address), self.alive,
                                                self.own))
        except NftError as err:
            return f"balance: {err}"
        return None

    async def reconfigure(self, new: Config) -> None:
        """A reload: the next turn of the follower loads the table written from `new`."""
        self.config = new
        self.members = members_of(new, self.agent.own_address)

    async def _follow(self) -> None:
        """Keep the kernel's table equal to the map of the members alive now."""
        while True:
            self.alive = alive_members(self.agent.core.view(self.agent.loop.time()), self.own)
            rules = service_rules(self.config, self.members, self.alive, self.own)
            loaded = rules == self.loaded or await self._load(rules)
            await asyncio.sleep(FOLLOW_PERIOD_S if loaded else RETRY_DELAY_S)

    async def _load(self, rules: list[ServiceRules]) -> bool:
        try:
            await nftdirect.apply(rules)
        except NftError as err:
            if self._fault_text is None:
                log.error("balance: %s", err)
                self._fault(f"nftables refuses the direct-routing table: {err}")
            return False
        self.loaded = rules
        log.info("balance: bucket map loaded: %s", ", ".join(
            f"{m} {n}" for m, n in sorted(counts(assign([x.server for x in self.members], self.alive)).items()))
            or "no member alive")
        if self._fault_text is not None:
            self._fault(None)
        return True

    def _fault(self, text: str | None) -> None:
        self._fault_text = text
        self.agent.feed(lambda now: self.agent.core.set_fault(FAULT_SOURCE, text, now, "nftables takes the table"))

    def set_drain(self, on: bool) -> str:
        raise CommandRefused(
            "mode direct has no graceful drain: the kernel keeps no state per association, so taking "
            "buckets from a living member cuts the associations open on them. To take a PACS out, stop "
            "it (its node goes to FAULT, its buckets move and its open associations end), or use mode proxy")

    def snapshot(self) -> dict:
        """The status JSON's "balance" object; no association counts: the balancer keeps no state."""
        share = counts(assign([m.server for m in self.members], self.alive))
        return balance_status(self.agent, self.config, self.members, lambda _service, m: {
            "state": "up" if m.server in self.alive else "down", "buckets": share.get(m.server, 0),
            "associations": None, "total": None}, drain=False)
