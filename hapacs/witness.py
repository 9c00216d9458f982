"""Witnesses: third hosts a node must reach before it may be MASTER while it hears no peer.

A node that hears nobody cannot tell "every peer died" from "I am the one
cut off". A witness (the gateway's service, the RIS) answers that: reach
one and the peers are gone; reach none and this node is isolated, so it
goes to FAULT instead of taking the VIPs a second time.

Probes reuse the health-check probes (tcp, dicom-echo), in threads, each
bounded by its timeout. They run when the election core asks
(`request()`), and every witness interval while the node hears no peer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Callable

from .config import CheckConfig, WitnessConfig

log = logging.getLogger("hapacs.witness")


def _as_check(index: int, witness: WitnessConfig) -> CheckConfig:
    return CheckConfig(name=f"witness-{index}", type=witness.type, interval_s=witness.interval_s,
                       timeout_s=witness.timeout_s, fall=1, rise=1, weight=0, host=witness.host,
                       port=witness.port, called_ae=witness.called_ae, calling_ae=witness.calling_ae)


class WitnessRunner:
    def __init__(self, witnesses: tuple[WitnessConfig, ...], on_result: Callable[[bool, str, float], None],
                 alone: Callable[[], bool]):
        self.checks = [_as_check(i, w) for i, w in enumerate(witnesses)]
        self.period_s = min(w.interval_s for w in witnesses)
        self.on_result = on_result
        self.alone = alone
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=len(self.checks),
                                                               thread_name_prefix="witness")
        self._task: asyncio.Task | None = None
        self.last: tuple[bool, str] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="witness")

    def request(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.period_s)
            except asyncio.TimeoutError:
                if not self.alone():
                    continue
            self._wake.clear()
            started = asyncio.get_running_loop().time()
            ok, text = await self.probe()
            if self.last is None or self.last[0] != ok:
                (log.info if ok else log.warning)("witness %s: %s", "reachable" if ok else "unreachable", text)
            self.last = (ok, text)
            self.on_result(ok, text, started)

    async def probe(self) -> tuple[bool, str]:
        """Probe every witness at once; ok if any answers."""
        from .checks.probes import run_probe
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(self._executor, run_probe, check) for check in self.checks]
        grace = max(check.timeout_s for check in self.checks) + 1.0
        done, pending = await asyncio.wait(futures, timeout=grace)
        parts = []
        ok = False
        for check, future in zip(self.checks, futures):
            where = f"{check.host}:{check.port}"
            if future in done and future.exception() is None:
                result = future.result()
                ok = ok or result.ok
                parts.append(f"{where} {result.message}")
            else:
                parts.append(f"{where} no answer within {check.timeout_s:g} s")
        return ok, "; ".join(parts)
