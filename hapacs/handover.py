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
from typing import TYPE_CHECKING

from . import timing
from .effects import CommandDone, CommandPending, Effect, HandoverDone, Notice, Reason, StartDrain, Why
from .model import CommandRefused, Peer
from .states import Flags, State

if TYPE_CHECKING:
    from .election import Election

TAKEN_OVER = "this node is MASTER now and stays MASTER (no preemption back)"


class HandoverPhase(enum.Enum):
    DRAINING = "draining"
    RELEASING = "releasing"


@dataclass
class Handover:
    target: str
    manual: bool               # an operator's command: the new MASTER is sticky
    for_shutdown: bool
    asked_by_peer: bool        # preemption or a takeover request, not this node's own decision
    deadline: float            # DRAINING: when to stop waiting for the drain; RELEASING: for the successor
    phase: HandoverPhase = HandoverPhase.DRAINING
    cut: int = 0

    @property
    def releasing(self) -> bool:
        return self.phase == HandoverPhase.RELEASING

    @classmethod
    def draining(cls, target: str, manual: bool, for_shutdown: bool, asked_by_peer: bool,
                 drain_timeout_s: float, now: float) -> Handover:
        return cls(target, manual, for_shutdown, asked_by_peer, now + drain_timeout_s + timing.DRAIN_SLACK_S)

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


