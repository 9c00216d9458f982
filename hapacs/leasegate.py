"""The leadership lease as a gate on the MASTER role (`cluster.authority: etcd`). Pure.

The heartbeat election still decides who SHOULD lead (priorities,
preemption, checks, handovers); the lease decides who MAY. A node becomes
and stays MASTER only while it holds the leadership key under a live
lease. The core never learns the engine's name: it asks for a lease
(TakeLease), renews it (RenewLease), gives it up (RevokeLease) and asks who
holds the key (ProbeAuthority); the shell's adapter (hapacs.etcdauthority)
answers with the events below, each dated when its request was SENT.

Rules, with the reason for each:

* held_until = sent + TTL - margin (timing.lease_held_until): etcd started
  the TTL no earlier than the request left, so counting from the answer
  would overrun the lease. At held_until without a renewal the MASTER goes
  to FAULT at once, before etcd can give the key to another site.
* Renew every TTL/3; a renewal that comes back late extends only to its own
  sent + TTL - margin.
* The VIPs' addresses end by held_until (VipsUntil, before AcquireVips and at
  every renewal that moves it; timing.vip_lifetime_s): a holder killed with
  its host alive stops serving before etcd can give the key to another.
* Another gate's hold (the BGP session gate, checks not run yet) ends a take
  or a wait at once: a node competes for the lease only while nothing else
  holds it back (the operator's takeover overrides holds).
* Becoming MASTER: the election calls `before_master`; without a lease the
  node stays BACKUP, held "waiting for the etcd lease", and asks for it.
  Taken: MASTER. Held by another: it waits (held) until the key is gone,
  then the election decides again. etcd unreachable: FAULT until etcd
  answers again (probed with a bounded backoff).
* Leaving MASTER (handover, fault, lost split brain) gives the lease up
  right after the VIPs are released. A handover releases the VIPs and the
  lease when it starts advertising priority 0 (break before make): the
  successor cannot take the key before.

| phase       | meaning                                | leaves on                                              |
|-------------|----------------------------------------|--------------------------------------------------------|
| IDLE        | no lease, none wanted                  | the election wants MASTER: TakeLease -> TAKING         |
| TAKING      | a take is under way (hold)             | taken -> HELD, MASTER; held by another -> WAITING;     |
|             |                                        | failed or take_deadline -> UNREACHABLE; no longer      |
|             |                                        | wanted -> IDLE (a late grant is revoked)               |
| WAITING     | another holds the key (hold)           | key gone or no longer wanted -> IDLE, the election     |
|             |                                        | decides again; probe_at -> ProbeAuthority (the watch   |
|             |                                        | may be cut off)                                        |
| HELD        | holds the lease until held_until       | MASTER ends -> revoke, IDLE; held_until, key gone or   |
|             |                                        | another's -> revoke, FAULT, UNREACHABLE                |
| UNREACHABLE | etcd did not answer, or the lease was  | any answer -> IDLE; retry_at -> ProbeAuthority         |
|             | lost (fault "etcd")                    |                                                        |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import timing
from .effects import (
    Effect, ProbeAuthority, Reason, ReleaseVips, RenewLease, RevokeLease, TakeLease, VipsUntil, Why,
)
from .states import State

if TYPE_CHECKING:
    from .election import Election

SOURCE = "etcd"      # the election's hold and fault key for this gate


# --- the events the shell feeds back ----------------------------------------------------


@dataclass(frozen=True)
class LeaseTaken:
    """The take succeeded: this node holds the key under `lease_id` (granted `ttl_s`)."""
    lease_id: int
    ttl_s: int
    sent_at: float
    revision: int = 0      # the key's revision: older watch news about it is stale


@dataclass(frozen=True)
class LeaseRenewed:
    """A keepalive answered: `ttl_left_s` (0: etcd no longer has the lease)."""
    lease_id: int
    ttl_left_s: int
    sent_at: float


@dataclass(frozen=True)
class KeyHolder:
    """Who holds the key now (None: nobody), from a read or a watch; `refused_take`: the answer
    to this node's TakeLease, which found the key held; `streamed`: news on a watch stream opened
    earlier, which proves nothing about reaching etcd now (a cut may drop only what this node sends)."""
    holder: str | None
    revision: int = 0
    lease_id: int = 0
    refused_take: bool = False
    streamed: bool = False


@dataclass(frozen=True)
class LeaseFailed:
    """A request could not be answered by etcd (`what`: take, renew, probe, watch)."""
    what: str
    text: str


LeaseEvent = LeaseTaken | LeaseRenewed | KeyHolder | LeaseFailed


class LeasePhase(enum.Enum):
    IDLE = "idle"
    TAKING = "taking"
    WAITING = "waiting"
    HELD = "held"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class LeaseView:
    """The lease for status: who holds the key as this node last learnt, and this node's lease."""
    phase: LeasePhase
    holder: str | None
    ttl_s: int
    left_s: float | None       # until held_until, while this node holds it
    last_error: str | None


