"""How late the agent's timer fires: heartbeats ride on it, so this is how an operator
sees a host too loaded for its timers (status, `timer_late_ms`)."""

from __future__ import annotations

import collections


class LatenessMeter:
    """The largest timer lateness ever, over roughly the last minute, and the last notable ones."""

    WINDOW_S = 60.0
    NOTABLE_S = 0.005

    def __init__(self) -> None:
        self.max_s = 0.0
        self.notable: collections.deque[tuple[float, float]] = collections.deque(maxlen=20)
        self._window_start = 0.0
        self._current = 0.0
        self._previous = 0.0

    def record(self, late_s: float, now: float) -> None:
        late_s = max(0.0, late_s)
        if late_s > self.NOTABLE_S:
            self.notable.append((now, late_s))
        if now - self._window_start >= self.WINDOW_S:
            self._previous = self._current if now - self._window_start < 2 * self.WINDOW_S else 0.0
            self._current, self._window_start = 0.0, now
        self._current = max(self._current, late_s)
        self.max_s = max(self.max_s, late_s)

    def recent_s(self, now: float) -> float:
        if now - self._window_start >= 2 * self.WINDOW_S:
            return 0.0
        return max(self._current, self._previous)
