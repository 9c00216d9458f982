"""The election: which node is MASTER, as a pure state machine.

Events and the current time go in (`start`, `receive`, `handle_timer`,
`set_fault`, `set_checks`, commands); a list of effects comes out (send a
heartbeat, acquire or release the VIPs, a transition with its reason). It
never touches a socket, a clock or a random number: the asyncio shell
calls `handle_timer(now)` at `next_deadline()`, and tests drive it with a
fake clock.

It follows RFC 5798 (VRRPv3) with the differences that come from every
node sending heartbeats, BACKUPs included:

* Master_Down_Interval = dead_after x Master_Adver_Interval + Skew_Time
  (RFC 5798 6.1, with `dead_after` for the 3). The BACKUPs know each
  other, so the best live candidate uses a skew of 0 and the others keep
  the RFC skew behind it.
* A MASTER that leaves advertises priority 0 (RFC 5798 6.4.3); the
  BACKUPs then wait Skew_Time only. A planned handover also names its
  successor, which takes over as soon as it hears it; the old MASTER keeps
  the VIPs until it hears the new one (make before break).
* Preemption is a request, not a race: the better BACKUP asks and the
  MASTER hands over after draining DICOM associations.
* Two MASTERs that hear each other (a healed partition, a resumed hang):
  the one that became MASTER most recently (higher term) stays, because
  the workstations were told about it last; priority and address break
  ties. The loser steps down at once and the winner announces again.
* FAULT holds nothing and never becomes MASTER.

The parts, each owning its deadline (`next_deadline()` is their minimum):
`PeerTable` (who is there, RFC ranking), `MasterDownTimer`, the handover
machines of `handover.py` (handover, preemption, takeover request) and
`SplitBrainGuard` (quorum, witness). This class keeps the state, the
terms, the gates (faults, holds, maintenance) and the public API.

What each event does in each state ("-": nothing, on purpose):

| event                         | INIT / BACKUP                        | MASTER                               | FAULT           |
|-------------------------------|--------------------------------------|--------------------------------------|-----------------|
| heartbeat of a live MASTER    | BACKUP, re-arm timer, maybe preempt  | split brain: newer term stays; or    | remember MASTER |
|                               |                                      | the successor: handed over           |                 |
| priority 0 naming this node   | MASTER (handover-to-me)              | -                                    | -               |
| priority 0, or MASTER stepped | timer = Skew_Time                    | announce again                       | -               |
| down                          |                                      |                                      |                 |
| takeover request to this node | -                                    | handover: DRAINING                   | -               |
| Master_Down_Timer             | MASTER unless a gate, the quorum or  | -                                    | -               |
|                               | the witness says no                  |                                      |                 |
| fault set / all cleared       | FAULT / -                            | FAULT, VIPs released / -             | - / BACKUP      |
| release                       | refused                              | handover: DRAINING                   | refused         |
| takeover                      | ask the MASTER, or MASTER if none    | stays MASTER, sticky                 | refused         |
| shutdown                      | stopped                              | handover, then stopped               | stopped         |
"""

from __future__ import annotations

import enum

from . import timing
from .effects import (
    AcquireVips, Announce, CommandDone, CommandPending, Effect, HandoverDone, Notice, Outgoing, PeerChange,
    ProbeWitness, Reason, ReleaseVips, SendAdvert, SplitBrain, StartDrain, Stopped, Transition, Why,
)
from .guard import SplitBrainGuard
from .handover import Handover, Preemption, TakeoverRequest
from .masterdown import MasterDownTimer
from .model import CommandRefused, ElectionView, Params, Peer, PeerView
from .peertable import PeerTable
from .states import Flags, State
from .wire import Advert

__all__ = ["CommandRefused", "Election", "ElectionView", "Lifecycle", "Params", "Peer", "PeerView"]

MAX_TERM = 0xFFFFFFFF


class Lifecycle(enum.Enum):
    NEW = "new"              # constructed, not started
    RUNNING = "running"
    STOPPING = "stopping"    # shutdown asked: a MASTER hands over first
    STOPPED = "stopped"      # left the cluster: decides nothing any more


