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
`PeerTable` (who is there, RFC ranking; when the next peer falls silent),
`MasterWatch` (a BACKUP's Master_Down_Timer and the decision to take
over), `Handoffs` (handover, preemption and takeover request, each with
named phases), `SplitBrainGuard` (quorum, witness), `Suspects` (living
but misconfigured peers, which keep this node from taking the VIPs; their
evidence expires like a peer) and, under `cluster.authority: etcd`,
`LeaseGate` (the leadership lease: MASTER only while it is held; its
events and phases are in hapacs.leasegate). This class keeps
the state, the terms, the gates (faults, holds, maintenance, penalty),
the lifecycle and the public API. The parts call back only the methods
without a leading underscore.

What each event does in each state ("-": nothing, on purpose):

| event                           | INIT / BACKUP                          | MASTER                                 | FAULT                |
|---------------------------------|----------------------------------------|----------------------------------------|----------------------|
| heartbeat of a live MASTER      | BACKUP, re-arm timer, maybe preempt    | split brain: newer term stays; or the  | remember MASTER      |
|                                 |                                        | successor: handed over                 |                      |
| priority 0 naming this node     | MASTER (handover-to-me)                | -                                      | -                    |
| priority 0 naming another       | re-arm timer: take over only if        | -                                      | -                    |
|                                 | neither finishes                       |                                        |                      |
| priority 0, or MASTER stepped   | timer = Skew_Time                      | announce again                         | -                    |
| down                            |                                        |                                        |                      |
| takeover request to this node   | -                                      | handover: DRAINING (not in             | -                    |
|                                 |                                        | maintenance; if sticky, only for an    |                      |
|                                 |                                        | operator's)                            |                      |
| Master_Down_Timer               | defer to a better live candidate       | -                                      | -                    |
|                                 | (bounded; longer for one held until    |                                        |                      |
|                                 | its first check results); then MASTER  |                                        |                      |
|                                 | unless the quorum, a witness or a gate |                                        |                      |
|                                 | (fault, maintenance, hold, stopping, a |                                        |                      |
|                                 | suspect) says no                       |                                        |                      |
| peer silent                     | peer down; quorum lost: hold           | peer down; quorum lost: FAULT          | peer down            |
| misconfigured peer heard (wrong | a suspect: no takeover while it claims | BACKUP if it is MASTER too and wins    | a suspect            |
| key, other cluster id, this     | MASTER or ranks above (wrong key or    | (same name: split-brain rule; wrong    |                      |
| node's name)                    | id: only before any valid heartbeat)   | key or id: ranks above, before any     |                      |
|                                 |                                        | valid heartbeat)                       |                      |
| a hold cleared, a suspect gone  | stopped timer re-armed (Skew_Time if   | -                                      | -                    |
| or no longer blocking           | no MASTER is alive)                    |                                        |                      |
| no peer heard any more          | probe the witnesses                    | probe the witnesses                    | probe the witnesses  |
| (witnesses configured)          |                                        |                                        |                      |
| witness answer, no peer heard   | none: FAULT (isolated); one: a         | none: FAULT (isolated)                 | one: isolation       |
|                                 | takeover waiting for it goes on        |                                        | cleared              |
| a peer heard again              | a takeover waiting for a witness:      | -                                      | isolation cleared    |
|                                 | re-arm timer                           |                                        |                      |
| quorum lost / regained          | hold set / cleared                     | FAULT / -                              | hold set / hold or   |
|                                 |                                        |                                        | quorum fault cleared |
| VIPs could not be added         | FAULT; cleared after VIP_RETRY_S       | FAULT, VIPs released; cleared after    | cleared after        |
|                                 |                                        | VIP_RETRY_S                            | VIP_RETRY_S          |
| fault set / all cleared         | FAULT / -                              | FAULT, VIPs released / -               | - / BACKUP           |
| maintenance on / off            | no automatic transition / faults       | no automatic transition / faults       | no automatic         |
|                                 | applied, stopped timer re-armed        | applied                                | transition / BACKUP  |
|                                 |                                        |                                        | if no fault          |
| reload                          | new parameters; maybe preempt          | new parameters                         | new parameters       |
| release                         | refused                                | handover: DRAINING                     | refused              |
| takeover                        | ask the MASTER, or MASTER if none      | stays MASTER, sticky                   | refused              |
| shutdown                        | stopped                                | handover, then stopped                 | stopped              |
"""

from __future__ import annotations

import enum

from . import timing
from .effects import (
    AcquireVips, Announce, Effect, Notice, Outgoing, PeerChange, Reason, ReleaseVips, SendAdvert, SplitBrain,
    Stopped, Transition, Why,
)
from .guard import SplitBrainGuard
from .handover import Handoffs
from .leasegate import LeaseEvent, LeaseGate
from .masterwatch import MasterWatch
from .model import CommandRefused, ElectionView, Params, Peer
from .peertable import PeerTable, split_brain_winner
from .suspects import Suspects
from .states import Flags, State
from .wire import Advert

# CommandRefused and Params are the core's own words for the shell and the simulator too.
__all__ = ["CommandRefused", "Election", "Lifecycle", "Params"]

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
        self.started_at = now
        self.lifecycle = Lifecycle.NEW
        self.max_term = 0          # the highest term heard or used
        self.master_term = 0       # this node's term while it is MASTER
        self.master: str | None = None
        self.peers = PeerTable()
        self.watch = MasterWatch(self)
        self.handoffs = Handoffs(self)
        self.guard = SplitBrainGuard(params.witness, params.cluster_size)
        self.suspects = Suspects()
        self.lease = LeaseGate(self, params.lease_ttl_s) if params.lease_ttl_s else None   # authority: etcd
        # The gates: any of these keeps this node from becoming MASTER on its own.
        self.faults: dict[str, str] = {}
        self.holds: dict[str, str] = {}
        self.maintenance = False
        self.penalty = 0
        self.sticky = False
        self.vip_retry_at: float | None = None
        self.adver_deadline = now
        self._conflicts: set[str] = set()   # peers this MASTER already won a split brain against
        self._noticed: set[str] = set()     # notices said once

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
        handover = self.handoffs.handover
        if self.stopped or (handover is not None and handover.releasing):
            return 0
        return self.priority

    @property
    def master_down_deadline(self) -> float | None:
        return self.watch.deadline()

    def hears_no_peer(self) -> bool:
        return self.peers.none_up()

    def best_candidate(self) -> bool:
        """No live candidate peer ranks above this node (priority, then address), nor a held one."""
        return not self.better_peers()

    def better_peers(self) -> list[Peer]:
        return self.peers.outranking((self.priority, self.p.address), besides=self.master)

    def skew_s(self, interval_s: float) -> float:
        """RFC 5798 6.1 Skew_Time, or 0 for the best candidate (see module docstring)."""
        return 0.0 if self.best_candidate() else timing.skew_time_s(self.priority, interval_s)

    def may_become_master(self) -> str | None:
        """Why this node may not become MASTER on its own, or None if it may."""
        if self.faults:
            return "; ".join(self.faults.values())
        if self.maintenance:
            return "maintenance is on"
        if self.stopping:
            return "the agent is stopping"
        if self.holds:
            return "; ".join(self.holds.values())
        return self.suspects.blocking((self.priority, self.p.address))

    def live_master(self) -> Peer | None:
        peer = self.peers.get(self.master)
        return peer if peer is not None and peer.is_master else None

    def _outgoing(self) -> Outgoing:
        flags, target = self.handoffs.flags()
        if self.p.preempt:
            flags |= Flags.PREEMPT
        if self.maintenance:
            flags |= Flags.MAINTENANCE
        if self.holds:
            flags |= Flags.HELD
        if self.state == State.MASTER and self.sticky:
            flags |= Flags.STICKY
        term = self.master_term if self.state == State.MASTER else self.max_term
        return Outgoing(self.state, self.advertised_priority(), flags, term, target)

    def send(self, now: float) -> SendAdvert:
        self.adver_deadline = now + self.p.advert_interval_s
        return SendAdvert(self._outgoing())

    def notice_once(self, key: str, text: str) -> list[Effect]:
        if key in self._noticed:
            return []
        self._noticed.add(key)
        return [Notice(text)]

    def forget_notices(self, prefix: str) -> None:
        self._noticed = {key for key in self._noticed if not key.startswith(prefix)}

    # --- transitions ----------------------------------------------------------

    def enter(self, new: State, reason: Reason, now: float) -> list[Effect]:
        old = self.state
        if old == new:
            return []
        self.state, self.since = new, now
        effects: list[Effect] = [Transition(old, new, reason)]
        if new == State.MASTER:
            self.master = self.p.name
            effects.append(AcquireVips(reason))
        else:
            self.sticky = False
            self._conflicts.clear()
            if old in (State.MASTER, State.INIT) or new == State.FAULT:
                effects.append(ReleaseVips(reason))
            effects += self.lease.after_transition(old, new) if self.lease else []   # after the VIPs
            if self.master == self.p.name:
                self.master = None
        effects += self.handoffs.on_enter(new, reason)
        self.watch.on_enter(new, now)
        return effects + [self.send(now)]

    def become_master(self, reason: Reason, now: float, sticky: bool) -> list[Effect]:
        sticky = sticky or self.handoffs.takeover_request.asking
        if self.lease is not None and (waiting := self.lease.before_master(reason, now, sticky)) is not None:
            return waiting     # only while holding the etcd lease
        # The wire carries 32 bits; at the top, ties fall to priority and address.
        self.max_term = min(self.max_term + 1, MAX_TERM)
        self.master_term = self.max_term
        effects = self.enter(State.MASTER, reason, now)
        self.sticky = sticky
        return effects

    def follow(self, master: Peer, now: float) -> None:
        """This node stepped down for `master`: know it, and watch it."""
        self.master = master.name
        self.watch.arm(now, master)

    def finish_stop(self, text: str, now: float) -> list[Effect]:
        self.lifecycle = Lifecycle.STOPPED
        self.handoffs.handover = None
        return [ReleaseVips(Reason(Why.SHUTDOWN, text)), SendAdvert(self._outgoing()), Stopped(text)]

    # --- events -----------------------------------------------------------------

    def start(self, now: float) -> list[Effect]:
        """INIT: send at once, listen one Master_Down_Interval before deciding."""
        self.lifecycle = Lifecycle.RUNNING
        self.since = self.started_at = now
        effects: list[Effect] = [self.send(now)]
        if self.faults and not self.maintenance:
            return effects + self.enter(State.FAULT, Reason(Why.FAULT, "; ".join(self.faults.values())), now)
        self.watch.arm(now, None)
        return effects + self._guard(now)

    def receive(self, advert: Advert, address: bytes, now: float) -> list[Effect]:
        """A heartbeat that passed authentication and the replay check."""
        if not self.deciding:
            return []
        if advert.node == self.p.name:
            return self.suspects.duplicate(self, advert, address, now) + self._guard(now)
        self.suspects.valid(address)
        effects = self.peers.heard(advert, address, now, self.state == State.MASTER, self.p.vip_digest)
        self.max_term = max(self.max_term, advert.term)
        peer = self.peers.get(advert.node)
        if self.state in (State.INIT, State.BACKUP):
            effects += self.watch.heard(peer, now)
        elif self.state == State.MASTER:
            effects += self._master_hears(peer, now)
        elif peer.is_master:
            # FAULT: decide nothing, but know who is MASTER for when the fault clears.
            self.master = peer.name
        return effects + self._guard(now)

    def _master_hears(self, peer: Peer, now: float) -> list[Effect]:
        """MASTER hears a peer (RFC 5798 6.4.3)."""
        if not peer.is_master:
            self._conflicts.discard(peer.name)
            return self.handoffs.heard(peer, now)
        handed_over = self.handoffs.successor_heard(peer, now)
        if handed_over is not None:
            return handed_over
        mine = (self.maintenance, self.master_term, self.advertised_priority(), self.p.address)
        wins, why = split_brain_winner(mine, peer)
        if wins:
            if peer.name in self._conflicts:
                return []
            self._conflicts.add(peer.name)
            text = f"{peer.name} is also MASTER; this node stays MASTER ({why})"
            return [SplitBrain(peer.name, self.p.name, text), Announce(text), self.send(now)]
        text = f"{peer.name} is also MASTER and stays MASTER ({why})"
        effects: list[Effect] = [SplitBrain(peer.name, peer.name, text)]
        effects += self.enter(State.BACKUP, Reason(Why.SPLIT_BRAIN, text), now)
        self.follow(peer, now)
        return effects

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
        gone = self.suspects.expire(now, self.p.dead_after, self.p.advert_interval_s)
        if gone:
            self.listen_again(now)
            effects += gone
        effects += self.handoffs.on_timer(now)
        if self.state in (State.INIT, State.BACKUP):
            deadline, master = self.watch.deadline(), self.live_master()
            if deadline is not None and now >= deadline:
                effects += self.watch.master_down(now)
            elif self.state == State.BACKUP and master is not None:
                effects += self.handoffs.consider_preempt(master, now)
            else:
                # Nobody to preempt any more: forget the wait, or its deadline stays in the past.
                self.handoffs.preemption.reset()
        effects += self._guard(now)
        if now >= self.adver_deadline and not self.stopped:
            effects.append(self.send(now))
        return effects

    # --- the gates: health, link and VIP results, maintenance --------------------------------

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
            return self.enter(State.FAULT, Reason(Why.FAULT, "; ".join(self.faults.values())), now)
        if not self.faults and self.state == State.FAULT:
            return self.enter(State.BACKUP, Reason(Why.RECOVERED, recovered), now)
        return []

    def set_checks(self, pending: str | None, penalty: int, fault: str | None, now: float) -> list[Effect]:
        """The checks' verdict, whole: waiting for first results (`pending`), the priority penalty of
        failing checks with a negative weight, a FAULT reason. No check: set_checks(None, 0, None)."""
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
        if held and not self.holds:
            self.listen_again(now)
        return []

    def listen_again(self, now: float) -> None:
        """A gate opened: a BACKUP kept from taking over does so after the skew, if no MASTER is alive."""
        if self.state in (State.INIT, State.BACKUP) and not self.watch.timer.armed:
            master = self.live_master()
            if master is None:
                self.watch.arm_skew_only(now, self.p.advert_interval_s)
            else:
                self.watch.arm(now, master)

    def set_penalty(self, penalty: int, now: float) -> list[Effect]:
        """Priority lowered by failing checks with a negative weight."""
        if penalty == self.penalty:
            return []
        self.penalty = penalty
        return [self.send(now)] + self.handoffs.preempt_again(now)

    def vip_failed(self, text: str, now: float) -> list[Effect]:
        """The shell could not add a VIP: FAULT, and try again a little later."""
        self.vip_retry_at = now + timing.VIP_RETRY_S
        return self.set_fault("vips", f"cannot hold the VIPs: {text}", now)

    def set_maintenance(self, on: bool, now: float) -> list[Effect]:
        if on == self.maintenance:
            return []
        self.maintenance = on
        text = ("maintenance on: this node makes no automatic transition" if on
                else "maintenance off: automatic transitions resume")
        effects: list[Effect] = [Notice(text), self.send(now)]
        if on or not self.started:
            return effects
        effects += self._apply_faults(now, "maintenance off and every fault cleared")
        if self.state in (State.INIT, State.BACKUP) and not self.watch.timer.armed:
            self.watch.arm(now, self.live_master())
        return effects

    def reconfigure(self, params: Params, now: float) -> list[Effect]:
        """A reloaded configuration: new priority, timers, preempt or VIP set; state stays."""
        if params.name != self.p.name:
            raise ValueError("the node name cannot change without a restart")
        self.p = params
        self.guard.reconfigure(params.witness, params.cluster_size)
        return [self.send(now)] + self.handoffs.preempt_again(now)

    def unreadable(self, address: bytes, cause: str, claimed: Advert, now: float) -> list[Effect]:
        """A heartbeat from a peer's address that this node cannot accept ("auth": wrong key,
        "cluster": another cluster id), with what it claims: evidence of a misconfigured peer."""
        return self.suspects.unreadable(self, address, cause, claimed, now) if self.deciding else []

    # --- split-brain protection (the logic is in SplitBrainGuard) -------------------------------

    def _guard(self, now: float) -> list[Effect]:
        return self.guard.after_event(self, now) + (self.lease.after_event(now) if self.lease else [])

    def set_witness(self, ok: bool, text: str, now: float, probed_at: float | None = None) -> list[Effect]:
        """A witness probe's result: `ok` if any witness answered; `text` says what failed;
        `probed_at`: when the probe began (its answer proves nothing about earlier moments)."""
        return self.guard.witness_result(self, ok, text, now, now if probed_at is None else probed_at)

    def authority(self, event: LeaseEvent, now: float) -> list[Effect]:
        return self.lease.handle(event, now) + self._guard(now) if self.lease and self.deciding else []

    # --- operator commands and the shell's answers (the logic is in Handoffs) ------------------

    def release(self, drain_timeout_s: float, now: float) -> list[Effect]:
        """Hand the VIPs to the best BACKUP; answered by HandoverDone."""
        return self.handoffs.release(drain_timeout_s, now)

    def takeover(self, now: float) -> list[Effect]:
        """Become MASTER now and stay; answered by CommandDone (at once, or after a handover)."""
        return self.handoffs.takeover(now)

    def cancel_takeover(self, now: float) -> list[Effect]:
        return self.handoffs.cancel_takeover(now)

    def drained(self, cut: int, now: float) -> list[Effect]:
        """The shell finished draining (`cut` associations still open): hand over now."""
        return self.handoffs.drained(cut, now) + self._guard(now)

    def shutdown(self, drain_timeout_s: float, now: float) -> list[Effect]:
        """Leave cleanly: a MASTER hands over first (priority 0 naming the successor)."""
        if self.stopped:
            return []
        self.lifecycle = Lifecycle.STOPPING
        if self.state == State.MASTER:
            handing = self.handoffs.shutdown(drain_timeout_s, now)
            if handing is not None:
                return handing
            return self.finish_stop("agent stopping; no healthy BACKUP to hand over to, VIPs released", now)
        return self.finish_stop("agent stopping", now)

    # --- for the shell ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest deadline of any part; `handle_timer` at that time acts on it."""
        if not self.deciding:
            return None
        deadlines = [self.adver_deadline, self.peers.next_deadline(self.p.dead_after), self.vip_retry_at,
                     self.handoffs.next_deadline(), self.lease.next_deadline() if self.lease else None,
                     self.suspects.next_deadline(self.p.dead_after, self.p.advert_interval_s)]
        if self.state in (State.INIT, State.BACKUP):
            deadlines.append(self.watch.deadline())
        return min(d for d in deadlines if d is not None)

    def view(self, now: float) -> ElectionView:
        handover = self.handoffs.handover
        known = self.master == self.p.name or self.live_master() is not None
        return ElectionView(
            state=self.state, since_s=now - self.since, priority=self.p.priority,
            effective_priority=self.priority, master=self.master if known else None,
            maintenance=self.maintenance, sticky=self.sticky,
            term=self.master_term if self.state == State.MASTER else self.max_term,
            faults=tuple(self.faults.values()), holds=tuple(self.holds.values()), peers=self.peers.views(now),
            handover_target=handover.target if handover else None,
            alone=self.state == State.MASTER and self.peers.none_up(),
            misconfigured=self.suspects.views((self.priority, self.p.address), now),
            lease=self.lease.view(now) if self.lease else None)
