"""Load balancing in the shell: HAProxy, the agent-check answers, `hapacs drain`, status.

Every node runs HAProxy (hapacs.haproxy); the node holding a service's VIP
is the one that serves it. Each node's agent tells every HAProxy, through
the agent-check (hapacs.agentcheck), whether its own PACS takes new
associations. This module joins those to the agent: it answers from the
election's view and the checks' results, and turns HAProxy's statistics
into the status JSON's "balance" object (docs/status-json.md).

HAProxy missing, refusing its configuration or failing to start stops the
agent at start (StartupError), before any VIP is claimed. HAProxy dying
later puts the node in FAULT (it then holds no VIP) until it runs again.
The same holds for the host's part of `client_address: transparent` and
`outgoing_from_vip` (hapacs.transparent): set up before HAProxy starts,
kept on where the VIP is (every ROUTING_PERIOD_S), removed at stop.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import TYPE_CHECKING, Protocol

from . import nftcommand
from .agentcheck import AgentCheckServer
from .haproxy import HAProxy, HAProxyError, Member, backend_name, exit_text, render
from .hostsetup import StartupError
from .transparent import HostRouting, RoutingError, plan_for
from .model import ElectionView
from .states import State

if TYPE_CHECKING:
    from .agent import Agent
    from .config import Config

log = logging.getLogger("hapacs.balance")

STATS_PERIOD_S = 0.5
RESTART_DELAY_S = 2.0
FAULT_SOURCE = "haproxy"
ROUTING_FAULT_SOURCE = "proxy-routing"
ROUTING_PERIOD_S = 0.1


class Engine(Protocol):
    """What the agent asks of a balancer, whichever engine balances (Balancer: HAProxy,
    directbalancer.DirectBalancer: nftables)."""

    async def start(self) -> None: ...          # StartupError when it cannot run
    async def stop(self) -> None: ...
    async def refuses(self, new: Config) -> str | None: ...     # a reload asks first
    async def reconfigure(self, new: Config) -> None: ...
    def set_drain(self, on: bool) -> str: ...   # the answer to `hapacs drain`, or CommandRefused
    def snapshot(self) -> dict: ...             # the status's "balance" object (balance_status)


def agent_answer(view: ElectionView, health: str | None, health_ok: bool | None, drain_on: bool,
                 own_fault: str | None = None) -> str:
    """The agent-check line for one service (hapacs.agentcheck lists the words). Pure.

    `own_fault`: the FAULT this node is in because its own HAProxy is gone; its PACS is
    not the worse for it, and the other nodes' HAProxy may go on sending it associations."""
    faults = [text for text in view.faults if text != own_fault]
    if view.state == State.FAULT and (faults or not view.faults):
        return "down #FAULT: " + _plain("; ".join(faults) or "unhealthy")
    if health_ok is False:
        return f"down #check {health} is down"
    if drain_on:
        return "up drain #hapacs drain on"
    if view.maintenance:
        return "up drain #maintenance"
    if view.handover_target is not None:
        return f"up drain #handing over to {_plain(view.handover_target)}"
    return "up ready"


def _plain(text: str) -> str:
    """A description HAProxy shows as is: one line of printable ASCII."""
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text)[:100]


def member_state(haproxy_status: str) -> str:
    """HAProxy's server status as one of up, drain, down, maint."""
    if haproxy_status.startswith("MAINT"):
        return "maint"
    if haproxy_status.startswith(("DRAIN", "NOLB")):
        return "drain"
    if haproxy_status.startswith("UP") or haproxy_status == "no check":
        return "up"
    return "down"


def members_of(config: Config, own_address) -> tuple[Member, ...]:
    """balance.members, or this node and every peer at their cluster addresses."""
    if config.balance.members:
        return tuple(Member(str(m.address), m.name or (config.node.name if m.address == own_address else None),
                            m.address) for m in config.balance.members)
    return ((Member(str(own_address), config.node.name, own_address),)
            + tuple(Member(str(p), None, p) for p in config.cluster.peers))


def held_vips(agent: Agent) -> set[str]:
    """The addresses (without prefix length) of the VIPs this node holds now."""
    return {v.address.split("/")[0] for v in agent.vips.statuses() if v.held}


def balance_status(agent: Agent, config: Config, members: tuple[Member, ...], member_fields, **extra) -> dict:
    """The status JSON's "balance" object (docs/status-json.md), whichever engine balances: each
    service, `active` where this node holds its VIP, with its members named as configured or as
    heard; `member_fields(service, member)` gives what the engine knows of a member (its state,
    counts), `extra` what it knows of itself."""
    held = held_vips(agent)
    names = {address: name for name, address in agent.book.peer_addresses.items()}
    services = [{"name": s.name, "address": str(s.address), "port": s.port, "active": str(s.address) in held,
                 "members": [{"name": m.name or names.get(m.server, m.server), "address": m.server,
                              **member_fields(s, m)} for m in members]}
                for s in config.balance.services]
    return {"mode": config.balance.mode, "active": any(s["active"] for s in services), **extra,
            "services": services}


