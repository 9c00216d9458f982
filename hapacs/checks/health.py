"""Hysteresis of health checks, and what they mean for the election. Pure.

One `CheckHealth` per configured check turns a stream of probe results into
an up/down state, like keepalived's `fall`/`rise`:

    pending --first success-------------------------------> up
    pending --fall failures in a row----------------------> down
    up      --fall failures in a row----------------------> down
    down    --rise successes in a row---------------------> up

A success while pending marks the check up at once: a node that has just
started must not wait rise x interval before it may become MASTER. Failures
while pending count towards fall, so a node whose PACS is dead from the
start goes down (FAULT) as quickly as one whose PACS dies later. A single
success while up, or a single failure while down, resets the opposite
count: alternating results never change the state (with fall >= 2).

Schedule (`next_probe_at`): a probe runs `interval_s` after the previous one
finished, except after a failure while the check is not yet down: then the
next probe runs after FAST_REPROBE_S (or the interval, if shorter). A dead
PACS is therefore confirmed about one interval after it died, not fall
intervals after: the worst case is

    interval + fall x probe time + (fall - 1) x FAST_REPROBE_S

A confirming DICOM probe first tries a plain TCP connect, which a PACS that
is gone refuses at once (a failed association costs pynetdicom 0.1 s of
clean-up). With interval 0.2 s and fall 2, a killed PACS was declared down
0.32-0.50 s after it died before that change; a hung one (each probe waits
its timeout of 0.5 s, +0.11 s) after 1.33-1.53 s. bench/checks.py measures
it again.
A check that is down goes back to the normal interval: it needs rise
successes to come up again, and probing a dead server faster gains nothing.

`aggregate` turns all checks into a `Verdict`: a fault (a check with weight
0 is down: the node may not be MASTER), a priority penalty (the sum of -weight
over down checks with a negative weight), and pending (a check with weight 0
has not passed yet: the node should not become MASTER on its own yet).

This module never reads a clock and never does I/O; the runner passes `now`
(monotonic seconds) into every call, and tests drive it with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from hapacs.status import CheckStatus

if TYPE_CHECKING:
    from hapacs.config import CheckConfig

FAST_REPROBE_S = 0.05  # delay before confirming a failure; see the module docstring


@dataclass(frozen=True)
class Change:
    """A check went up or down, and the sentence that says why."""

    name: str
    up: bool
    reason: str   # e.g. "check pacs-dicom down: connection refused (2 failures in a row)"
    at: float     # monotonic seconds


@dataclass(frozen=True)
class Verdict:
    """What the checks allow, in the terms the election takes."""

    fault: str | None = None    # names every down check with weight 0; None when none is down
    penalty: int = 0            # subtracted from the priority: sum of -weight over down checks
    pending: str | None = None  # names weight-0 checks not up yet; None when all have passed


def _in_row(message: str, number: int, plural: str) -> str:
    return f"{message} ({number} {plural} in a row)" if number > 1 else message


class CheckHealth:
    """The up/down state of one check, fed with probe results."""

    def __init__(self, check: CheckConfig):
        if check.fall < 1 or check.rise < 1:
            raise ValueError(f"check {check.name}: fall and rise must be at least 1 "
                             f"(got fall {check.fall}, rise {check.rise})")
        if check.interval_s <= 0:
            raise ValueError(f"check {check.name}: interval must be positive (got {check.interval_s})")
        self.check = check
        self.ok: bool | None = None           # None: pending, no decision yet
        self.failures_in_row = 0
        self.successes_in_row = 0
        self.latency_ms: float | None = None  # of the last result
        self.message = "not run yet"          # of the last result
        self.since: float | None = None       # when ok last changed between up and down
        self.down_reason: str | None = None   # the message that took it down, while down
        self.results = 0

    @property
    def name(self) -> str:
        return self.check.name

    @property
    def weight(self) -> int:
        return self.check.weight

    def record(self, ok: bool, latency_ms: float | None, message: str, now: float) -> Change | None:
        """Take one probe result; return a Change if the check went up or down."""
        self.results += 1
        self.latency_ms = latency_ms
        self.message = message
        if ok:
            self.successes_in_row += 1
            self.failures_in_row = 0
            if self.ok is None:
                return self._become(True, now, f"{message} (first result)" if self.results == 1
                                    else f"{message} (first success)")
            if self.ok is False and self.successes_in_row >= self.check.rise:
                return self._become(True, now, _in_row(message, self.successes_in_row, "successes"))
            return None
        self.failures_in_row += 1
        self.successes_in_row = 0
        if self.ok is not False and self.failures_in_row >= self.check.fall:
            return self._become(False, now, _in_row(message, self.failures_in_row, "failures"))
        return None

    def _become(self, up: bool, now: float, detail: str) -> Change:
        self.ok = up
        self.since = now
        self.down_reason = None if up else self.message
        return Change(self.name, up, f"check {self.name} {'up' if up else 'down'}: {detail}", now)

    @property
    def confirming(self) -> bool:
        """True after a failure that has not (yet) taken the check down."""
        return self.failures_in_row > 0 and self.ok is not False

    def next_probe_at(self, finished: float) -> float:
        """When the next probe should start, given when the last one finished."""
        if self.confirming:
            return finished + min(self.check.interval_s, FAST_REPROBE_S)
        return finished + self.check.interval_s

    def status(self, now: float) -> CheckStatus:
        """This check as the status snapshot shows it."""
        return CheckStatus(
            name=self.name, type=self.check.type, ok=self.ok, latency_ms=self.latency_ms,
            message=self.message, since_s=None if self.since is None else max(0.0, now - self.since),
            weight=self.weight)


def aggregate(healths: Iterable[CheckHealth]) -> Verdict:
    """The Verdict of all checks together (see the module docstring)."""
    healths = list(healths)
    faults = [f"check {h.name} down: {h.down_reason}" for h in healths if h.ok is False and h.weight == 0]
    penalty = sum(-h.weight for h in healths if h.ok is False and h.weight < 0)
    waiting = [h.name for h in healths if h.ok is None and h.weight == 0]
    pending = None
    if waiting:
        pending = (f"waiting for check {waiting[0]} to pass" if len(waiting) == 1
                   else f"waiting for checks {', '.join(waiting)} to pass")
    return Verdict(fault="; ".join(faults) or None, penalty=penalty, pending=pending)
