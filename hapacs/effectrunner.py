"""Carrying out the core's effects, in order, for the agent.

Synchronous effects (send a heartbeat, log, announce) run at once while
nothing is queued; VIP changes go through one worker task, which keeps the
order and never blocks the loop (netlink is asynchronous). Every effect is
then shown to the listeners (status book, commands, SNMP, notify, systemd).
A failure is logged and, where the core must know, fed back as a new event
after the effect, never from inside it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from .effects import (
    AcquireVips, Announce, CommandDone, HandoverDone, Misconfigured, Notice, PeerChange, ProbeWitness, ReleaseVips,
    SendAdvert, SplitBrain, StartDrain, Stopped, Transition,
)
from .heartbeat import ENCODE_ERRORS
from .logs import RateLimited
from .states import State

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("hapacs")


class EffectRunner:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.queue: asyncio.Queue = asyncio.Queue()
        self.busy = False
        self.vip_lock = asyncio.Lock()       # VIP changes and reloads never interleave
        self.listeners: list[Callable[[object], None]] = []
        self._limited = RateLimited(log)

    def dispatch(self, effects: list) -> None:
        """Carry out effects in order: synchronous ones at once while nothing is queued,
        the rest (netlink) through the worker, which keeps the order."""
        for index, effect in enumerate(effects):
            if self.busy or not self.queue.empty() or isinstance(effect, (AcquireVips, ReleaseVips)):
                for rest in effects[index:]:
                    self.queue.put_nowait(rest)
                return
            self.execute_now(effect)

    async def worker(self) -> None:
        agent = self.agent
        while True:
            effect = await self.queue.get()
            self.busy = True
            try:
                async with self.vip_lock:
                    if isinstance(effect, AcquireVips):
                        await agent.drainer.release_hold()   # never hold our own new connections
                        await agent.vips.acquire()
                    elif isinstance(effect, ReleaseVips):
                        await agent.vips.release()
                self.execute_now(effect)
            except Exception:
                log.exception("carrying out %s failed", type(effect).__name__)
            finally:
                self.busy = self.queue.qsize() > 0

    def execute_now(self, effect) -> None:
        try:
            self._execute(effect)
        except Exception:
            log.exception("carrying out %s failed", type(effect).__name__)
        for listener in self.listeners:
            try:
                listener(effect)
            except Exception:
                log.exception("a status listener failed")

    def _execute(self, effect) -> None:
        """The synchronous part of every effect (VIP changes were awaited before)."""
        agent = self.agent
        if isinstance(effect, SendAdvert):
            self._send(effect)
        elif isinstance(effect, Transition):
            level = logging.WARNING if effect.new == State.FAULT else logging.INFO
            log.log(level, "%s -> %s: %s", effect.old.name, effect.new.name, effect.reason.text)
        elif isinstance(effect, Announce):
            log.info("announcing the VIPs again: %s", effect.why)
            agent.vips.announce()
        elif isinstance(effect, StartDrain):
            agent.start_task(self._drain(effect), "drain")
        elif isinstance(effect, HandoverDone):
            (log.info if effect.ok else log.warning)("handover: %s", effect.text)
            agent.start_task(agent.drainer.release_hold(retry_later=True), "release-hold")
        elif isinstance(effect, CommandDone):
            (log.info if effect.ok else log.warning)("%s: %s", effect.command, effect.text)
        elif isinstance(effect, PeerChange):
            (log.info if effect.up else log.warning)("%s", effect.text)
        elif isinstance(effect, SplitBrain):
            log.warning("split brain: %s", effect.text)
        elif isinstance(effect, Misconfigured):
            # An ERROR: a mistake in a configuration file that would otherwise give two MASTERs.
            (log.info if effect.gone else log.error)("%s", effect.text)
        elif isinstance(effect, (Notice, Stopped)):
            log.info("%s", effect.text)
        elif isinstance(effect, ProbeWitness) and agent.witness is not None:
            agent.witness.request()
        if isinstance(effect, Stopped):
            agent.stopped.set()

    def _send(self, effect: SendAdvert) -> None:
        agent = self.agent
        try:
            data = agent.writer.encode(effect.advert, agent.config.cluster.advert_interval_s, agent.vip_digest,
                                       agent.keys[0])
        except ENCODE_ERRORS as err:
            # Cannot happen with valid state; if it does, a node that cannot speak holds nothing.
            reason = f"cannot send heartbeats: {err}"
            log.error("%s: going to FAULT", reason)
            agent.loop.call_soon(agent.feed, lambda now: agent.core.set_fault("heartbeat", reason, now))
            return
        failed = agent.transport.send(data)
        agent.book.sent()
        if failed:
            self._limited.warning("send", agent.loop.time(), "cannot send a heartbeat: %s",
                                  agent.transport.last_error)

    async def _drain(self, effect: StartDrain) -> None:
        agent = self.agent
        result = await agent.drainer.drain(effect.timeout_s)
        agent.book.drained(result, agent.loop.time())
        if result.open_at_start:
            (log.warning if result.cut else log.info)(
                "drained for %.2f s: %d DICOM association(s) were open, %d still open now and cut by the "
                "handover", result.waited_s, result.open_at_start, result.cut)
        agent.feed(lambda now: agent.core.drained(result.cut, now))
        if agent.core.view(agent.loop.time()).handover_target is None:
            # Abandoned meanwhile (a fault, a stop, a withdrawn request): hold nothing.
            await agent.drainer.release_hold(retry_later=True)
