"""The election: which node is MASTER, as a pure state machine.

Events and the current time go in (`start`, `receive`, `handle_timer`,
`set_fault`, commands); a list of effects comes out (send a heartbeat,
acquire or release the VIPs, a transition with its reason). It never
touches a socket, a clock or a random number: the asyncio shell calls
`handle_timer(now)` at `next_deadline()`, and tests drive it with a fake
clock.

It follows RFC 5798 (VRRPv3) with the differences that come from every
node sending heartbeats, BACKUPs included:

* Master_Down_Interval = dead_after x Master_Adver_Interval + Skew_Time
  (RFC 5798 6.1, with `dead_after` for the 3). Skew_Time =
  ((256 - Priority) x Master_Adver_Interval) / 256 orders the BACKUPs
  when they do not know each other; here they do, so the best live
  candidate uses a skew of 0 and the others keep the RFC skew behind it.
* A MASTER that leaves advertises priority 0 (RFC 5798 6.4.3); the
  BACKUPs then wait Skew_Time only, so the best one takes over at once.
  A planned handover also names its successor, which takes over as soon
  as it hears it; the old MASTER keeps the VIPs until it hears the new
  one (make before break).
* Preemption is a request, not a race: the better BACKUP asks and the
  MASTER hands over after draining DICOM associations.
* Two MASTERs that hear each other (a healed partition, a resumed hang):
  the one that became MASTER most recently (higher term) stays, because
  the workstations were told about it last; priority and address break
  ties. The loser steps down at once and the winner announces again.
* FAULT holds nothing and never becomes MASTER.
"""

from __future__ import annotations

from .effects import (
    AcquireVips, Announce, Effect, HandoverDone, Notice, Outgoing, PeerChange, ProbeWitness, Reason,
    ReleaseVips, SendAdvert, SplitBrain, StartDrain, Stopped, Transition, Why,
)
from .model import CommandRefused, ElectionView, Handover, Params, Peer, PeerView
from .states import Flags, State
from .wire import Advert

__all__ = ["CommandRefused", "Election", "ElectionView", "Params", "Peer", "PeerView"]

MIN_HANDOVER_WAIT_S = 1.0
MAX_TERM = 0xFFFFFFFF
VIP_RETRY_S = 5.0


