"""RFC 5798 6.4.2's Master_Down_Timer, as a deadline computed on demand. Pure.

The timer is kept as (armed at, full interval or Skew_Time only, the
MASTER's advertisement interval). Its deadline is computed when asked,
with the skew the election gives at that moment: the skew follows what is
known of the peers (the best live candidate uses 0), so a node that learns
of a better candidate after arming waits longer without re-arming.
"""

from __future__ import annotations

from typing import Callable

from . import timing

Skew = Callable[[float], float]   # Skew_Time for a given Master_Adver_Interval


class MasterDownTimer:
    def __init__(self) -> None:
        self._armed: tuple[float, bool, float] | None = None

    @property
    def armed(self) -> bool:
        return self._armed is not None

    def deadline(self, dead_after: int, skew: Skew) -> float | None:
        """Master_Down_Interval after arming (RFC 5798 6.1), or Skew_Time only."""
        if self._armed is None:
            return None
        since, full, interval = self._armed
        return since + timing.master_down_interval_s(dead_after if full else 0, interval, skew(interval))

    def arm(self, now: float, interval_s: float) -> None:
        """Master_Down_Timer = Master_Down_Interval (a MASTER heard, or none yet)."""
        self._armed = (now, True, interval_s)

    def arm_skew_only(self, now: float, interval_s: float, dead_after: int, skew: Skew) -> None:
        """RFC 5798 6.4.2: the MASTER left (priority 0): Master_Down_Timer = Skew_Time, unless
        the timer already runs out sooner."""
        current = self.deadline(dead_after, skew)
        self._armed = (now, False, interval_s)
        if current is not None and current < self.deadline(dead_after, skew):
            self._armed = (current - skew(interval_s), False, interval_s)

    def stop(self) -> None:
        self._armed = None
