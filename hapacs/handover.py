"""Moving the MASTER role on purpose: handovers, preemption and operator takeovers. Pure.

Three sub-state machines, each with its phases named and its own deadline:

* `Handover` (on a MASTER): DRAINING -> RELEASING -> done.
  DRAINING: the shell waits until no DICOM association is open on a VIP
  (at most the drain timeout, plus `DRAIN_SLACK_S` for the shell to
  answer). RELEASING: the MASTER advertises priority 0 naming its
  successor and keeps the VIPs until it hears the successor as MASTER
  (make before break), at most `handover_wait_s`.
* `Preemption` (on a better BACKUP): IDLE -> WAITING (preempt_delay) ->
  REQUESTING (its heartbeats ask the MASTER to hand over).
* `TakeoverRequest` (on the node where an operator typed `takeover`):
  IDLE -> ASKING until this node is MASTER, or its deadline passes.

A handover that a peer asked for (preemption, takeover) is abandoned
while DRAINING when the peer stops asking: a request nobody makes any
more must not move the VIPs later.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import timing


class HandoverPhase(enum.Enum):
    DRAINING = "draining"
    RELEASING = "releasing"


@dataclass
class Handover:
    target: str
    manual: bool               # an operator's command: the new MASTER is sticky
    for_shutdown: bool
    why: str
    asked_by_peer: bool        # preemption or a takeover request, not this node's own decision
    deadline: float            # DRAINING: when to stop waiting for the drain; RELEASING: for the successor
    phase: HandoverPhase = HandoverPhase.DRAINING
    cut: int = 0

    @property
    def releasing(self) -> bool:
        return self.phase == HandoverPhase.RELEASING

    @classmethod
    def draining(cls, target: str, manual: bool, for_shutdown: bool, why: str, asked_by_peer: bool,
                 drain_timeout_s: float, now: float) -> Handover:
        return cls(target, manual, for_shutdown, why, asked_by_peer,
                   now + drain_timeout_s + timing.DRAIN_SLACK_S)

    def release(self, target: str, cut: int, wait_s: float, now: float) -> None:
        """Drained: advertise priority 0 naming `target`, and wait for it."""
        self.target, self.cut = target, cut
        self.phase = HandoverPhase.RELEASING
        self.deadline = now + wait_s


class PreemptPhase(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"          # preempt_delay runs
    REQUESTING = "requesting"    # heartbeats carry TAKEOVER_REQUEST


class Preemption:
    def __init__(self) -> None:
        self.phase = PreemptPhase.IDLE
        self.since: float | None = None

    def reset(self) -> None:
        self.phase, self.since = PreemptPhase.IDLE, None

    def advance(self, now: float, delay_s: float) -> bool:
        """Preemption is wanted now: True when the request starts at this moment."""
        if self.phase == PreemptPhase.IDLE:
            self.phase, self.since = PreemptPhase.WAITING, now
        if self.phase == PreemptPhase.WAITING and now >= self.since + delay_s:
            self.phase = PreemptPhase.REQUESTING
            return True
        return False

    @property
    def requesting(self) -> bool:
        return self.phase == PreemptPhase.REQUESTING

    def deadline(self, delay_s: float) -> float | None:
        return self.since + delay_s if self.phase == PreemptPhase.WAITING else None


class TakeoverRequest:
    """`hapacs takeover` on a BACKUP: ask the MASTER until this node is MASTER or time runs out."""

    def __init__(self) -> None:
        self.deadline: float | None = None

    @property
    def asking(self) -> bool:
        return self.deadline is not None

    def ask(self, now: float, wait_s: float) -> None:
        self.deadline = now + wait_s

    def stop(self) -> bool:
        """Stop asking; True if it was asking."""
        asking, self.deadline = self.asking, None
        return asking
