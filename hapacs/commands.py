"""The operator's commands from the control socket: status, maintenance, drain, takeover,
release, reload. Each is answered from what the core decides, never from a wait guessed here.

A command that takes time (takeover, release) gets a CommandPending effect
with the core's deadline, which the client is told at once, then the final
answer as an effect (CommandDone, or HandoverDone for a release).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from . import hostcheck, timing
from .config import ConfigError, load
from .control import Progress
from .effects import CommandDone, CommandPending, HandoverDone
from .hostsetup import skip_own_address
from .model import CommandRefused
from .reload import describe, restart_needed
from .status import render_table

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("hapacs")


class Commands:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._waiters: dict[type, list[asyncio.Future]] = {CommandDone: [], HandoverDone: []}

    def observe(self, effect) -> None:
        """An effect listener: hands the answers to the commands that wait for them."""
        waiters = self._waiters.get(type(effect))
        if waiters:
            self._waiters[type(effect)] = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(effect)

    async def handle(self, request: dict, progress: Progress) -> dict:
        agent = self.agent
        command = request["command"]
        if command == "status":
            status = agent.status()
            return {"ok": True, "status": status.to_json(), "table": render_table(status)}
        if command == "reload":
            return await self.reload(request.get("config"))
        if command == "drain":
            return self._drain(request["on"])
        before = agent.state_name()
        try:
            if command == "maintenance":
                agent.feed(lambda now: agent.core.set_maintenance(request["on"], now))
                text = f"maintenance {'on' if request['on'] else 'off'}"
            elif command == "takeover":
                done = await self._answered(CommandDone, agent.core.takeover, progress)
                text = done.text
            else:
                drain_s = float(request.get("drain_timeout_s", timing.DEFAULT_DRAIN_TIMEOUT_S))
                done = await self._answered(HandoverDone, lambda now: agent.core.release(drain_s, now), progress)
                text = f"handed over to {done.target} ({self._drain_text()})"
        except CommandRefused as err:
            return {"ok": False, "message": f"refused: {err}", "before": before, "after": agent.state_name()}
        return {"ok": True, "message": text, "before": before, "after": agent.state_name()}

    async def _answered(self, kind: type, call, progress: Progress):
        """Feed a command to the core and wait for its answer; raise CommandRefused for a no."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters[kind].append(waiter)
        try:
            effects = self.agent.feed(call)
        except CommandRefused:
            self._waiters[kind].remove(waiter)
            raise
        pending = next((e for e in effects if isinstance(e, CommandPending)), None)
        if pending is not None and not waiter.done():
            await progress(pending.deadline - loop.time())
        # The core answers by its own deadline; the grace only guards against a bug there.
        left_s = max(0.0, pending.deadline - loop.time()) if pending else 0.0
        try:
            answer = await asyncio.wait_for(waiter, left_s + timing.STOP_GRACE_S)
        except asyncio.TimeoutError:
            raise CommandRefused("no answer from the election core by its own deadline; see the log") from None
        if not answer.ok:
            raise CommandRefused(answer.text)
        return answer

    def _drain(self, on: bool) -> dict:
        """`hapacs drain on|off`: this node's PACS takes no new association from the balancer."""
        balancer = self.agent.balancer
        if balancer is None:
            return {"ok": False, "message": "refused: this node does not balance (no balance: section in "
                    f"{self.agent.config.path})"}
        try:
            return {"ok": True, "message": balancer.set_drain(on)}
        except CommandRefused as err:       # a balancer that has no drain says why
            return {"ok": False, "message": f"refused: {err}"}

    def _drain_text(self) -> str:
        drain = self.agent.book.last_drain
        if drain is None or not drain.open_at_start:
            return "no DICOM association was open"
        return (f"{drain.open_at_start} DICOM association(s) were open; waited {drain.waited_s:.1f} s, "
                + (f"cut {drain.cut}" if drain.cut else "none cut"))

    async def reload_from_signal(self) -> None:
        """SIGHUP: reload, and say in the log what came of it."""
        reply = await self.reload()
        (log.info if reply["ok"] else log.error)("SIGHUP: %s", reply["message"])

    async def reload(self, asked_path: str | None = None) -> dict:
        """Re-read the configuration; apply it whole, or refuse it whole and run on unchanged.

        Always the file the agent was started with: `hapacs reload -c OTHER` is refused
        (reading OTHER once would leave SIGHUP and the next restart reading the old file)."""
        agent = self.agent
        path = agent.config.path
        if asked_path is not None and os.path.realpath(asked_path) != os.path.realpath(path):
            return {"ok": False, "message": f"refused: this agent reads {path}, not {asked_path}; "
                    f"reload re-reads that file only. Put the change there, or restart the agent with "
                    f"-c {asked_path}"}
        try:
            new = await asyncio.to_thread(load, path)
        except ConfigError as err:
            return self._refused("the new configuration is invalid", err.problems)
        problems = await hostcheck.check(new, agent.netlink)
        if problems:
            return self._refused("the new configuration does not fit this host", problems)
        new = skip_own_address(new, agent.own_address)
        fixed = restart_needed(agent.config, new)
        if fixed:
            return {"ok": False, "message": "refused, the agent runs on unchanged: changing "
                    f"{', '.join(fixed)} needs a restart (systemctl restart hapacs)"}
        refused = await agent.balancer.refuses(new) if agent.balancer is not None else None
        if refused:
            return {"ok": False, "message": f"refused, the agent runs on unchanged: {refused}"}
        new_links = {}
        for name in new.interfaces:
            if name not in agent.links:
                link = await agent.netlink.link(name)
                if link is None:
                    return {"ok": False, "message": f"refused, the agent runs on unchanged: interface {name} "
                            "not found"}
                new_links[name] = link
        changes = describe(agent.config, new)
        await agent.apply_config(new, new_links)
        text = "reloaded: " + ("; ".join(changes) if changes else "nothing changed")
        log.info("%s", text)
        return {"ok": True, "message": text}

    @staticmethod
    def _refused(why: str, problems) -> dict:
        return {"ok": False, "message": f"refused, the agent runs on unchanged; {why}:\n"
                + "\n".join(str(p) for p in problems)}