class OwnFault:
    """A FAULT a balancer puts its node in (its HAProxy gone, nft refusing its table): the text
    while it lasts (None when not), given to the core on each `set`."""

    def __init__(self, agent: Agent, source: str, recovered: str):
        self.agent, self.source, self.recovered = agent, source, recovered
        self.text: str | None = None

    def set(self, text: str | None) -> None:
        self.text = text
        self.agent.feed(lambda now: self.agent.core.set_fault(self.source, text, now, self.recovered))


class Balancer:
    def __init__(self, agent: Agent):
        self.agent = agent
        self.config = agent.config
        self.members = members_of(self.config, agent.own_address)
        self.haproxy = HAProxy(self.config.node.state_dir)
        self.server = AgentCheckServer(str(agent.own_address), self.config.balance.agent_port, self.answer)
        self.drain_on = False
        self.stats: dict[tuple[str, str], tuple[str, int, int]] = {}
        self._stopping = False
        self.haproxy_fault = OwnFault(agent, FAULT_SOURCE, "HAProxy runs again")
        self.routing = HostRouting()
        self.routing_fault = OwnFault(agent, ROUTING_FAULT_SOURCE, "the proxy's routing is set up")
        self._routing_lock = asyncio.Lock()     # the routing loop, a reload and stop take turns

    async def start(self) -> None:
        try:
            if self._plan(self.config) is None:
                await self._unroute(stale=True)     # left by an agent that was killed with transparent on
            await self._route()
        except RoutingError as err:
            await self._unroute()
            raise StartupError(f"balance: {err}") from None
        try:
            await self.haproxy.start(self._render())
        except (HAProxyError, OSError) as err:
            await self._unroute()
            raise StartupError(f"balance: {err}") from None
        try:
            await self.server.start()
        except OSError as err:
            await self.haproxy.stop()
            await self._unroute()
            raise StartupError(f"balance: cannot answer HAProxy's agent-check on {self.agent.own_address} port "
                               f"{self.config.balance.agent_port} (balance.agent_port): {err.strerror or err}") from None
        log.info("balancing %s with HAProxy over %s", ", ".join(
            f"{s.name} ({s.address}:{s.port} -> :{s.target_port}, {s.schedule})" for s in self.config.balance.services),
            ", ".join(m.server for m in self.members))
        self.agent.start_task(self._watch(), "haproxy")
        self.agent.start_task(self._poll(), "haproxy-stats")
        self.agent.start_task(self._follow_vip(), "proxy-routing")

    async def stop(self) -> None:
        self._stopping = True
        await self.server.stop()
        await self.haproxy.stop()
        await self._unroute()

    # --- the host's routing for transparent and outgoing_from_vip ----------------------

    def _plan(self, config: Config):
        members = members_of(config, self.agent.own_address)
        return plan_for(config.balance, tuple(m.server for m in members),
                        config.balance is not None and str(config.balance.vip) in held_vips(self.agent))

    async def _route(self) -> None:
        """Bring the host's routing to what the configuration and the VIP's place ask (RoutingError)."""
        async with self._routing_lock:
            plan = self._plan(self.config)
            if plan is None:
                if self.routing.applied is not None:
                    await self.routing.remove()
                    log.info("balance: transparent routing and outgoing_from_vip removed")
            elif plan != self.routing.applied:
                await self.routing.apply(plan)
                log.info("balance: routing for %s set up (%s)", " and ".join(
                    what for what, on in (("client_address transparent", plan.transparent),
                                          ("outgoing_from_vip", plan.outgoing_from_vip)) if on),
                    "this node holds the VIP" if plan.vip_here else f"workstations reached via {plan.vip}")

    async def _unroute(self, stale: bool = False) -> None:
        """Remove hapacs's routing; `stale`: also when this agent set none up (only where nft exists)."""
        if self._plan(self.config) is None and self.routing.applied is None \
                and not (stale and shutil.which(nftcommand.NFT)):
            return
        async with self._routing_lock:
            try:
                await self.routing.remove()
            except RoutingError as err:
                log.error("balance: %s", err)

    async def _follow_vip(self) -> None:
        """The return routes and the SNAT to the VIP follow the VIP; a refusal is a FAULT until it passes."""
        while True:
            await asyncio.sleep(ROUTING_PERIOD_S)
            try:
                await self._route()
            except RoutingError as err:
                if self.routing_fault.text is None:
                    log.error("balance: %s", err)
                    self.routing_fault.set(str(err))
                await asyncio.sleep(RESTART_DELAY_S)
                continue
            except Exception:     # a bug here must not leave the return routes where the VIP was
                log.exception("balance: internal error while following the VIP with the routing; trying again")
                await asyncio.sleep(RESTART_DELAY_S)
                continue
            if self.routing_fault.text is not None:
                self.routing_fault.set(None)

    def _render(self) -> str:
        return render(self.config.balance, self.members, self.config.node.state_dir)

    async def refuses(self, new: Config) -> str | None:
        """Why HAProxy would refuse the configuration written from `new` (a reload asks first)."""
        if new.balance is None or new.balance == self.config.balance:
            return None
        try:
            await self.haproxy.check(render(new.balance, members_of(new, self.agent.own_address),
                                            new.node.state_dir), install=False)
        except (HAProxyError, OSError) as err:
            return f"balance: {err}"
        plan = self._plan(new)
        if plan is not None:
            try:
                await self.routing.check(plan)
            except RoutingError as err:
                return f"balance: {err}"
        return None

    async def reconfigure(self, new: Config) -> None:
        """A reload: a changed balance section reloads HAProxy (open associations stay)."""
        old, self.config = self.config, new
        self.members = members_of(new, self.agent.own_address)
        if old.balance == new.balance and old.cluster.peers == new.cluster.peers:
            return
        try:
            await self._route()     # before HAProxy connects from the workstations' addresses
        except RoutingError as err:
            log.error("balance: %s", err)   # the routing loop retries it, in FAULT meanwhile
        try:
            await self.haproxy.reload(self._render())
            log.info("balance: HAProxy reloaded with the new configuration")
        except (HAProxyError, OSError) as err:
            log.error("balance: HAProxy keeps its old configuration: %s", err)

    # --- HAProxy's life -----------------------------------------------------------

    async def _watch(self) -> None:
        """HAProxy gone: FAULT (no VIP here) and a new start every RESTART_DELAY_S until it runs."""
        while True:
            code = await self.haproxy.wait()
            if self._stopping:
                return
            log.error("balance: HAProxy exited (%s): %s", exit_text(code), self.haproxy.log_tail(3))
            self.haproxy_fault.set(f"HAProxy exited ({exit_text(code)})")
            while not self.haproxy.running:
                await asyncio.sleep(RESTART_DELAY_S)
                try:
                    await self.haproxy.start(self._render())
                except (HAProxyError, OSError) as err:
                    log.error("balance: HAProxy does not start again: %s", err)
            log.info("balance: HAProxy runs again")
            self.haproxy_fault.set(None)

    async def _poll(self) -> None:
        while True:
            try:
                self.stats = {(s.backend, s.server): (s.status, s.current, s.total)
                              for s in await self.haproxy.stats()} if self.haproxy.running else {}
            except (OSError, ValueError, KeyError) as err:
                log.debug("balance: no statistics from HAProxy: %s", err)
            await asyncio.sleep(STATS_PERIOD_S)

    # --- the agent-check, drain and status ------------------------------------------

    def answer(self, service_name: str) -> str | None:
        service = next((s for s in self.config.balance.services if s.name == service_name), None)
        if service is None:
            return None
        agent = self.agent
        now = agent.loop.time()
        health_ok = None
        if service.health is not None and agent.checks is not None:
            health_ok = next((c.ok for c in agent.checks.snapshot(now) if c.name == service.health), None)
        return agent_answer(agent.core.view(now), service.health, health_ok, self.drain_on,
                            self.haproxy_fault.text)

    def set_drain(self, on: bool) -> str:
        before, self.drain_on = self.drain_on, on
        if before == on:
            return f"drain was already {'on' if on else 'off'}"
        log.info("balance: drain %s by command", "on" if on else "off")
        return ("drain on: this node's PACS takes no new association from the balancer; open ones finish"
                if on else "drain off: this node's PACS takes new associations again")

    def snapshot(self) -> dict:
        """The status JSON's "balance" object, with what this node's HAProxy counts per member."""
        def member_fields(service, member: Member) -> dict:
            status, current, total = self.stats.get((backend_name(service), member.server), ("DOWN", 0, 0))
            return {"state": member_state(status), "associations": current, "total": total}
        return balance_status(self.agent, self.config, self.members, member_fields,
                              drain=self.drain_on, agent_check_bad_requests=self.server.bad_requests)


async def start(agent: Agent) -> Engine | None:
    """The balancer of balance.mode, started, when balance: is configured (StartupError if it
    cannot run): HAProxy here, or the kernel's direct routing (hapacs.directbalancer)."""
    if agent.config.balance is None:
        return None
    if agent.config.balance.mode == "direct":
        from .directbalancer import DirectBalancer    # imports this module: loaded only when used
        balancer: Engine = DirectBalancer(agent)
    else:
        balancer = Balancer(agent)
    await balancer.start()
    return balancer
