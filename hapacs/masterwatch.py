"""A BACKUP watching its MASTER (RFC 5798 6.4.2): when is the MASTER gone, and may this node
take over? Pure.

It owns the Master_Down_Timer and what explains its firing (the MASTER
that stepped down, the better candidate this node defers to). When the
timer fires it asks, in order: is a better candidate about to take over
(defer, bounded)? Is there a quorum? Must a witness confirm? Does a gate
(fault, maintenance, hold, stop) say no? Only then does it take over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import timing
from .effects import Effect, Reason, Why
from .masterdown import MasterDownTimer
from .model import Peer
from .states import Flags, State

if TYPE_CHECKING:
    from .election import Election


class MasterWatch:
    def __init__(self, owner: Election) -> None:
        self.owner = owner
        self.timer = MasterDownTimer()
        self.left: tuple[str, str] | None = None        # (peer, how) of a MASTER that stepped down
        self.deferring_since: float | None = None       # waiting for a better candidate to take over

    # --- the timer ------------------------------------------------------------------

    def deadline(self) -> float | None:
        return self.timer.deadline(self.owner.p.dead_after, self.owner.skew_s)

    def arm(self, now: float, master: Peer | None) -> None:
        """Master_Down_Timer = Master_Down_Interval of `master` (or of this node's own timers)."""
        self.timer.arm(now, master.interval_s if master else self.owner.p.advert_interval_s)

    def arm_skew_only(self, now: float, interval_s: float) -> None:
        self.timer.arm_skew_only(now, interval_s, self.owner.p.dead_after, self.owner.skew_s)

    def stop(self) -> None:
        self.timer.stop()

    def on_enter(self, new: State, now: float) -> None:
        """The owner changed state: a BACKUP watches its MASTER (if it knows one); a MASTER or a
        FAULT watches nothing; no deferral outlives the state it began in."""
        self.deferring_since = None
        if new == State.BACKUP:
            self.arm(now, self.owner.live_master())
        elif new in (State.MASTER, State.FAULT):
            self.stop()
        if new == State.MASTER:
            self.left = None

    def interval_s(self, master: Peer | None) -> float:
        """RFC 5798 6.1 Master_Down_Interval as this node counts it now (skew included)."""
        interval = master.interval_s if master else self.owner.p.advert_interval_s
        return timing.master_down_interval_s(self.owner.p.dead_after, interval, self.owner.skew_s(interval))

    # --- hearing ------------------------------------------------------------------------

    def heard(self, peer: Peer, now: float) -> list[Effect]:
        """INIT or BACKUP hears a peer."""
        owner = self.owner
        if peer.is_master:
            effects: list[Effect] = []
            owner.master = peer.name
            self.left = None
            self.deferring_since = None
            if owner.state == State.INIT:
                effects += owner.enter(State.BACKUP, Reason(Why.MASTER_HEARD, f"{peer.name} is MASTER"), now)
            self.arm(now, peer)
            return effects + owner.handoffs.consider_preempt(peer, now)
        if peer.state == State.MASTER:   # priority 0: it is leaving
            owner.master = peer.name
            if Flags.HANDOVER in peer.flags and peer.target == owner.p.name:
                manual = Flags.MANUAL in peer.flags
                return owner.become_master(Reason(Why.HANDOVER_TO_ME,
                                                  f"{peer.name} handed its VIPs to this node"), now, manual)
            if Flags.HANDOVER in peer.flags:
                # Handing over to another node; take over only if neither finishes.
                self.arm(now, peer)
            else:
                # RFC 5798 6.4.2: on priority 0, Master_Down_Timer = Skew_Time.
                self.left = (peer.name, "left MASTER (priority 0)")
                self.arm_skew_only(now, peer.interval_s)
            return []
        if peer.name == owner.master:
            # The MASTER stepped down to BACKUP, FAULT or INIT: RFC 5798 6.4.2 with priority 0.
            owner.master = None
            self.left = (peer.name, f"went to {peer.state.name}")
            self.arm_skew_only(now, peer.interval_s)
        return []

    # --- the timer fired -------------------------------------------------------------------

    def master_down(self, now: float) -> list[Effect]:
        """Master_Down_Timer fired (RFC 5798 6.4.2)."""
        owner = self.owner
        self.timer.stop()
        master = owner.peers.get(owner.master)
        reason = self.reason(master, now)
        better = owner.better_peers()
        if better:
            # A better live candidate will take over (it started its timer later, or the RFC
            # skew put it first): wait for it, but not for ever. One held until its first check
            # results (both hosts powered on together) is waited for longer: taking over first
            # would mean being preempted a moment later, or two MASTERs.
            if self.deferring_since is None:
                self.deferring_since = now
            limit = 2 * self.interval_s(master)
            if not all(peer.candidate for peer in better):
                limit = max(limit, timing.HELD_PEER_WAIT_S)
            if now < self.deferring_since + limit:
                self.arm_skew_only(now, master.interval_s if master else owner.p.advert_interval_s)
                return []
        self.deferring_since = None
        others = owner.peers.heard_recently(now, besides=owner.master)
        no_quorum = owner.guard.takeover_problem(len(others))
        if no_quorum is not None:
            self.arm(now, None)   # look again later: peers may come back
            return owner.notice_once("blocked-quorum", f"{reason.text}, but this node may not become "
                                     f"MASTER: {no_quorum}")
        if owner.guard.needs_witness(len(others), owner.peers.last_heard(owner.started_at)):
            # Hearing nobody may mean this node is the one cut off: ask a witness first.
            return [owner.guard.ask_witness(f"{reason.text}; no peer heard: a witness must confirm")]
        blocked = owner.may_become_master()
        if blocked is not None:
            effects = owner.notice_once(f"blocked-{blocked}", f"{reason.text}, but this node may not "
                                        f"become MASTER: {blocked}")
            if owner.state == State.INIT:
                effects += owner.enter(State.BACKUP, reason, now)
                self.timer.stop()
            return effects
        owner.forget_notices("blocked-")
        return owner.become_master(reason, now, sticky=False)

    def reason(self, master: Peer | None, now: float) -> Reason:
        if self.left is not None:
            return Reason(Why.MASTER_LEFT, f"MASTER {self.left[0]} {self.left[1]}")
        if master is not None and master.state == State.MASTER and master.priority == 0:
            return Reason(Why.MASTER_LEFT, f"MASTER {master.name} left without a successor")
        if master is not None:
            return Reason(Why.MASTER_DOWN, f"MASTER {master.name} silent for {now - master.last_seen:.2f} s")
        return Reason(Why.NO_MASTER, f"no MASTER heard for {now - self.owner.since:.2f} s")