class LeaseGate:
    def __init__(self, owner: Election, ttl_s: int) -> None:
        self.owner = owner
        self.ttl_s = ttl_s                     # as configured; a grant may raise it
        self.phase = LeasePhase.IDLE
        self.lease_id = 0
        self.granted_ttl_s = ttl_s
        self.held_until: float | None = None
        self.renewed_sent_at = 0.0             # the sent time of the grant or renewal held_until counts from
        self.renew_at: float | None = None
        self.retry_at: float | None = None
        self.probe_at: float | None = None      # WAITING: the next read of the key
        self.failures = 0
        self.holder: str | None = None
        self.holder_revision = 0
        self.last_error: str | None = None
        self.wanted: tuple[Reason, bool] | None = None     # why the election wants MASTER; sticky
        self.take_deadline = 0.0               # TAKING: the answer is overdue after this

    @property
    def name(self) -> str:
        return self.owner.p.name

    # --- the election asks -------------------------------------------------------------

    def before_master(self, reason: Reason, now: float, sticky: bool) -> list[Effect] | None:
        """The election wants MASTER: None when the lease allows it now, else what to do."""
        if self.phase == LeasePhase.HELD:
            return None
        if self.phase != LeasePhase.IDLE:
            return []          # already asking, waiting, or etcd is unreachable (a fault)
        self.phase, self.wanted = LeasePhase.TAKING, (reason, sticky)
        self.take_deadline = now + timing.lease_take_limit_s(self.ttl_s)
        effects: list[Effect] = []
        if self.owner.state == State.INIT:
            effects += self.owner.enter(State.BACKUP, reason, now)
        self.owner.set_hold(SOURCE, "waiting for the etcd lease", now)
        return effects + [TakeLease(self.ttl_s)]

    def next_deadline(self) -> float | None:
        if self.phase == LeasePhase.HELD:
            return min(self.renew_at, self.held_until)
        if self.phase == LeasePhase.UNREACHABLE:
            return self.retry_at
        if self.phase == LeasePhase.TAKING:
            return self.take_deadline
        if self.phase == LeasePhase.WAITING:
            return self.probe_at
        return None

    def view(self, now: float) -> LeaseView:
        left = max(0.0, self.held_until - now) if self.phase == LeasePhase.HELD else None
        return LeaseView(self.phase, self.holder, self.granted_ttl_s, left, self.last_error)

    # --- after every transition and event -------------------------------------------------

    def after_transition(self, old: State, new: State) -> list[Effect]:
        """A MASTER that left (its VIPs are released just before) gives the lease up."""
        if old == State.MASTER and new != State.MASTER and self.phase == LeasePhase.HELD:
            return self._give_up(f"left MASTER for {new.name}")
        return []

    def after_event(self, now: float) -> list[Effect]:
        """Keep the election and the lease in step after every event; act on what is due."""
        owner = self.owner
        if not owner.deciding:
            return []
        due = self.on_timer(now)
        if due:
            return due + self.after_event(now)
        handover = owner.handoffs.handover
        if owner.state == State.MASTER and handover is not None and handover.releasing \
                and self.phase == LeasePhase.HELD:
            # Break before make: the successor can take the key only once it is given up.
            text = f"handing over to {handover.target}: VIPs and the etcd lease given up"
            return [ReleaseVips(Reason(Why.HANDED_OVER, text))] + self._give_up(text)
        if owner.state == State.MASTER and self.phase != LeasePhase.HELD and not (handover and handover.releasing):
            # A handover that gave the lease up and then failed, or a MASTER by any path without it.
            text = "MASTER without the etcd lease (a handover gave it up and did not complete)"
            return owner.enter(State.BACKUP, Reason(Why.LEASE_LOST, text), now)
        if self.phase in (LeasePhase.TAKING, LeasePhase.WAITING) and not self._still_wanted():
            self.phase = LeasePhase.IDLE
            owner.set_hold(SOURCE, None, now)
        return []

    def _still_wanted(self) -> bool:
        """Does the election still want MASTER? Another gate's hold (the BGP session gate, checks
        not run yet) ends the take or the wait: a node competes for the lease only while nothing
        else holds it back, unless the operator's takeover (sticky) overrides holds."""
        owner = self.owner
        sticky = self.wanted is not None and self.wanted[1]
        held_elsewhere = any(source != SOURCE for source in owner.holds)
        return (owner.state in (State.INIT, State.BACKUP) and not owner.faults and not owner.maintenance
                and not owner.stopping and owner.live_master() is None and (sticky or not held_elsewhere))

    # --- time ------------------------------------------------------------------------------

    def on_timer(self, now: float) -> list[Effect]:
        if self.phase == LeasePhase.HELD and now >= self.held_until:
            return self._lost(f"lost the etcd lease: no renewal since {now - self.renewed_sent_at:.1f} s", now)
        if self.phase == LeasePhase.HELD and now >= self.renew_at:
            self.renew_at = now + timing.lease_renew_s(self.granted_ttl_s)
            return [RenewLease(self.lease_id)]
        if self.phase == LeasePhase.TAKING and now >= self.take_deadline:
            return self._failed(LeaseFailed("take", "no answer to the take"), now)
        if self.phase == LeasePhase.WAITING and self.probe_at is not None and now >= self.probe_at:
            self.probe_at = now + timing.lease_wait_probe_s(self.ttl_s)
            return [ProbeAuthority("waiting for the etcd lease: is the key still held?")]
        if self.phase == LeasePhase.UNREACHABLE and now >= self.retry_at:
            self.retry_at = now + timing.lease_retry_s(self.failures + 1)
            return [ProbeAuthority(f"etcd unreachable for the last {self.failures} attempt(s)")]
        return []

    # --- the shell's answers -------------------------------------------------------------------

    def handle(self, event: LeaseEvent, now: float) -> list[Effect]:
        if isinstance(event, LeaseTaken):
            return self._taken(event, now)
        if isinstance(event, LeaseRenewed):
            return self._renewed(event, now)
        if isinstance(event, KeyHolder):
            return self._holder(event, now)
        return self._failed(event, now)

    def _taken(self, event: LeaseTaken, now: float) -> list[Effect]:
        effects = self._reachable(now)
        self.holder, self.holder_revision = self.name, event.revision
        if self.phase != LeasePhase.TAKING or not self._still_wanted():
            # Nobody wants it any more (a MASTER appeared, a fault, a stop): give it back at once.
            self.phase = LeasePhase.IDLE
            self.owner.set_hold(SOURCE, None, now)
            return effects + [RevokeLease(event.lease_id, "taken after it was no longer wanted")]
        self.phase, self.lease_id, self.granted_ttl_s = LeasePhase.HELD, event.lease_id, event.ttl_s
        self._extend(event.sent_at, event.ttl_s)
        self.renew_at = event.sent_at + timing.lease_renew_s(event.ttl_s)
        self.owner.set_hold(SOURCE, None, now)
        if self.owner.may_become_master() is not None or self.owner.live_master() is not None:
            return effects + self._give_up("taken, but this node may no longer become MASTER")
        wanted, sticky = self.wanted or (Reason(Why.NO_MASTER, "no MASTER"), False)
        reason = Reason(wanted.code, f"{wanted.text}; took the etcd lease")
        # The VIPs' lifetime first: they are added ending by held_until.
        return effects + [VipsUntil(self.held_until)] + self.owner.become_master(reason, now, sticky)

    def _renewed(self, event: LeaseRenewed, now: float) -> list[Effect]:
        effects = self._reachable(now)
        if self.phase != LeasePhase.HELD or event.lease_id != self.lease_id:
            return effects           # an answer for a lease given up meanwhile
        if event.ttl_left_s <= 0:
            return effects + self._lost("lost the etcd lease: etcd no longer knows it (expired)", now)
        if self._extend(event.sent_at, min(event.ttl_left_s, self.granted_ttl_s)) \
                and self.owner.state == State.MASTER:
            effects.append(VipsUntil(self.held_until))
        return effects

    def _extend(self, sent_at: float, ttl_s: int) -> bool:
        """Never shorten, never count from the answer: sent + TTL - margin. True if it moved."""
        until = timing.lease_held_until(sent_at, ttl_s)
        if self.held_until is None or self.phase != LeasePhase.HELD or until > self.held_until:
            self.held_until, self.renewed_sent_at = until, sent_at
            return True
        return False

    def _holder(self, event: KeyHolder, now: float) -> list[Effect]:
        effects = [] if event.streamed else self._reachable(now)
        if event.refused_take:
            return effects + self._refused(event, now)
        if event.revision and event.revision < self.holder_revision:
            return effects           # older news than what this node knows
        self.holder, self.holder_revision = event.holder, max(event.revision, self.holder_revision)
        mine = event.holder == self.name and (not event.lease_id or event.lease_id == self.lease_id)
        if self.phase == LeasePhase.HELD and not mine:
            who = f"{event.holder} holds it" if event.holder else "the key was deleted"
            return effects + self._lost(f"lost the etcd lease: {who}", now)
        if self.phase == LeasePhase.WAITING:
            if event.holder is None:
                # The holder gave up or its lease expired: the election decides again.
                self.phase = LeasePhase.IDLE
                self.owner.set_hold(SOURCE, None, now)
            else:
                earlier = ", an earlier run of this node: it expires within the TTL" \
                    if event.holder == self.name else ""
                self.owner.set_hold(SOURCE, f"waiting for the etcd lease (held by {event.holder}{earlier})", now)
        return effects

    def _refused(self, event: KeyHolder, now: float) -> list[Effect]:
        """The take found the key held (at store revision `event.revision`). Only this answer moves
        TAKING on: watch news of this node's own new key may come first. News newer than the
        refusal (the key deleted meanwhile) wins: then the election decides again."""
        if self.phase != LeasePhase.TAKING:
            return []
        if event.revision >= self.holder_revision:
            self.holder, self.holder_revision = event.holder, event.revision
        self.phase = LeasePhase.WAITING
        self.probe_at = now + timing.lease_wait_probe_s(self.ttl_s)
        return self._holder(KeyHolder(self.holder, self.holder_revision), now)

    def _failed(self, event: LeaseFailed, now: float) -> list[Effect]:
        self.last_error = event.text
        if self.phase == LeasePhase.HELD or event.what == "renew":
            return []                # held_until decides, not one failed request; a lease given up: nothing
        self.failures += 1
        self.retry_at = now + timing.lease_retry_s(self.failures)
        if self.phase in (LeasePhase.TAKING, LeasePhase.WAITING):
            self.owner.set_hold(SOURCE, None, now)
        self.phase = LeasePhase.UNREACHABLE
        return self.owner.set_fault(SOURCE, f"cannot use etcd: {event.text}", now)

    def _reachable(self, now: float) -> list[Effect]:
        """Any answer from etcd: an unreachable etcd is back."""
        self.failures, self.retry_at, self.last_error = 0, None, None
        if self.phase != LeasePhase.UNREACHABLE:
            return []
        self.phase = LeasePhase.IDLE
        return self.owner.set_fault(SOURCE, None, now, "etcd answers again")

    # --- giving the lease up ------------------------------------------------------------------

    def _give_up(self, why: str) -> list[Effect]:
        lease_id = self.lease_id
        self.phase, self.held_until, self.renew_at = LeasePhase.IDLE, None, None
        if self.holder == self.name:
            self.holder = None
        return [RevokeLease(lease_id, why)]

    def _lost(self, text: str, now: float) -> list[Effect]:
        """The lease ran out or went to another: FAULT at once (the VIPs go), until etcd answers."""
        effects = self._give_up(text)
        self.phase = LeasePhase.UNREACHABLE
        self.failures = max(self.failures, 1)
        self.retry_at = now + timing.lease_retry_s(self.failures)
        self.last_error = text
        if self.owner.state == State.MASTER:
            # Maintenance or not (it stops automatic transitions): a MASTER without a lease holds no VIP.
            self.owner.faults[SOURCE] = text
            return self.owner.enter(State.FAULT, Reason(Why.LEASE_LOST, text), now) + effects
        return self.owner.set_fault(SOURCE, text, now) + effects