class Election:
    def __init__(self, params: Params, now: float):
        self.p = params
        self.state = State.INIT
        self.since = now
        self.lifecycle = Lifecycle.NEW
        self.max_term = 0          # the highest term heard or used
        self.master_term = 0       # this node's term while it is MASTER
        self.master: str | None = None
        self.peers = PeerTable()
        self.down_timer = MasterDownTimer()
        self.guard = SplitBrainGuard(params.witness, params.cluster_size)
        self.handover: Handover | None = None
        self.preemption = Preemption()
        self.takeover_request = TakeoverRequest()
        # The gates: any of these keeps this node from becoming MASTER on its own.
        self.faults: dict[str, str] = {}
        self.holds: dict[str, str] = {}
        self.maintenance = False
        self.penalty = 0
        self.sticky = False
        self.vip_retry_at: float | None = None
        self._started_at = now
        self.adver_deadline = now
        self._conflicts: set[str] = set()           # peers this MASTER already won a split brain against
        self._noticed: set[str] = set()             # notices said once
        self._left: tuple[str, str] | None = None   # (peer, how) of a MASTER that stepped down
        self._deferring_since: float | None = None  # waiting for a better candidate to take over

    # --- derived values -----------------------------------------------------

    @property
    def started(self) -> bool:
        return self.lifecycle != Lifecycle.NEW

    @property
    def stopping(self) -> bool:
        return self.lifecycle in (Lifecycle.STOPPING, Lifecycle.STOPPED)

    @property
    def stopped(self) -> bool:
        return self.lifecycle == Lifecycle.STOPPED

    @property
    def deciding(self) -> bool:
        return self.lifecycle in (Lifecycle.RUNNING, Lifecycle.STOPPING)

    @property
    def priority(self) -> int:
        """Effective priority: configured minus check penalties, kept in 1..254."""
        return max(1, min(254, self.p.priority - self.penalty))

    def advertised_priority(self) -> int:
        if self.stopped or (self.handover is not None and self.handover.releasing):
            return 0
        return self.priority

    @property
    def preempt_since(self) -> float | None:
        return self.preemption.since

    @property
    def witness_ok(self) -> bool | None:
        return self.guard.witness_ok

    def hears_no_peer(self) -> bool:
        return self.peers.none_up()

    def _best_candidate(self) -> bool:
        """No live candidate peer ranks above this node (priority, then address)."""
        return not self.peers.outranked((self.priority, self.p.address), besides=self.master)

    def _skew_s(self, interval_s: float) -> float:
        """RFC 5798 6.1 Skew_Time, or 0 for the best candidate (see module docstring)."""
        return 0.0 if self._best_candidate() else timing.skew_time_s(self.priority, interval_s)

    @property
    def master_down_deadline(self) -> float | None:
        return self.down_timer.deadline(self.p.dead_after, self._skew_s)

    def _arm_master_down(self, now: float, master: Peer | None) -> None:
        self.down_timer.arm(now, master.interval_s if master else self.p.advert_interval_s)

    def _arm_skew_only(self, now: float, interval_s: float) -> None:
        self.down_timer.arm_skew_only(now, interval_s, self.p.dead_after, self._skew_s)

    def _master_down_interval_s(self, master: Peer | None) -> float:
        interval = master.interval_s if master else self.p.advert_interval_s
        return timing.master_down_interval_s(self.p.dead_after, interval, self._skew_s(interval))

    def _may_become_master(self) -> str | None:
        """Why this node may not become MASTER on its own, or None if it may."""
        if self.faults:
            return "; ".join(self.faults.values())
        if self.maintenance:
            return "maintenance is on"
        if self.stopping:
            return "the agent is stopping"
        if self.holds:
            return "; ".join(self.holds.values())
        return None

    def _live_master(self) -> Peer | None:
        peer = self.peers.get(self.master)
        return peer if peer is not None and peer.is_master else None

    def _outgoing(self) -> Outgoing:
        flags = Flags.PREEMPT if self.p.preempt else Flags.NONE
        target = None
        if self.maintenance:
            flags |= Flags.MAINTENANCE
        if self.holds:
            flags |= Flags.HELD
        if self.state == State.MASTER:
            if self.sticky:
                flags |= Flags.STICKY
            if self.handover is not None and self.handover.releasing:
                flags |= Flags.HANDOVER | (Flags.MANUAL if self.handover.manual else Flags.NONE)
                target = self.handover.target
        elif self.state in (State.INIT, State.BACKUP) and self.master and not self.stopped \
                and (self.takeover_request.asking or self.preemption.requesting):
            flags |= Flags.TAKEOVER_REQUEST | (Flags.MANUAL if self.takeover_request.asking else Flags.NONE)
            target = self.master
        term = self.master_term if self.state == State.MASTER else self.max_term
        return Outgoing(self.state, self.advertised_priority(), flags, term, target)

    def _send(self, now: float) -> SendAdvert:
        self.adver_deadline = now + self.p.advert_interval_s
        return SendAdvert(self._outgoing())

    # --- transitions ----------------------------------------------------------

    def _enter(self, new: State, reason: Reason, now: float) -> list[Effect]:
        old = self.state
        if old == new:
            return []
        self.state, self.since = new, now
        self._deferring_since = None
        self.preemption.reset()
        effects: list[Effect] = [Transition(old, new, reason)]
        if new == State.MASTER:
            self.master = self.p.name
            self.down_timer.stop()
            self._left = None
            effects.append(AcquireVips(reason))
            if self.takeover_request.stop():
                effects.append(CommandDone("takeover", True, "this node is MASTER now and stays MASTER "
                                           "(no preemption back)"))
            return effects + [self._send(now)]
        self.sticky = False
        self._conflicts.clear()
        if old in (State.MASTER, State.INIT) or new == State.FAULT:
            effects.append(ReleaseVips(reason))
        if self.handover is not None:
            handover, self.handover = self.handover, None
            effects.append(HandoverDone(handover.target, False,
                                        f"handover to {handover.target} abandoned: {reason.text}"))
        if new == State.FAULT and self.takeover_request.stop():
            effects.append(CommandDone("takeover", False, f"this node went to FAULT: {reason.text}"))
        if self.master == self.p.name:
            self.master = None
        if new == State.BACKUP:
            self._arm_master_down(now, self._live_master())
        else:
            self.down_timer.stop()
        return effects + [self._send(now)]

    def _become_master(self, reason: Reason, now: float, sticky: bool) -> list[Effect]:
        # The wire carries 32 bits; at the top, ties fall to priority and address.
        self.max_term = min(self.max_term + 1, MAX_TERM)
        self.master_term = self.max_term
        sticky = sticky or self.takeover_request.asking
        effects = self._enter(State.MASTER, reason, now)
        self.sticky = sticky
        return effects

    def _finish_stop(self, text: str, now: float) -> list[Effect]:
        self.lifecycle = Lifecycle.STOPPED
        self.handover = None
        return [ReleaseVips(Reason(Why.SHUTDOWN, text)), SendAdvert(self._outgoing()), Stopped(text)]

    def _notice_once(self, key: str, text: str) -> list[Effect]:
        if key in self._noticed:
            return []
        self._noticed.add(key)
        return [Notice(text)]

    # --- events -----------------------------------------------------------------

    def start(self, now: float) -> list[Effect]:
        """INIT: send at once, listen one Master_Down_Interval before deciding."""
        self.lifecycle = Lifecycle.RUNNING
        self.since = self._started_at = now
        effects: list[Effect] = [self._send(now)]
        if self.faults and not self.maintenance:
            return effects + self._enter(State.FAULT, Reason(Why.FAULT, "; ".join(self.faults.values())), now)
        self._arm_master_down(now, None)
        return effects + self._guard(now)

    def receive(self, advert: Advert, address: bytes, now: float) -> list[Effect]:
        """A heartbeat that passed authentication and the replay check."""
        if not self.deciding:
            return []
        if advert.node == self.p.name:
            return self._notice_once("own-name", f"a heartbeat from another host carries this node's "
                                     f"name {advert.node!r}: node names must be unique in the cluster")
        effects = self._update_peer(advert, address, now)
        self.max_term = max(self.max_term, advert.term)
        peer = self.peers.get(advert.node)
        if self.state in (State.INIT, State.BACKUP):
            effects += self._backup_hears(peer, now)
        elif self.state == State.MASTER:
            effects += self._master_hears(peer, now)
        elif peer.is_master:
            # FAULT: decide nothing, but know who is MASTER for when the fault clears.
            self.master = peer.name
        return effects + self._guard(now)

    def _update_peer(self, advert: Advert, address: bytes, now: float) -> list[Effect]:
        before = self.peers.heard(advert, address, now)
        effects: list[Effect] = []
        if before is None or not before.up:
            effects.append(PeerChange(advert.node, True, f"peer {advert.node} heard: {advert.state.name}, "
                                      f"priority {advert.priority}"))
            if before is not None and self.state == State.MASTER:
                effects.append(Announce(f"peer {advert.node} is back"))
        elif before.is_master and self.state == State.MASTER and not (
                advert.state == State.MASTER and advert.priority > 0):
            # It was MASTER while this node was too (a partition or a hang): workstations on
            # its side may still point at its MAC, so announce again (keepalived often does not).
            effects.append(Announce(f"peer {advert.node} stepped down from MASTER"))
        if advert.vip_digest != self.p.vip_digest and (before is None or before.vip_digest != advert.vip_digest):
            effects.append(Notice(f"peer {advert.node} is configured with other VIPs than this node: "
                                  "compare the vips sections"))
        return effects

    def _backup_hears(self, peer: Peer, now: float) -> list[Effect]:
        """INIT or BACKUP hears a peer (RFC 5798 6.4.2)."""
        if peer.is_master:
            effects: list[Effect] = []
            self.master = peer.name
            self._left = None
            self._deferring_since = None
            if self.state == State.INIT:
                effects += self._enter(State.BACKUP, Reason(Why.MASTER_HEARD, f"{peer.name} is MASTER"), now)
            self._arm_master_down(now, peer)
            return effects + self._consider_preempt(peer, now)
        if peer.state == State.MASTER:   # priority 0: it is leaving
            self.master = peer.name
            if Flags.HANDOVER in peer.flags and peer.target == self.p.name:
                manual = Flags.MANUAL in peer.flags
                return self._become_master(Reason(Why.HANDOVER_TO_ME,
                                                  f"{peer.name} handed its VIPs to this node"), now, manual)
            if Flags.HANDOVER in peer.flags:
                # Handing over to another node; take over only if neither finishes.
                self._arm_master_down(now, peer)
            else:
                # RFC 5798 6.4.2: on priority 0, Master_Down_Timer = Skew_Time.
                self._left = (peer.name, "left MASTER (priority 0)")
                self._arm_skew_only(now, peer.interval_s)
            return []
        if peer.name == self.master:
            # The MASTER stepped down to BACKUP, FAULT or INIT: RFC 5798 6.4.2 with priority 0.
            self.master = None
            self._left = (peer.name, f"went to {peer.state.name}")
            self._arm_skew_only(now, peer.interval_s)
        return []

    def _consider_preempt(self, master: Peer, now: float) -> list[Effect]:
        """A better BACKUP asks the MASTER to hand over, after preempt_delay (RFC 5798 6.4.2)."""
        better = (self.priority, self.p.address) > (master.priority, master.address)
        if (not self.p.preempt or self.state != State.BACKUP or not better
                or self._may_become_master() is not None or not self._best_candidate()
                or Flags.STICKY in master.flags or Flags.MAINTENANCE in master.flags):
            self.preemption.reset()
            return []
        if not self.preemption.advance(now, self.p.preempt_delay_s):
            return []
        return [Notice(f"priority {self.priority} is higher than MASTER {master.name}'s {master.priority}: "
                       "asking it to hand over (preempt)"), self._send(now)]

    def _master_hears(self, peer: Peer, now: float) -> list[Effect]:
        """MASTER hears a peer (RFC 5798 6.4.3)."""
        if peer.is_master:
            if self.handover is not None and self.handover.releasing:
                return self._handed_over(peer, now)
            return self._two_masters(peer, now)
        self._conflicts.discard(peer.name)
        asking = Flags.TAKEOVER_REQUEST in peer.flags and peer.target == self.p.name
        handover = self.handover
        if handover is not None and handover.asked_by_peer and not handover.releasing \
                and handover.target == peer.name and not asking:
            return self._abandon_handover(f"{peer.name} no longer asks to take over", now)
        if asking:
            return self._takeover_requested(peer, now)
        return []

    def _two_masters(self, peer: Peer, now: float) -> list[Effect]:
        mine = (self.maintenance, self.master_term, self.advertised_priority(), self.p.address)
        theirs = (Flags.MAINTENANCE in peer.flags, peer.term, peer.priority, peer.address)
        why = self._why_wins(mine, theirs)
        if mine > theirs:
            if peer.name in self._conflicts:
                return []
            self._conflicts.add(peer.name)
            text = f"{peer.name} is also MASTER; this node stays MASTER ({why})"
            return [SplitBrain(peer.name, self.p.name, text), Announce(text), self._send(now)]
        text = f"{peer.name} is also MASTER and stays MASTER ({why})"
        effects: list[Effect] = [SplitBrain(peer.name, peer.name, text)]
        effects += self._enter(State.BACKUP, Reason(Why.SPLIT_BRAIN, text), now)
        self.master = peer.name
        self._arm_master_down(now, peer)
        return effects

    @staticmethod
    def _why_wins(mine, theirs) -> str:
        labels = ("maintenance is on", "became MASTER more recently", "higher priority", "higher address")
        for label, a, b in zip(labels, mine, theirs):
            if a != b:
                return label
        return "identical"

    # --- handovers (the phases are in handover.py) ------------------------------------

    def _takeover_requested(self, peer: Peer, now: float) -> list[Effect]:
        manual = Flags.MANUAL in peer.flags
        if self.handover is not None:
            return []
        if self.maintenance:
            return self._notice_once(f"takeover-maint-{peer.name}",
                                     f"{peer.name} asks to take over, but maintenance is on here")
        if (self.sticky and not manual) or not peer.candidate:
            return []
        why = "takeover asked by operator" if manual else "preempted by a higher priority"
        return self._begin_handover(peer.name, manual, False, self.p.drain_timeout_s, f"{peer.name}: {why}",
                                    now, asked_by_peer=True)

    def _begin_handover(self, target: str, manual: bool, for_shutdown: bool, timeout_s: float, why: str,
                        now: float, asked_by_peer: bool = False) -> list[Effect]:
        self.handover = Handover.draining(target, manual, for_shutdown, why, asked_by_peer, timeout_s, now)
        return [Notice(f"handing over to {target} ({why}): draining DICOM associations for up to "
                       f"{timeout_s:g} s"), StartDrain(target, timeout_s)]

    def drained(self, cut: int, now: float) -> list[Effect]:
        """The shell finished draining: advertise priority 0 naming the successor."""
        handover = self.handover
        if handover is None or handover.releasing or self.state != State.MASTER:
            return []
        target = self.peers.get(handover.target)
        if target is None or not target.candidate:
            best = self.peers.best_backup()
            if best is None:
                self.handover = None
                text = f"{handover.target} is no longer a healthy BACKUP and no other is; staying MASTER"
                if handover.for_shutdown:
                    return [HandoverDone(None, False, text, cut)] + self._finish_stop(
                        "agent stopping: no healthy BACKUP to hand over to", now)
                return [HandoverDone(None, False, text, cut)]
            target = best
        handover.release(target.name, cut, timing.handover_wait_s(self.p.dead_after, self.p.advert_interval_s),
                         now)
        return [self._send(now)]

    def _handed_over(self, peer: Peer, now: float) -> list[Effect]:
        handover, self.handover = self.handover, None
        effects = self._enter(State.BACKUP, Reason(Why.HANDED_OVER, f"handed over to {peer.name}"), now)
        self.master = peer.name
        self._arm_master_down(now, peer)
        effects.append(HandoverDone(peer.name, True, f"{peer.name} is MASTER now", handover.cut))
        if handover.for_shutdown:
            effects += self._finish_stop(f"agent stopping: handed over to {peer.name}", now)
        return effects

    def _handover_timer(self, now: float) -> list[Effect]:
        handover = self.handover
        if handover is None or now < handover.deadline:
            return []
        if not handover.releasing:
            # The shell never answered the drain: go on as if drained, cutting what is open.
            return [Notice(f"the drain did not finish within its timeout; handing over to "
                           f"{handover.target} now")] + self.drained(0, now)
        self.handover = None
        text = f"{handover.target} did not take over; staying MASTER"
        effects: list[Effect] = [HandoverDone(handover.target, False, text, handover.cut), self._send(now)]
        if handover.for_shutdown:
            effects += self._finish_stop("agent stopping: no BACKUP took over, VIPs released", now)
        return effects

    def _abandon_handover(self, why: str, now: float) -> list[Effect]:
        handover, self.handover = self.handover, None
        return [HandoverDone(handover.target, False, f"handover to {handover.target} abandoned: {why}"),
                self._send(now)]

    # --- timers --------------------------------------------------------------------------

    def handle_timer(self, now: float) -> list[Effect]:
        if not self.deciding:
            return []
        effects: list[Effect] = []
        for peer in self.peers.expire(now, self.p.dead_after):
            self._conflicts.discard(peer.name)
            effects.append(PeerChange(peer.name, False, f"peer {peer.name} silent for {now - peer.last_seen:.2f} s"))
        if self.vip_retry_at is not None and now >= self.vip_retry_at:
            self.vip_retry_at = None
            effects += self.set_fault("vips", None, now, "retrying the VIPs")
        if self.takeover_request.asking and now >= self.takeover_request.deadline:
            effects += self._takeover_timed_out(now)
        if self.state in (State.INIT, State.BACKUP):
            deadline = self.master_down_deadline
            if deadline is not None and now >= deadline:
                effects += self._master_down(now)
            elif self.state == State.BACKUP and self._live_master() is not None:
                effects += self._consider_preempt(self._live_master(), now)
            else:
                # Nobody to preempt any more: forget the wait, or its deadline stays in the past.
                self.preemption.reset()
        elif self.state == State.MASTER:
            effects += self._handover_timer(now)
        effects += self._guard(now)
        if now >= self.adver_deadline and not self.stopped:
            effects.append(self._send(now))
        return effects

    def _takeover_timed_out(self, now: float) -> list[Effect]:
        self.takeover_request.stop()
        master = self.master or "the MASTER"
        waited = timing.takeover_wait_s(self.p.drain_timeout_s, self.p.dead_after, self.p.advert_interval_s)
        return [CommandDone("takeover", False, f"{master} did not hand over within {waited:g} s; "
                            "no longer asking"), self._send(now)]

    def _master_down(self, now: float) -> list[Effect]:
        """Master_Down_Timer fired (RFC 5798 6.4.2)."""
        self.down_timer.stop()
        master = self.peers.get(self.master)
        reason = self._master_down_reason(master, now)
        if not self._best_candidate():
            # A better live candidate will take over (it started its timer later, or the RFC
            # skew put it first): wait for it, but not for ever.
            if self._deferring_since is None:
                self._deferring_since = now
            if now < self._deferring_since + 2 * self._master_down_interval_s(master):
                self._arm_skew_only(now, master.interval_s if master else self.p.advert_interval_s)
                return []
        self._deferring_since = None
        others = self.peers.heard_recently(now, besides=self.master)
        no_quorum = self.guard.takeover_problem(len(others))
        if no_quorum is not None:
            self._arm_master_down(now, None)   # look again later: peers may come back
            return self._notice_once("blocked-quorum", f"{reason.text}, but this node may not become "
                                     f"MASTER: {no_quorum}")
        if self.guard.needs_witness(len(others), self.peers.last_heard(self._started_at)):
            # Hearing nobody may mean this node is the one cut off: ask a witness first.
            self.guard.awaiting_witness = True
            return [ProbeWitness(f"{reason.text}; no peer heard: a witness must confirm")]
        blocked = self._may_become_master()
        if blocked is not None:
            effects = self._notice_once(f"blocked-{blocked}", f"{reason.text}, but this node may not "
                                        f"become MASTER: {blocked}")
            if self.state == State.INIT:
                effects += self._enter(State.BACKUP, reason, now)
                self.down_timer.stop()
            return effects
        self._noticed = {k for k in self._noticed if not k.startswith("blocked-")}
        return self._become_master(reason, now, sticky=False)

    def _master_down_reason(self, master: Peer | None, now: float) -> Reason:
        if self._left is not None:
            return Reason(Why.MASTER_LEFT, f"MASTER {self._left[0]} {self._left[1]}")
        if master is not None and master.state == State.MASTER and master.priority == 0:
            return Reason(Why.MASTER_LEFT, f"MASTER {master.name} left without a successor")
        if master is not None:
            return Reason(Why.MASTER_DOWN, f"MASTER {master.name} silent for {now - master.last_seen:.2f} s")
        return Reason(Why.NO_MASTER, f"no MASTER heard for {now - self.since:.2f} s")

    # --- health, link and VIP results --------------------------------------------

    def set_fault(self, source: str, text: str | None, now: float, recovered: str = "") -> list[Effect]:
        """Set (text) or clear (None) one reason to be in FAULT: a link, a check, the VIPs."""
        before = dict(self.faults)
        if text is None:
            self.faults.pop(source, None)
        else:
            self.faults[source] = text
        if before == self.faults or not self.deciding:
            return []
        if self.maintenance:
            return [Notice(f"{text or recovered}: no transition while maintenance is on")]
        return self._apply_faults(now, recovered or "every fault cleared")

    def _apply_faults(self, now: float, recovered: str) -> list[Effect]:
        if self.faults and self.state != State.FAULT:
            return self._enter(State.FAULT, Reason(Why.FAULT, "; ".join(self.faults.values())), now)
        if not self.faults and self.state == State.FAULT:
            return self._enter(State.BACKUP, Reason(Why.RECOVERED, recovered), now)
        return []

    def set_checks(self, pending: str | None, penalty: int, fault: str | None, now: float) -> list[Effect]:
        """The health checks' verdict, whole: still waiting for first results (`pending`), the
        priority penalty of failing checks with a negative weight, and a FAULT reason."""
        effects = self.set_hold("checks", pending, now)
        effects += self.set_penalty(penalty, now)
        return effects + self.set_fault("checks", fault, now, "every check is up again")

    def set_hold(self, source: str, text: str | None, now: float) -> list[Effect]:
        """Keep this node from becoming MASTER on its own (e.g. checks not run yet)."""
        held = bool(self.holds)
        if text is None:
            self.holds.pop(source, None)
        else:
            self.holds[source] = text
        if held and not self.holds and self.state in (State.INIT, State.BACKUP) and not self.down_timer.armed:
            # It listened all along: with no live MASTER it takes over after the skew only.
            master = self._live_master()
            if master is None:
                self._arm_skew_only(now, self.p.advert_interval_s)
            else:
                self._arm_master_down(now, master)
        return []

    def set_penalty(self, penalty: int, now: float) -> list[Effect]:
        """Priority lowered by failing checks with a negative weight."""
        if penalty == self.penalty:
            return []
        self.penalty = penalty
        effects: list[Effect] = [self._send(now)]
        master = self._live_master()
        if self.state == State.BACKUP and master is not None:
            effects += self._consider_preempt(master, now)
        return effects

    def vip_failed(self, text: str, now: float) -> list[Effect]:
        """The shell could not add a VIP: FAULT, and try again a little later."""
        self.vip_retry_at = now + timing.VIP_RETRY_S
        return self.set_fault("vips", f"cannot hold the VIPs: {text}", now)

    def reconfigure(self, params: Params, now: float) -> list[Effect]:
        """A reloaded configuration: new priority, timers, preempt or VIP set; state stays."""
        if params.name != self.p.name:
            raise ValueError("the node name cannot change without a restart")
        self.p = params
        self.guard.reconfigure(params.witness, params.cluster_size)
        effects: list[Effect] = [self._send(now)]
        master = self._live_master()
        if self.state == State.BACKUP and master is not None:
            effects += self._consider_preempt(master, now)
        return effects

    # --- split-brain protection: quorum and witness ---------------------------------------------

    def _guard(self, now: float) -> list[Effect]:
        """Re-check quorum and isolation after every event."""
        if not self.deciding:
            return []
        effects: list[Effect] = []
        up = self.peers.up_count()
        if self.guard.cluster_size:
            text = self.guard.quorum_problem(up + 1)
            if self.state == State.MASTER or "quorum" in self.faults:
                # A MASTER without a majority releases the VIPs: the majority side elects its own.
                effects += self.set_fault("quorum", text, now, "quorum regained")
            elif (text is None) == ("quorum" in self.holds):
                effects += self.set_hold("quorum", text, now)
        heard = self.guard.hears(up, now)
        if heard == "heard" and "isolated" in self.faults:
            effects += self.set_fault("isolated", None, now, "a peer is heard again")
        elif heard == "alone":
            effects.append(ProbeWitness("no peer heard"))
        return effects

    def set_witness(self, ok: bool, text: str, now: float) -> list[Effect]:
        """A witness probe's result: `ok` if any witness answered; `text` says what failed."""
        self.guard.record(ok, now)
        others = self.peers.heard_recently(now, besides=self.master)
        if not self.guard.witness or not self.deciding or others:
            return []
        if not ok:
            self.guard.awaiting_witness = False
            return self.set_fault("isolated", f"isolated: no peer heard and no witness reachable ({text})", now)
        effects = self.set_fault("isolated", None, now, f"witness reachable ({text})")
        if self.guard.awaiting_witness and self.state in (State.INIT, State.BACKUP):
            self.guard.awaiting_witness = False
            effects += self._master_down(now)
        return effects

    # --- operator commands ------------------------------------------------------------

    def release(self, drain_timeout_s: float, now: float) -> list[Effect]:
        """Hand the VIPs to the best BACKUP; answered by HandoverDone."""
        if self.state != State.MASTER:
            raise CommandRefused(f"this node is {self.state.name}, not MASTER: it holds no VIP to release")
        if self.handover is not None:
            raise CommandRefused(f"a handover to {self.handover.target} is already under way")
        best = self.peers.best_backup()
        if best is None:
            raise CommandRefused("no healthy BACKUP to hand over to" + self.peers.summary(now))
        self.sticky = False
        wait = timing.release_wait_s(drain_timeout_s, self.p.dead_after, self.p.advert_interval_s)
        return [CommandPending("release", now + wait)] + self._begin_handover(
            best.name, True, False, drain_timeout_s, "release by operator", now)

    def takeover(self, now: float) -> list[Effect]:
        """Become MASTER now and stay; answered by CommandDone (at once, or after a handover)."""
        if self.faults:
            raise CommandRefused(f"this node is in FAULT ({'; '.join(self.faults.values())}); "
                                 "it cannot become MASTER")
        if self.stopping:
            raise CommandRefused("the agent is stopping")
        if self.state == State.MASTER:
            if self.handover is not None:
                raise CommandRefused(f"this node is handing over to {self.handover.target}")
            self.sticky = True
            return [Notice("already MASTER; it now stays MASTER (no preemption back)"), self._send(now),
                    CommandDone("takeover", True, "this node is MASTER and stays MASTER (no preemption back)")]
        master = self._live_master()
        if master is None:
            return self._become_master(Reason(Why.COMMAND, "takeover by operator (no MASTER alive)"),
                                       now, sticky=True) + [
                CommandDone("takeover", True, "this node is MASTER now and stays MASTER (no preemption back)")]
        if Flags.MAINTENANCE in master.flags:
            raise CommandRefused(f"MASTER {master.name} is in maintenance; turn maintenance off there first")
        wait = timing.takeover_wait_s(self.p.drain_timeout_s, self.p.dead_after, self.p.advert_interval_s)
        self.takeover_request.ask(now, wait)
        return [Notice(f"asking MASTER {master.name} to hand over"), self._send(now),
                CommandPending("takeover", now + wait)]

    def cancel_takeover(self, now: float) -> list[Effect]:
        if not self.takeover_request.stop():
            return []
        return [self._send(now)]

    def set_maintenance(self, on: bool, now: float) -> list[Effect]:
        if on == self.maintenance:
            return []
        self.maintenance = on
        text = ("maintenance on: this node makes no automatic transition" if on
                else "maintenance off: automatic transitions resume")
        effects: list[Effect] = [Notice(text), self._send(now)]
        if on or not self.started:
            return effects
        effects += self._apply_faults(now, "maintenance off and every fault cleared")
        if self.state in (State.INIT, State.BACKUP) and not self.down_timer.armed:
            self._arm_master_down(now, self._live_master())
        return effects

    def shutdown(self, drain_timeout_s: float, now: float) -> list[Effect]:
        """Leave cleanly: a MASTER hands over first (priority 0 naming the successor)."""
        if self.stopped:
            return []
        self.lifecycle = Lifecycle.STOPPING
        if self.state == State.MASTER:
            if self.handover is not None:
                self.handover.for_shutdown = True
                return []
            best = self.peers.best_backup()
            if best is not None:
                return self._begin_handover(best.name, False, True, drain_timeout_s, "agent stopping", now)
            return self._finish_stop("agent stopping; no healthy BACKUP to hand over to, VIPs released", now)
        return self._finish_stop("agent stopping", now)

    # --- for the shell ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest deadline of any part; `handle_timer` at that time acts on it."""
        if not self.deciding:
            return None
        deadlines = [self.adver_deadline, self.peers.next_deadline(self.p.dead_after), self.vip_retry_at,
                     self.takeover_request.deadline]
        if self.state in (State.INIT, State.BACKUP):
            deadlines += [self.master_down_deadline, self.preemption.deadline(self.p.preempt_delay_s)]
        if self.state == State.MASTER and self.handover is not None:
            deadlines.append(self.handover.deadline)
        return min(d for d in deadlines if d is not None)

    def view(self, now: float) -> ElectionView:
        return ElectionView(
            state=self.state, since_s=now - self.since, priority=self.p.priority,
            effective_priority=self.priority, master=self.master if self._master_known() else None,
            maintenance=self.maintenance, sticky=self.sticky,
            term=self.master_term if self.state == State.MASTER else self.max_term,
            faults=tuple(self.faults.values()), holds=tuple(self.holds.values()), peers=self.peers.views(now),
            handover_target=self.handover.target if self.handover else None,
            alone=self.state == State.MASTER and self.peers.none_up())

    def _master_known(self) -> bool:
        return self.master == self.p.name or self._live_master() is not None
