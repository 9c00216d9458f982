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

A member passes on, to the member that would serve the bucket without it,
every packet of its buckets that no socket of its own takes (its PACS gone
before its check has seen it); drained (`hapacs drain on`), every packet
but those of its open associations. The map does not change (taking buckets
from a living member would move its open associations too, and cut them).
Every node serves the packets a bucket's own member passes on, which it
tells by that member's MAC address (hapacs.directdrain). Only the drained
node knows it is drained: the others' status shows it up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING

from . import directdrain, nftdirect
from .balancer import OwnFault, balance_status, members_of
from .buckets import assign, counts, fallbacks, passed_on, split
from .hostsetup import StartupError
from .logs import RateLimited
from .model import CommandRefused, ElectionView
from .nftcommand import NftError
from .nftdirect import ServiceRules
from .states import State

if TYPE_CHECKING:
    from .agent import Agent
    from .config import Config
    from .haproxy import Member

log = logging.getLogger("hapacs.balance")

FOLLOW_PERIOD_S = 0.1
RETRY_DELAY_S = 2.0      # after nft refused a table: not a new nft process every turn
MAC_REFRESH_S = 5.0      # how often the members' MAC addresses are read again (a card may be replaced)
MAC_MISSING_S = 1.0      # how often while one is missing (a member down may stay so for long)
FAULT_SOURCE = "nftables"
SERVING = (State.BACKUP, State.MASTER)


def alive_members(view: ElectionView, own_address: str) -> set[str]:
    """The addresses of the nodes that take associations now: this one by its own state, each
    peer while it is heard and BACKUP or MASTER."""
    alive = {str(ipaddress.ip_address(p.address)) for p in view.peers if p.up and p.state in SERVING}
    if view.state in SERVING:
        alive.add(own_address)
    return alive


def service_rules(config: Config, members: tuple[Member, ...], alive: set[str], own_address: str,
                  drained: bool = False, macs: dict[str, str] | None = None) -> list[ServiceRules]:
    """The table's content for this node: every service on the interface of its VIP; `macs`: the
    members' MAC addresses known so far."""
    interfaces = {v.address.ip: v.interface for v in config.vips}
    addresses = [m.server for m in members]
    local, forward = split(assign(addresses, alive), addresses, own_address)
    pass_to = fallbacks(addresses, alive, own_address) if own_address in addresses else ()
    return [ServiceRules(s.name, s.address, s.port, interfaces.get(s.address, config.cluster.interface),
                         local, forward, passed_on(forward, macs or {}), pass_to, drained)
            for s in config.balance.services]


class DirectBalancer:
    def __init__(self, agent: Agent):
        self.agent = agent
        self.config = agent.config
        self.own = str(agent.own_address)
        self.members = members_of(self.config, agent.own_address)
        self.alive: set[str] = set()
        self.loaded: list[ServiceRules] | None = None
        self.fault = OwnFault(agent, FAULT_SOURCE, "nftables takes the table")
        self.drained = False
        self.macs: dict[str, str] = {}
        self._macs_read_at = float("-inf")
        self._limited = RateLimited(log)     # a failing read is tried again every MAC_MISSING_S

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
            loaded = False
            try:
                self.alive = alive_members(self.agent.core.view(self.agent.loop.time()), self.own)
                await self._read_macs()
                rules = service_rules(self.config, self.members, self.alive, self.own, self.drained, self.macs)
                loaded = rules == self.loaded or await self._load(rules)
            except Exception:     # a bug here must not freeze the table in its last map
                log.exception("balance: internal error while keeping the direct-routing table; trying again")
            await asyncio.sleep(FOLLOW_PERIOD_S if loaded else RETRY_DELAY_S)

    async def _read_macs(self) -> None:
        """The MAC addresses of the members this node sends buckets to: read again every
        MAC_REFRESH_S, or every MAC_MISSING_S while one is missing (after asking the kernel to
        resolve it)."""
        wanted = [m.server for m in self.members if m.server != self.own]
        missing = [a for a in wanted if a not in self.macs]
        if self.agent.loop.time() - self._macs_read_at < (MAC_MISSING_S if missing else MAC_REFRESH_S):
            return
        for address in missing:
            directdrain.ask_for(address)
        try:
            self.macs = await asyncio.to_thread(directdrain.neighbour_macs, wanted)
        except OSError as err:
            self._limited.warning("macs", self.agent.loop.time(), "balance: cannot read the members' MAC "
                                  "addresses: %s", err)
        self._macs_read_at = self.agent.loop.time()

    async def _load(self, rules: list[ServiceRules]) -> bool:
        try:
            await nftdirect.apply(rules)
        except NftError as err:
            if self.fault.text is None:
                log.error("balance: %s", err)
                self.fault.set(f"nftables refuses the direct-routing table: {err}")
            return False
        self.loaded = rules
        log.info("balance: bucket map loaded: %s", ", ".join(f"{m} {n}" for m, n in sorted(self._shares().items()))
                 or "no member alive")
        if self.fault.text is not None:
            self.fault.set(None)
        return True

    def set_drain(self, on: bool) -> str:
        if on == self.drained:
            return f"drain was already {'on' if on else 'off'}"
        if on:
            self._may_drain()
        self.drained = on
        log.info("balance: drain %s by command", "on" if on else "off")
        return ("drain on: this node's PACS takes no new association; its open ones finish here, the "
                "other members take the new ones of its buckets" if on
                else "drain off: this node's PACS takes new associations again")

    def _may_drain(self) -> None:
        """CommandRefused unless a drain can work here (reads the host's sockets: a few ms)."""
        if self.own not in {m.server for m in self.members}:
            raise CommandRefused("this node is no member of the balance (it only balances): nothing to drain")
        if not self.alive - {self.own}:
            raise CommandRefused("no other member is up to take the new associations")
        for s in self.config.balance.services:
            if directdrain.listening_on(str(s.address), s.port):
                raise CommandRefused(
                    f"the PACS listens on {s.address} port {s.port} itself: a drain tells its open associations "
                    "from new ones only when the PACS listens on every address (0.0.0.0 or ::)")

    def _shares(self) -> dict[str, int]:
        """How many buckets each member serves in the map of the members alive now (members with none left out)."""
        return counts(assign([m.server for m in self.members], self.alive))

    def snapshot(self) -> dict:
        """The status JSON's "balance" object; no association counts: the balancer keeps no state."""
        share = self._shares()
        def state(member: Member) -> str:
            if member.server not in self.alive:
                return "down"
            return "drain" if self.drained and member.server == self.own else "up"
        return balance_status(self.agent, self.config, self.members, lambda _service, m: {
            "state": state(m), "buckets": share.get(m.server, 0), "associations": None, "total": None},
            drain=self.drained)