class Handoffs:
    """The three machines above, driven for the election that owns them.

    The owner keeps the state and the gates; this part decides when the MASTER role moves on
    purpose and tells the owner through its transition methods. Its deadline is the earliest
    of the handover's (on a MASTER), the preempt wait's (on a BACKUP) and the takeover request's.
    """

    def __init__(self, owner: Election) -> None:
        self.owner = owner
        self.handover: Handover | None = None
        self.preemption = Preemption()
        self.takeover_request = TakeoverRequest()

    def next_deadline(self) -> float | None:
        deadlines = [self.takeover_request.deadline]
        if self.owner.state == State.MASTER and self.handover is not None:
            deadlines.append(self.handover.deadline)
        if self.owner.state in (State.INIT, State.BACKUP):
            deadlines.append(self.preemption.deadline(self.owner.p.preempt_delay_s))
        return min((d for d in deadlines if d is not None), default=None)

    def flags(self) -> tuple[Flags, str | None]:
        """What this node's heartbeat says about handoffs: flags and the target named."""
        owner = self.owner
        if owner.state == State.MASTER:
            if self.handover is not None and self.handover.releasing:
                return (Flags.HANDOVER | (Flags.MANUAL if self.handover.manual else Flags.NONE),
                        self.handover.target)
        elif owner.state in (State.INIT, State.BACKUP) and owner.master and not owner.stopped \
                and (self.takeover_request.asking or self.preemption.requesting):
            return (Flags.TAKEOVER_REQUEST | (Flags.MANUAL if self.takeover_request.asking else Flags.NONE),
                    owner.master)
        return Flags.NONE, None

    def on_enter(self, new: State, reason: Reason) -> list[Effect]:
        """The owner changed state: what that ends."""
        self.preemption.reset()
        effects: list[Effect] = []
        if new == State.MASTER:
            if self.takeover_request.stop():
                effects.append(CommandDone("takeover", True, TAKEN_OVER))
            return effects
        if self.handover is not None:
            handover, self.handover = self.handover, None
            effects.append(HandoverDone(handover.target, False,
                                        f"handover to {handover.target} abandoned: {reason.text}"))
        if new == State.FAULT and self.takeover_request.stop():
            effects.append(CommandDone("takeover", False, f"this node went to FAULT: {reason.text}"))
        return effects

    # --- a BACKUP that wants the MASTER role (RFC 5798 6.4.2, as a request) --------------

    def consider_preempt(self, master: Peer, now: float) -> list[Effect]:
        """A better BACKUP asks the MASTER to hand over, after preempt_delay."""
        owner = self.owner
        better = (owner.priority, owner.p.address) > (master.priority, master.address)
        if (not owner.p.preempt or owner.state != State.BACKUP or not better
                or owner.may_become_master() is not None or not owner.best_candidate()
                or Flags.STICKY in master.flags or Flags.MAINTENANCE in master.flags):
            self.preemption.reset()
            return []
        if not self.preemption.advance(now, owner.p.preempt_delay_s):
            return []
        return [Notice(f"priority {owner.priority} is higher than MASTER {master.name}'s {master.priority}: "
                       "asking it to hand over (preempt)"), owner.send(now)]

    def preempt_again(self, now: float) -> list[Effect]:
        """This node's priority or settings changed: preempt the MASTER now, if it should."""
        master = self.owner.live_master()
        if self.owner.state == State.BACKUP and master is not None:
            return self.consider_preempt(master, now)
        return []

    def takeover(self, now: float) -> list[Effect]:
        """`hapacs takeover`: answered by CommandDone, at once or after the MASTER hands over."""
        owner = self.owner
        if owner.faults:
            raise CommandRefused(f"this node is in FAULT ({'; '.join(owner.faults.values())}); "
                                 "it cannot become MASTER")
        if owner.stopping:
            raise CommandRefused("the agent is stopping")
        if owner.state == State.MASTER:
            if self.handover is not None:
                raise CommandRefused(f"this node is handing over to {self.handover.target}")
            owner.sticky = True
            return [Notice("already MASTER; it now stays MASTER (no preemption back)"), owner.send(now),
                    CommandDone("takeover", True, "this node is MASTER and stays MASTER (no preemption back)")]
        master = owner.live_master()
        wait = timing.takeover_wait_s(owner.p.drain_timeout_s, owner.p.dead_after, owner.p.advert_interval_s)
        if master is None:
            effects = owner.become_master(Reason(Why.COMMAND, "takeover by operator (no MASTER alive)"),
                                          now, sticky=True)
            if owner.state == State.MASTER:
                return effects + [CommandDone("takeover", True, TAKEN_OVER)]
            # Waiting for the etcd lease: answered when this node is MASTER, or at the deadline.
            self.takeover_request.ask(now, wait)
            return effects + [CommandPending("takeover", now + wait)]
        if Flags.MAINTENANCE in master.flags:
            raise CommandRefused(f"MASTER {master.name} is in maintenance; turn maintenance off there first")
        self.takeover_request.ask(now, wait)
        return [Notice(f"asking MASTER {master.name} to hand over"), owner.send(now),
                CommandPending("takeover", now + wait)]

    def cancel_takeover(self, now: float) -> list[Effect]:
        return [self.owner.send(now)] if self.takeover_request.stop() else []

    # --- a MASTER that hands over -----------------------------------------------------------

    def heard(self, peer: Peer, now: float) -> list[Effect]:
        """The MASTER hears a peer that is not MASTER: a takeover request, or its withdrawal."""
        asking = Flags.TAKEOVER_REQUEST in peer.flags and peer.target == self.owner.p.name
        handover = self.handover
        if handover is not None and handover.asked_by_peer and not handover.releasing \
                and handover.target == peer.name and not asking:
            self.handover = None
            return [HandoverDone(peer.name, False, f"handover to {peer.name} abandoned: it no longer asks "
                                 "to take over"), self.owner.send(now)]
        return self._requested(peer, now) if asking else []

    def _requested(self, peer: Peer, now: float) -> list[Effect]:
        owner = self.owner
        manual = Flags.MANUAL in peer.flags
        if self.handover is not None:
            return []
        if owner.maintenance:
            return owner.notice_once(f"takeover-maint-{peer.name}",
                                     f"{peer.name} asks to take over, but maintenance is on here")
        if (owner.sticky and not manual) or not peer.candidate:
            return []
        why = "takeover asked by operator" if manual else "preempted by a higher priority"
        return self._begin(peer.name, manual, False, owner.p.drain_timeout_s, f"{peer.name}: {why}", now,
                           asked_by_peer=True)

    def _begin(self, target: str, manual: bool, for_shutdown: bool, timeout_s: float, why: str,
               now: float, asked_by_peer: bool = False) -> list[Effect]:
        self.handover = Handover.draining(target, manual, for_shutdown, asked_by_peer, timeout_s, now)
        return [Notice(f"handing over to {target} ({why}): draining DICOM associations for up to "
                       f"{timeout_s:g} s"), StartDrain(target, timeout_s)]

    def release(self, drain_timeout_s: float, now: float) -> list[Effect]:
        """`hapacs release`: hand the VIPs to the best BACKUP; answered by HandoverDone."""
        owner = self.owner
        if owner.state != State.MASTER:
            raise CommandRefused(f"this node is {owner.state.name}, not MASTER: it holds no VIP to release")
        if self.handover is not None:
            raise CommandRefused(f"a handover to {self.handover.target} is already under way")
        best = owner.peers.best_backup()
        if best is None:
            raise CommandRefused("no healthy BACKUP to hand over to" + owner.peers.summary(now))
        owner.sticky = False
        wait = timing.release_wait_s(drain_timeout_s, owner.p.dead_after, owner.p.advert_interval_s)
        return [CommandPending("release", now + wait)] + self._begin(
            best.name, True, False, drain_timeout_s, "release by operator", now)

    def shutdown(self, drain_timeout_s: float, now: float) -> list[Effect] | None:
        """A MASTER that stops hands over first; None when there is nobody to hand to."""
        if self.handover is not None:
            self.handover.for_shutdown = True
            return []
        best = self.owner.peers.best_backup()
        if best is None:
            return None
        return self._begin(best.name, False, True, drain_timeout_s, "agent stopping", now)

    def drained(self, cut: int, now: float) -> list[Effect]:
        """The shell finished draining: advertise priority 0 naming the successor."""
        owner, handover = self.owner, self.handover
        if handover is None or handover.releasing or owner.state != State.MASTER:
            return []
        target = owner.peers.get(handover.target)
        if target is None or not target.candidate:
            target = owner.peers.best_backup()
            if target is None:
                self.handover = None
                text = f"{handover.target} is no longer a healthy BACKUP and no other is; staying MASTER"
                if handover.for_shutdown:
                    return [HandoverDone(None, False, text, cut)] + owner.finish_stop(
                        "agent stopping: no healthy BACKUP to hand over to", now)
                return [HandoverDone(None, False, text, cut)]
        handover.release(target.name, cut, timing.handover_wait_s(owner.p.dead_after, owner.p.advert_interval_s),
                         now)
        return [owner.send(now)]

    def successor_heard(self, peer: Peer, now: float) -> list[Effect] | None:
        """Another MASTER heard: the end of a handover (make before break), or None if none runs."""
        owner, handover = self.owner, self.handover
        if handover is None or not handover.releasing:
            return None
        self.handover = None
        effects = owner.enter(State.BACKUP, Reason(Why.HANDED_OVER, f"handed over to {peer.name}"), now)
        owner.follow(peer, now)
        effects.append(HandoverDone(peer.name, True, f"{peer.name} is MASTER now", handover.cut))
        if handover.for_shutdown:
            effects += owner.finish_stop(f"agent stopping: handed over to {peer.name}", now)
        return effects

    def on_timer(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        request = self.takeover_request
        if request.asking and now >= request.deadline:
            request.stop()
            owner = self.owner
            waited = timing.takeover_wait_s(owner.p.drain_timeout_s, owner.p.dead_after, owner.p.advert_interval_s)
            effects += [CommandDone("takeover", False, f"{owner.master or 'the MASTER'} did not hand over "
                                    f"within {waited:g} s; no longer asking"), owner.send(now)]
        if self.owner.state == State.MASTER and self.handover is not None and now >= self.handover.deadline:
            effects += self._handover_due(now)
        return effects

    def _handover_due(self, now: float) -> list[Effect]:
        owner, handover = self.owner, self.handover
        if not handover.releasing:
            # The shell never answered the drain: go on as if drained, cutting what is open.
            return [Notice(f"the drain did not finish within its timeout; handing over to "
                           f"{handover.target} now")] + self.drained(0, now)
        self.handover = None
        text = f"{handover.target} did not take over; staying MASTER"
        effects: list[Effect] = [HandoverDone(handover.target, False, text, handover.cut), owner.send(now)]
        if handover.for_shutdown:
            effects += owner.finish_stop("agent stopping: no BACKUP took over, VIPs released", now)
        return effects
