"""Logging set-up and a rate limiter for lines a flood could repeat."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "info", node: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"hapacs[{node}]" if node else "hapacs"
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Libraries log every association or netlink retry; we log what matters ourselves.
    for noisy in ("pynetdicom", "pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# How often one kind of noise (a dropped heartbeat, a bad request) may reach the log.
LOG_PERIOD_S = 10.0


class RateLimited:
    """At most one line per key and period; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, period_s: float = LOG_PERIOD_S):
        self.logger, self.period_s = logger, period_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, now: float, message: str, *args) -> None:
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            message += f" ({held} more like this in the last {self.period_s:g} s)"
        self.logger.warning(message, *args)
