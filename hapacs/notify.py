"""Run the operator's notify command (`notify.command`) on every state transition.

The command is an argv (no shell) and gets the transition in its environment:

    HAPACS_NODE         this node's name
    HAPACS_STATE        the new state: INIT, BACKUP, MASTER or FAULT
    HAPACS_PREV_STATE   the state before
    HAPACS_REASON       the transition's reason, one sentence
    HAPACS_REASON_CODE  the same as a code (master-down, handover-to-me, ...)
    HAPACS_VIPS         the configured VIPs with prefix, space-separated

Commands run in transition order, one at a time, each in its own session
(process group), so `notify.timeout` kills the command and everything it
started. What it must never do: block the event loop or stop the agent.
A failure (exit status, timeout, not found, not executable) is logged once
with its reason. When the command is slower than the transitions, at most
BACKLOG transitions wait; the oldest waiting one is dropped, and logged,
so the newest state is always notified.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import subprocess
from dataclasses import dataclass

from .config import NotifyConfig
from .effects import Transition

BACKLOG = 20
CLOSE_GRACE_S = 5.0
OUTPUT_MAX_BYTES = 4096


@dataclass(frozen=True)
class _Job:
    transition: Transition
    env: dict[str, str]

    def __str__(self) -> str:
        return f"{self.transition.old.name} -> {self.transition.new.name}"


class NotifyListener:
    """An Agent listener: call it with every effect; it acts on Transition."""

    def __init__(self, config: NotifyConfig, node: str, vips: list[str], log: logging.Logger):
        self.config = config
        self.node = node
        self.vips = list(vips)
        self.log = log
        self.dropped = 0
        self._waiting: collections.deque[_Job] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._current: _Job | None = None
        self._running: asyncio.subprocess.Process | None = None
        self._closed = False

    def reconfigure(self, config: NotifyConfig, vips: list[str]) -> None:
        """After a reload: later transitions use the new command, timeout and VIPs."""
        self.config = config
        self.vips = list(vips)

    def __call__(self, effect) -> None:
        if not isinstance(effect, Transition) or self.config.command is None or self._closed:
            return
        if len(self._waiting) >= BACKLOG:
            oldest = self._waiting.popleft()
            self.dropped += 1
            self.log.warning("notify: %d transitions already wait for %s; not running it for %s",
                             BACKLOG, self.config.command[0], oldest)
        self._waiting.append(_Job(effect, self._environment(effect)))
        if self._worker is None:
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="notify")
        self._wakeup.set()

    def _environment(self, transition: Transition) -> dict[str, str]:
        return {**os.environ,
                "HAPACS_NODE": self.node,
                "HAPACS_STATE": transition.new.name,
                "HAPACS_PREV_STATE": transition.old.name,
                "HAPACS_REASON": transition.reason.text,
                "HAPACS_REASON_CODE": transition.reason.code.value,
                "HAPACS_VIPS": " ".join(self.vips)}

    async def _work(self) -> None:
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            job = self._current = self._waiting.popleft()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("notify: running %s for %s failed", self.config.command[0], job)
            finally:
                self._current = None

    async def _run(self, job: _Job) -> None:
        command = self.config.command
        # Output goes to memory files, not pipes: a background child that keeps
        # a pipe open cannot make us wait, and the first line explains a failure.
        output = os.memfd_create("hapacs-notify-output")
        try:
            try:
                process = await asyncio.create_subprocess_exec(
                    *command, stdin=subprocess.DEVNULL, stdout=output, stderr=output, env=job.env,
                    start_new_session=True)
            except OSError as err:
                self.log.warning("notify: cannot run %s for %s: %s", command[0], job, err.strerror or err)
                return
            self._running = process
            try:
                code = await asyncio.wait_for(process.wait(), self.config.timeout_s)
            except asyncio.TimeoutError:
                self._kill(process)
                self.log.warning("notify: %s for %s did not finish within %g s; killed it and its "
                                 "children", command[0], job, self.config.timeout_s)
                return
            finally:
                self._running = None
            if code == 0:
                self.log.debug("notify: %s for %s done", command[0], job)
                return
            reason = (f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
                      else f"exit status {code}")
            line = _first_line(output)
            self.log.warning("notify: %s for %s failed: %s%s", command[0], job, reason,
                             f": {line}" if line else "")
        finally:
            os.close(output)

    @staticmethod
    def _kill(process: asyncio.subprocess.Process) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)   # its session id is its pid: start_new_session
        except ProcessLookupError:
            pass

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Stop taking transitions; let the waiting ones run for up to `grace_s`, then kill what runs."""
        self._closed = True
        if self._worker is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while (self._waiting or self._current is not None) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = len(self._waiting)
        self._waiting.clear()
        running = self._running
        if running is not None:
            self._kill(running)
            self.log.warning("notify: stopping; killed %s still running after %g s", self.config.command[0],
                             grace_s)
        if left:
            self.log.warning("notify: stopping; %d transition(s) not notified", left)
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        if running is not None:
            try:
                await asyncio.wait_for(running.wait(), 1.0)
            except asyncio.TimeoutError:
                pass


def _first_line(descriptor: int) -> str:
    text = os.pread(descriptor, OUTPUT_MAX_BYTES, 0).decode("utf-8", errors="replace")
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""