class Election:
    def __init__(self, params: Params, now: float):
        self.p = params
        self.state = State.INIT
        self.since = now
        self.max_term = 0          # the highest term heard or used
        self.master_term = 0       # this node's term while it is MASTER
        self.peers: dict[str, Peer] = {}
        self.master: str | None = None
        self.faults: dict[str, str] = {}
        self.holds: dict[str, str] = {}
        self.penalty = 0
        self.maintenance = False
        self.sticky = False
        self.takeover_wanted = False
        self.preempt_since: float | None = None
        self.preempt_requesting = False
        self.handover: Handover | None = None
        self.stopping = False
        self.stopped = False
        self.started = False
        self._started_at = now
        self.adver_deadline = now
        # Master_Down_Timer as (started at, full interval or skew only, Master_Adver_Interval);
        # the deadline is computed on demand so that the skew follows what is known of the peers.
        self._down: tuple[float, bool, float] | None = None
        self.vip_retry_at: float | None = None
        self._conflicts: set[str] = set()
        self._noticed: set[str] = set()
        self._left: tuple[str, str] | None = None   # (peer, how) of a MASTER that stepped down
        self._deferring_since: float | None = None  # waiting for a better candidate to take over
        # Split-brain protection: when this node last heard no peer, the last witness result.
        self._alone_since: float | None = None
        self.witness_ok: bool | None = None
        self.witness_at: float | None = None
        self._awaiting_witness = False

    # --- derived values -----------------------------------------------------

    @property
    def priority(self) -> int:
        """Effective priority: configured minus check penalties, kept in 1..254."""
        return max(1, min(254, self.p.priority - self.penalty))

    def advertised_priority(self) -> int:
        if self.stopped or (self.handover is not None and self.handover.releasing):
            return 0
        return self.priority

    def _key(self) -> tuple[int, bytes]:
        return (self.priority, self.p.address)

    def _best_candidate(self) -> bool:
        """No live candidate peer ranks above this node (priority, then address)."""
        return all((peer.priority, peer.address) < self._key()
                   for peer in self.peers.values() if peer.candidate and peer.name != self.master)

    def _best_peer(self) -> Peer | None:
        """The peer a handover should go to: a healthy BACKUP, best first."""
        eligible = [p for p in self.peers.values() if p.candidate and p.state == State.BACKUP]
        return max(eligible, key=lambda p: (p.priority, p.address), default=None)

    def _skew_s(self, interval_s: float) -> float:
        """RFC 5798 6.1 Skew_Time, or 0 for the best candidate (see module docstring)."""
        if self._best_candidate():
            return 0.0
        return (256 - self.priority) * interval_s / 256

    @property
    def master_down_deadline(self) -> float | None:
        if self._down is None:
            return None
        since, full, interval = self._down
        return since + (self.p.dead_after * interval if full else 0.0) + self._skew_s(interval)

    def _arm_master_down(self, now: float, master: Peer | None) -> None:
        self._down = (now, True, master.interval_s if master else self.p.advert_interval_s)

    def _arm_skew_only(self, now: float, interval_s: float) -> None:
        """RFC 5798 6.4.2: the MASTER left (priority 0): Master_Down_Timer = Skew_Time."""
        current = self.master_down_deadline
        self._down = (now, False, interval_s)
        if current is not None and current < self.master_down_deadline:
            self._down = (current - self._skew_s(interval_s), False, interval_s)

    def _master_down_interval_s(self, master: Peer | None) -> float:
        """RFC 5798 6.1: Master_Down_Interval = dead_after x Master_Adver_Interval + Skew_Time."""
        interval = master.interval_s if master else self.p.advert_interval_s
        return self.p.dead_after * interval + self._skew_s(interval)

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
        peer = self.peers.get(self.master or "")
        return peer if peer is not None and peer.is_master else None

    def _outgoing(self) -> Outgoing:
        flags = Flags.NONE
        target = None
        if self.p.preempt:
            flags |= Flags.PREEMPT
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
                and (self.takeover_wanted or self.preempt_requesting):
            flags |= Flags.TAKEOVER_REQUEST | (Flags.MANUAL if self.takeover_wanted else Flags.NONE)
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
        effects: list[Effect] = [Transition(old, new, reason)]
        self.preempt_since, self.preempt_requesting = None, False
        if new == State.MASTER:
            self.master = self.p.name
            self._down = None
            self.takeover_wanted = False
            self._left = None
            effects.append(AcquireVips(reason))
        else:
            self.sticky = False
            self._conflicts.clear()
            if old in (State.MASTER, State.INIT) or new == State.FAULT:
                effects.append(ReleaseVips(reason))
            if self.handover is not None:
                handover, self.handover = self.handover, None
                effects.append(HandoverDone(handover.target, False,
                                            f"handover to {handover.target} abandoned: {reason.text}"))
            if self.master == self.p.name:
                self.master = None
            if new == State.BACKUP:
                self._arm_master_down(now, self._live_master())
            else:
                self._down = None
        effects.append(self._send(now))
        return effects

    def _become_master(self, reason: Reason, now: float, sticky: bool) -> list[Effect]:
        # The wire carries 32 bits; at the top, ties fall to priority and address.
        self.max_term = min(self.max_term + 1, MAX_TERM)
        self.master_term = self.max_term
        effects = self._enter(State.MASTER, reason, now)
        self.sticky = sticky
        return effects

    def _finish_stop(self, text: str, now: float) -> list[Effect]:
        self.stopped = True
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
        self.started = True
        self.since = self._started_at = now
        effects: list[Effect] = [self._send(now)]
        if self.faults and not self.maintenance:
            return effects + self._enter(State.FAULT, Reason(Why.FAULT, "; ".join(self.faults.values())), now)
        self._arm_master_down(now, None)
        return effects + self._guard(now)

    def receive(self, advert: Advert, address: bytes, now: float) -> list[Effect]:
        """A heartbeat that passed authentication and the replay check."""
        if not self.started or self.stopped:
            return []
        if advert.node == self.p.name:
            return self._notice_once("own-name", f"a heartbeat from another host carries this node's "
                                     f"name {advert.node!r}: node names must be unique in the cluster")
        effects = self._update_peer(advert, address, now)
        self.max_term = max(self.max_term, advert.term)
        peer = self.peers[advert.node]
        if self.state in (State.INIT, State.BACKUP):
            effects += self._backup_hears(peer, now)
        elif self.state == State.MASTER:
            effects += self._master_hears(peer, now)
        elif peer.is_master:
            # FAULT: decide nothing, but know who is MASTER for when the fault clears.
            self.master = peer.name
        return effects + self._guard(now)

    def _update_peer(self, advert: Advert, address: bytes, now: float) -> list[Effect]:
        effects: list[Effect] = []
        peer = self.peers.get(advert.node)
        if peer is None or not peer.up:
            effects.append(PeerChange(advert.node, True, f"peer {advert.node} heard: {advert.state.name}, "
                                      f"priority {advert.priority}"))
            if peer is not None and self.state == State.MASTER:
                effects.append(Announce(f"peer {advert.node} is back"))
        elif peer.is_master and self.state == State.MASTER and not (
                advert.state == State.MASTER and advert.priority > 0):
            # It was MASTER while this node was too (a partition or a hang): workstations on
            # its side may still point at its MAC, so announce again (keepalived often does not).
            effects.append(Announce(f"peer {advert.node} stepped down from MASTER"))
        if advert.vip_digest != self.p.vip_digest and (peer is None or peer.vip_digest != advert.vip_digest):
            effects.append(Notice(f"peer {advert.node} is configured with other VIPs than this node: "
                                  "compare the vips sections"))
        self.peers[advert.node] = Peer(advert.node, address, advert.state, advert.priority, advert.flags,
                                       advert.term, advert.advert_interval_s, now, advert.target,
                                       advert.vip_digest)
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
            self.preempt_since, self.preempt_requesting = None, False
            return []
        if self.preempt_since is None:
            self.preempt_since = now
        if self.preempt_requesting or now < self.preempt_since + self.p.preempt_delay_s:
            return []
        self.preempt_requesting = True
        return [Notice(f"priority {self.priority} is higher than MASTER {master.name}'s {master.priority}: "
                       "asking it to hand over (preempt)"), self._send(now)]

    def _master_hears(self, peer: Peer, now: float) -> list[Effect]:
        """MASTER hears a peer (RFC 5798 6.4.3)."""
        if peer.is_master:
            handover = self.handover
            if handover is not None and handover.releasing:
                return self._handed_over(peer, now)
            return self._two_masters(peer, now)
        self._conflicts.discard(peer.name)
        if Flags.TAKEOVER_REQUEST in peer.flags and peer.target == self.p.name:
            return self._takeover_requested(peer, now)
        return []

    def _handed_over(self, peer: Peer, now: float) -> list[Effect]:
        handover = self.handover
        assert handover is not None
        self.handover = None
        effects = self._enter(State.BACKUP, Reason(Why.HANDED_OVER, f"handed over to {peer.name}"), now)
        self.master = peer.name
        self._arm_master_down(now, peer)
        effects.append(HandoverDone(peer.name, True, f"{peer.name} is MASTER now", handover.cut))
        if handover.for_shutdown:
            effects += self._finish_stop(f"agent stopping: handed over to {peer.name}", now)
        return effects

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

    def _takeover_requested(self, peer: Peer, now: float) -> list[Effect]:
        manual = Flags.MANUAL in peer.flags
        if self.handover is not None:
            return []
        if self.maintenance:
            return self._notice_once(f"takeover-maint-{peer.name}",
                                     f"{peer.name} asks to take over, but maintenance is on here")
        if self.sticky and not manual:
            return []
        if not peer.candidate:
            return []
        why = "takeover asked by operator" if manual else "preempted by a higher priority"
        return self._begin_handover(peer.name, manual, False, self.p.drain_timeout_s, f"{peer.name}: {why}")

    def _begin_handover(self, target: str, manual: bool, for_shutdown: bool, timeout_s: float,
                        why: str) -> list[Effect]:
        self.handover = Handover(target, manual, for_shutdown, why)
        return [Notice(f"handing over to {target} ({why}): draining DICOM associations for up to "
                       f"{timeout_s:g} s"), StartDrain(target, timeout_s)]

    def drained(self, cut: int, now: float) -> list[Effect]:
        """The shell finished draining: advertise priority 0 naming the successor."""
        handover = self.handover
        if handover is None or handover.releasing or self.state != State.MASTER:
            return []
        target = self.peers.get(handover.target)
        if target is None or not target.candidate:
            best = self._best_peer()
            if best is None:
                self.handover = None
                text = f"{handover.target} is no longer a healthy BACKUP and no other is; staying MASTER"
                if handover.for_shutdown:
                    return [HandoverDone(None, False, text, cut)] + self._finish_stop(
                        "agent stopping: no healthy BACKUP to hand over to", now)
                return [HandoverDone(None, False, text, cut)]
            handover.target = best.name
        handover.releasing = True
        handover.cut = cut
        wait = max(MIN_HANDOVER_WAIT_S, 2 * (self.p.dead_after + 1) * self.p.advert_interval_s)
        handover.deadline = now + wait
        return [self._send(now)]

    def handle_timer(self, now: float) -> list[Effect]:
        if not self.started or self.stopped:
            return []
        effects = self._expire_peers(now)
        if self.vip_retry_at is not None and now >= self.vip_retry_at:
            self.vip_retry_at = None
            effects += self.set_fault("vips", None, now, "retrying the VIPs")
        if self.state in (State.INIT, State.BACKUP):
            if self.master_down_deadline is not None and now >= self.master_down_deadline:
                effects += self._master_down(now)
            elif self.state == State.BACKUP and self._live_master() is not None:
                effects += self._consider_preempt(self._live_master(), now)
            else:
                # Nobody to preempt any more: forget the wait, or its deadline stays in the past.
                self.preempt_since, self.preempt_requesting = None, False
        elif self.state == State.MASTER:
            handover = self.handover
            if handover is not None and handover.releasing and now >= handover.deadline:
                effects += self._handover_failed(now)
        effects += self._guard(now)
        if now >= self.adver_deadline and not self.stopped:
            effects.append(self._send(now))
        return effects

    def _expire_peers(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for peer in self.peers.values():
            # Compare exactly as next_deadline() computes, or a float rounding spins the loop.
            if peer.up and now >= peer.last_seen + peer.timeout_s(self.p.dead_after):
                peer.up = False
                self._conflicts.discard(peer.name)
                effects.append(PeerChange(peer.name, False,
                                          f"peer {peer.name} silent for {now - peer.last_seen:.2f} s"))
        return effects

    def _master_down(self, now: float) -> list[Effect]:
        """Master_Down_Timer fired (RFC 5798 6.4.2)."""
        self._down = None
        master = self.peers.get(self.master or "")
        if self._left is not None:
            reason = Reason(Why.MASTER_LEFT, f"MASTER {self._left[0]} {self._left[1]}")
        elif master is not None and master.state == State.MASTER and master.priority == 0:
            reason = Reason(Why.MASTER_LEFT, f"MASTER {master.name} left without a successor")
        elif master is not None:
            reason = Reason(Why.MASTER_DOWN, f"MASTER {master.name} silent for {now - master.last_seen:.2f} s")
        else:
            reason = Reason(Why.NO_MASTER, f"no MASTER heard for {now - self.since:.2f} s")
        if not self._best_candidate():
            # A better live candidate will take over (it started its timer later, or the RFC
            # skew put it first): wait for it, but not for ever.
            if self._deferring_since is None:
                self._deferring_since = now
            if now < self._deferring_since + 2 * self._master_down_interval_s(master):
                self._arm_skew_only(now, master.interval_s if master else self.p.advert_interval_s)
                return []
        self._deferring_since = None
        others = self._heard_recently(now)
        if self.p.cluster_size and 1 + len(others) < self.p.cluster_size // 2 + 1:
            self._arm_master_down(now, None)   # look again later: peers may come back
            return self._notice_once("blocked-quorum", f"{reason.text}, but this node may not become "
                                     f"MASTER: it hears {1 + len(others)} of {self.p.cluster_size} nodes")
        if self.p.witness and not others:
            last_heard = max((p.last_seen for p in self.peers.values()), default=self._started_at)
            if self.witness_at is None or self.witness_at < last_heard or not self.witness_ok:
                # Hearing nobody may mean this node is the one cut off: ask a witness first.
                self._awaiting_witness = True
                return [ProbeWitness(f"{reason.text}; no peer heard: a witness must confirm")]
        blocked = self._may_become_master()
        if blocked is not None:
            effects = self._notice_once(f"blocked-{blocked}", f"{reason.text}, but this node may not "
                                        f"become MASTER: {blocked}")
            if self.state == State.INIT:
                effects += self._enter(State.BACKUP, reason, now)
                self._down = None
            return effects
        self._noticed = {k for k in self._noticed if not k.startswith("blocked-")}
        return self._become_master(reason, now, sticky=False)

    def _handover_failed(self, now: float) -> list[Effect]:
        handover = self.handover
        assert handover is not None
        self.handover = None
        text = f"{handover.target} did not take over; staying MASTER"
        effects: list[Effect] = [HandoverDone(handover.target, False, text, handover.cut), self._send(now)]
        if handover.for_shutdown:
            effects += self._finish_stop("agent stopping: no BACKUP took over, VIPs released", now)
        return effects

    # --- health, link and VIP results --------------------------------------------

    def set_fault(self, source: str, text: str | None, now: float, recovered: str = "") -> list[Effect]:
        """Set (text) or clear (None) one reason to be in FAULT: a link, a check, the VIPs."""
        before = dict(self.faults)
        if text is None:
            self.faults.pop(source, None)
        else:
            self.faults[source] = text
        if before == self.faults or not self.started or self.stopped:
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

    # --- split-brain protection: quorum and witness ---------------------------------------------

    def _heard_recently(self, now: float) -> list[Peer]:
        """Peers, the MASTER aside, that missed at most one heartbeat: deciding to take over, a
        peer that fell silent together with the MASTER must not count towards quorum."""
        return [p for p in self.peers.values()
                if p.up and p.name != self.master and now - p.last_seen < 2 * p.interval_s]

    def _peers_up(self) -> int:
        return sum(1 for peer in self.peers.values() if peer.up)

    def _guard(self, now: float) -> list[Effect]:
        """Re-check quorum and isolation after every event."""
        if not self.started or self.stopped:
            return []
        effects: list[Effect] = []
        up = self._peers_up()
        if self.p.cluster_size:
            need = self.p.cluster_size // 2 + 1
            text = None if up + 1 >= need else \
                f"no quorum: hears {up + 1} of {self.p.cluster_size} nodes, {need} needed"
            if self.state == State.MASTER or "quorum" in self.faults:
                # A MASTER without a majority releases the VIPs: the majority side elects its own.
                effects += self.set_fault("quorum", text, now, "quorum regained")
            elif (text is None) == ("quorum" in self.holds):
                effects += self.set_hold("quorum", text, now)
        if self.p.witness:
            if up:
                self._alone_since = None
                if "isolated" in self.faults:
                    effects += self.set_fault("isolated", None, now, "a peer is heard again")
            elif self._alone_since is None:
                self._alone_since = now
                effects.append(ProbeWitness("no peer heard"))
        return effects

    def set_witness(self, ok: bool, text: str, now: float) -> list[Effect]:
        """A witness probe's result: `ok` if any witness answered; `text` says what failed."""
        self.witness_ok, self.witness_at = ok, now
        others = self._heard_recently(now)
        if not self.p.witness or not self.started or self.stopped or others:
            return []
        if not ok:
            self._awaiting_witness = False
            return self.set_fault("isolated", f"isolated: no peer heard and no witness reachable ({text})", now)
        effects = self.set_fault("isolated", None, now, f"witness reachable ({text})")
        if self._awaiting_witness and self.state in (State.INIT, State.BACKUP):
            self._awaiting_witness = False
            effects += self._master_down(now)
        return effects

    def set_hold(self, source: str, text: str | None, now: float) -> list[Effect]:
        """Keep this node from becoming MASTER on its own (e.g. checks not run yet)."""
        held = bool(self.holds)
        if text is None:
            self.holds.pop(source, None)
        else:
            self.holds[source] = text
        if held and not self.holds and self.state in (State.INIT, State.BACKUP) and self._down is None:
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
        self.vip_retry_at = now + VIP_RETRY_S
        return self.set_fault("vips", f"cannot hold the VIPs: {text}", now)

    def reconfigure(self, params: Params, now: float) -> list[Effect]:
        """A reloaded configuration: new priority, timers, preempt or VIP set; state stays."""
        if params.name != self.p.name:
            raise ValueError("the node name cannot change without a restart")
        self.p = params
        effects: list[Effect] = [self._send(now)]
        master = self._live_master()
        if self.state == State.BACKUP and master is not None:
            effects += self._consider_preempt(master, now)
        return effects

    # --- operator commands ------------------------------------------------------------

    def release(self, drain_timeout_s: float, now: float) -> list[Effect]:
        if self.state != State.MASTER:
            raise CommandRefused(f"this node is {self.state.name}, not MASTER: it holds no VIP to release")
        if self.handover is not None:
            raise CommandRefused(f"a handover to {self.handover.target} is already under way")
        best = self._best_peer()
        if best is None:
            raise CommandRefused("no healthy BACKUP to hand over to" + self._peer_summary(now))
        self.sticky = False
        return self._begin_handover(best.name, True, False, drain_timeout_s, "release by operator")

    def _peer_summary(self, now: float) -> str:
        if not self.peers:
            return " (no peer heard)"
        parts = []
        for peer in self.peers.values():
            if not peer.up:
                parts.append(f"{peer.name} silent for {now - peer.last_seen:.1f} s")
            elif Flags.MAINTENANCE in peer.flags:
                parts.append(f"{peer.name} in maintenance")
            else:
                parts.append(f"{peer.name} {peer.state.name}")
        return " (" + ", ".join(parts) + ")"

    def takeover(self, now: float) -> list[Effect]:
        if self.faults:
            raise CommandRefused(f"this node is in FAULT ({'; '.join(self.faults.values())}); "
                                 "it cannot become MASTER")
        if self.stopping:
            raise CommandRefused("the agent is stopping")
        if self.state == State.MASTER:
            if self.handover is not None:
                raise CommandRefused(f"this node is handing over to {self.handover.target}")
            self.sticky = True
            return [Notice("already MASTER; it now stays MASTER (no preemption back)"), self._send(now)]
        master = self._live_master()
        if master is None:
            return self._become_master(Reason(Why.COMMAND, "takeover by operator (no MASTER alive)"),
                                       now, sticky=True)
        if Flags.MAINTENANCE in master.flags:
            raise CommandRefused(f"MASTER {master.name} is in maintenance; turn maintenance off there first")
        self.takeover_wanted = True
        return [Notice(f"asking MASTER {master.name} to hand over"), self._send(now)]

    def cancel_takeover(self, now: float) -> list[Effect]:
        if not self.takeover_wanted:
            return []
        self.takeover_wanted = False
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
        if self.state in (State.INIT, State.BACKUP) and self._down is None:
            self._arm_master_down(now, self._live_master())
        return effects

    def shutdown(self, drain_timeout_s: float, now: float) -> list[Effect]:
        """Leave cleanly: a MASTER hands over first (priority 0 naming the successor)."""
        if self.stopped:
            return []
        self.stopping = True
        if self.state == State.MASTER:
            if self.handover is not None:
                self.handover.for_shutdown = True
                return []
            best = self._best_peer()
            if best is not None:
                return self._begin_handover(best.name, False, True, drain_timeout_s, "agent stopping")
            return self._finish_stop("agent stopping; no healthy BACKUP to hand over to, VIPs released", now)
        return self._finish_stop("agent stopping", now)

    # --- for the shell ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if not self.started or self.stopped:
            return None
        deadlines = [self.adver_deadline]
        if self.state in (State.INIT, State.BACKUP) and self.master_down_deadline is not None:
            deadlines.append(self.master_down_deadline)
        if self.preempt_since is not None and not self.preempt_requesting:
            deadlines.append(self.preempt_since + self.p.preempt_delay_s)
        if self.handover is not None and self.handover.releasing:
            deadlines.append(self.handover.deadline)
        if self.vip_retry_at is not None:
            deadlines.append(self.vip_retry_at)
        deadlines += [peer.last_seen + peer.timeout_s(self.p.dead_after)
                      for peer in self.peers.values() if peer.up]
        return min(deadlines)

    def view(self, now: float) -> ElectionView:
        peers = tuple(PeerView(p.name, p.address, p.state, p.priority, now - p.last_seen, p.up,
                               Flags.MAINTENANCE in p.flags)
                      for p in sorted(self.peers.values(), key=lambda p: p.name))
        return ElectionView(
            state=self.state, since_s=now - self.since, priority=self.p.priority,
            effective_priority=self.priority, master=self.master if self._master_known() else None,
            maintenance=self.maintenance, sticky=self.sticky,
            term=self.master_term if self.state == State.MASTER else self.max_term,
            faults=tuple(self.faults.values()), holds=tuple(self.holds.values()), peers=peers,
            handover_target=self.handover.target if self.handover else None,
            alone=self.state == State.MASTER and not any(p.up for p in self.peers.values()))

    def _master_known(self) -> bool:
        return self.master == self.p.name or self._live_master() is not None
