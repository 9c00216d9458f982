"""Runs the health checks for the agent's asyncio loop.

One task per check feeds probe results into its `CheckHealth` and sleeps
until `next_probe_at`. The probes block (pynetdicom, subprocess, fsync), so
they run in a dedicated thread pool with one worker per check; the event
loop, which also sends and receives the heartbeats, never waits on one.

A probe bounds itself by its timeout, but a kernel call can still hang
(statvfs on a dead NFS mount, DNS in libc). The runner therefore waits for
a probe at most timeout_s + STUCK_GRACE_S; past that it records a failure
("no answer within ...") and one more for each further such period, so a
hung probe still takes the check down after `fall` periods. It never starts
a second run of a check while the first is still in its thread: a hung peer
cannot pile up threads or sockets. What the stuck probe returns in the end
is discarded (its failure has been counted already).

`on_change(verdict, changes)` is called on the loop thread when the verdict
changes or a check goes up or down; each up/down is logged once with its
reason (WARNING for down, INFO for up). Times are `loop.time()`.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from hapacs.checks.health import Change, CheckHealth, Verdict, aggregate
from hapacs.checks.probes import ProbeResult, prepare, run_probe
from hapacs.config import CheckConfig
from hapacs.status import CheckStatus

STUCK_GRACE_S = 0.5  # beyond the probe's own timeout; pynetdicom overshoots by ~0.11 s


class CheckRunner:
    """Runs every configured check on the running loop; see the module docstring."""

    def __init__(self, checks: tuple[CheckConfig, ...],
                 on_change: Callable[[Verdict, list[Change]], None], log: logging.Logger,
                 probe: Callable[[CheckConfig, bool], ProbeResult] = run_probe):
        self._checks = tuple(checks)
        self._health = {check.name: CheckHealth(check) for check in self._checks}
        self._on_change = on_change
        self._log = log
        self._probe = probe  # tests may pass a stand-in; the agent uses run_probe
        self._verdict = aggregate(self._health.values())
        self._tasks: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: dict[str, asyncio.Future] = {}

    @property
    def verdict(self) -> Verdict:
        return self._verdict

    @property
    def in_flight(self) -> int:
        """Probes whose thread has not returned yet (stuck ones included)."""
        return sum(1 for future in self._in_flight.values() if not future.done())

    def start(self) -> None:
        """Start one task per check on the running loop."""
        if self._tasks:
            raise RuntimeError("CheckRunner.start() called twice")
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=max(1, len(self._checks)),
                                            thread_name_prefix="hapacs-check")
        self._tasks = [self._loop.create_task(self._run(check), name=f"check {check.name}")
                       for check in self._checks]

    async def stop(self) -> None:
        """Cancel the check tasks. A probe still in its thread is left to finish on its own."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def snapshot(self, now: float) -> tuple[CheckStatus, ...]:
        return tuple(self._health[check.name].status(now) for check in self._checks)

    async def _run(self, check: CheckConfig) -> None:
        health = self._health[check.name]
        loop = self._loop
        patience_s = check.timeout_s + STUCK_GRACE_S
        # The first import of pynetdicom (0.3-0.8 s) must not count against the patience.
        await loop.run_in_executor(self._executor, prepare, check)
        while True:
            started = loop.time()
            future = loop.run_in_executor(self._executor, self._probe, check, health.confirming)
            self._in_flight[check.name] = future
            done, _ = await asyncio.wait({future}, timeout=patience_s)
            if done:
                self._record(health, self._result_of(check, future), loop.time())
            else:
                await self._wait_out_stuck(check, health, future, started, patience_s)
            await asyncio.sleep(max(0.0, health.next_probe_at(loop.time()) - loop.time()))

    async def _wait_out_stuck(self, check, health, future, started, patience_s) -> None:
        """Count a failure per period the probe stays stuck; return once its thread has."""
        loop = self._loop
        message = f"no answer within {check.timeout_s:g} s (probe stuck)"
        while True:
            elapsed_s = loop.time() - started
            self._record(health, ProbeResult(False, elapsed_s * 1000.0, message), loop.time())
            done, _ = await asyncio.wait({future}, timeout=patience_s)
            if done:
                late = self._result_of(check, future)
                self._log.debug("check %s: stuck probe returned after %.1f s: %s (not counted)",
                                check.name, loop.time() - started, late.message)
                return
            message = (f"no answer within {check.timeout_s:g} s "
                       f"(probe stuck for {loop.time() - started:.1f} s)")

    def _result_of(self, check: CheckConfig, future: asyncio.Future) -> ProbeResult:
        try:
            return future.result()
        except Exception as error:  # noqa: BLE001 - run_probe never raises; a stand-in might
            self._log.exception("check %s: probe raised", check.name)
            return ProbeResult(False, 0.0, f"{check.type} probe error: {type(error).__name__}: {error}")

    def _record(self, health: CheckHealth, result: ProbeResult, now: float) -> None:
        change = health.record(result.ok, result.latency_ms, result.message, now)
        verdict = aggregate(self._health.values())
        changes = [change] if change is not None else []
        for item in changes:
            self._log.log(logging.INFO if item.up else logging.WARNING, "%s", item.reason)
        if not changes and verdict == self._verdict:
            return
        self._verdict = verdict
        try:
            self._on_change(verdict, changes)
        except Exception:  # noqa: BLE001 - a broken callback must not stop the checks
            self._log.exception("check change callback failed")
