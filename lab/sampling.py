"""Watching who holds a VIP while a test does something else: a background thread that samples.

`BackgroundLoop` runs `_run` in a daemon thread from `start()` (or a `with` block's start) to
`stop()`, even when the test fails; `_run` must be bounded in count and time and wait on
`self._stop` between rounds. `HolderSampler` is one: which hosts have the VIP on their
interface, every `interval_s`, so a test can assert that two never held it at once.
"""

from __future__ import annotations

import threading
import time
from typing import Self


class BackgroundLoop:
    """`_run` in a daemon thread until `stop()`; a context manager that stops it on the way out."""

    name = "background-loop"

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        raise NotImplementedError


class HolderSampler(BackgroundLoop):
    """Who holds `vip` (among `hosts`, default every host of the lab), every `interval_s`, in a
    background thread bounded by `limit_s`: samples of (monotonic, holders)."""

    name = "vip-sampler"

    def __init__(self, lab, vip: str, interval_s: float = 0.05, limit_s: float = 300.0,
                 hosts: tuple[str, ...] | None = None):
        self.lab, self.vip, self.interval_s, self.limit_s, self.hosts = lab, vip, interval_s, limit_s, hosts
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self.errors: list[BaseException] = []
        super().__init__()

    def _holders(self) -> tuple[str, ...]:
        if self.hosts is None:
            return tuple(self.lab.holders(self.vip))
        return tuple(h for h in self.hosts if f"{self.vip}/" in " ".join(self.lab.addresses(h)) + " ")

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        for _ in range(int(self.limit_s / self.interval_s) + 1):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                self.samples.append((started, tuple(self.lab.holders(self.vip, self.hosts))))
            except BaseException as error:   # handed to the test through check()
                self.errors.append(error)
                return
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def since(self, mark: float) -> list[tuple[str, ...]]:
        return [holders for at, holders in self.samples if at >= mark]

    def doubles(self) -> list[tuple[float, tuple[str, ...]]]:
        """The samples with more than one holder."""
        return [(at, holders) for at, holders in self.samples if len(holders) > 1]

    def check(self, mark: float = 0.0) -> None:
        """No sample since `mark` with two holders; the sampler itself worked and kept its pace."""
        assert not self.errors, f"sampling the VIP failed: {self.errors[0]!r}"
        taken = [(at, holders) for at, holders in self.samples if at >= mark]
        assert len(taken) >= 5, f"only {len(taken)} samples"
        doubles = [(round(at - taken[0][0], 3), holders) for at, holders in taken if len(holders) > 1]
        assert not doubles, f"two VIP holders at (s, holders): {doubles[:10]}"

    def gaps_s(self) -> tuple[float, float]:
        """(mean, longest) time between samples: the pace the machine allowed."""
        times = [at for at, _ in self.samples]
        gaps = [b - a for a, b in zip(times, times[1:])] or [0.0]
        return sum(gaps) / len(gaps), max(gaps)
