"""The agent's status book: counters, the transition history, the last drain, and the frozen
`Status` snapshot built from them and the core's view.

The shell writes into the book as things happen; status, SNMP, metrics and
systemd read the snapshot. The book does no I/O and never decides anything.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress

from . import wire
from .drain import DrainResult
from .effects import PeerChange, SplitBrain, Transition
from .lateness import LatenessMeter
from .model import ElectionView
from .states import State
from .status import (
    CheckStatus, Counters, MisconfiguredPeer, PeerStatus, Status, TransitionRecord, VipStatus, authority_status,
)

HISTORY = 50
DROP_CAUSES = wire.DROP_CODES + ("unknown_sender",)


class StatusBook:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.drops: collections.Counter[str] = collections.Counter({cause: 0 for cause in DROP_CAUSES})
        self.by_reason: collections.Counter[str] = collections.Counter()   # transitions by reason code
        self.history: collections.deque[TransitionRecord] = collections.deque(maxlen=HISTORY)
        self.late = LatenessMeter()
        self.last_drain: DrainResult | None = None
        self.last_drain_end = 0.0
        self.peer_addresses: dict[str, str] = {}   # name -> the address its heartbeats come from
        self.authority_endpoints: tuple[int, int] | None = None   # etcd endpoints (answering, configured)

    # --- writing ------------------------------------------------------------------

    def heard(self, name: str, source: str) -> None:
        self.counts["adverts_received"] += 1
        self.peer_addresses[name] = source

    def sent(self) -> None:
        """A heartbeat was encoded and handed to the socket (one that could not be encoded is not)."""
        self.counts["adverts_sent"] += 1

    def dropped(self, cause: str) -> None:
        self.drops[cause] += 1

    def drained(self, result: DrainResult, now: float) -> None:
        self.last_drain, self.last_drain_end = result, now
        self.counts["drains"] += 1
        self.counts["drain_cut"] += result.cut

    def effect(self, effect, now: float) -> None:
        """Count what the core decided (called for every effect carried out; heartbeats are
        counted by `sent()`, where they are sent)."""
        if isinstance(effect, PeerChange) and not effect.up:
            self.counts["peers_lost"] += 1
        elif isinstance(effect, SplitBrain):
            self.counts["split_brains"] += 1
        elif isinstance(effect, Transition):
            self.counts["transitions"] += 1
            self.by_reason[effect.reason.code.value] += 1
            if effect.new == State.MASTER:
                self.counts["became_master"] += 1
            at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            self.history.append(TransitionRecord(at, effect.old.name, effect.new.name, effect.reason.text,
                                                 effect.reason.code.value, now))

    # --- reading --------------------------------------------------------------------

    def counters(self) -> Counters:
        counts = self.counts
        return Counters(transitions=counts["transitions"], became_master=counts["became_master"],
                        adverts_sent=counts["adverts_sent"], adverts_received=counts["adverts_received"],
                        split_brains=counts["split_brains"], peers_lost=counts["peers_lost"],
                        drains=counts["drains"], drain_cut=counts["drain_cut"],
                        drops=dict(self.drops), by_reason=dict(self.by_reason))

    def drain_record(self) -> dict | None:
        drain = self.last_drain
        if drain is None:
            return None
        return {"ended_monotonic": round(self.last_drain_end, 6), "waited_s": round(drain.waited_s, 3),
                "open_at_start": drain.open_at_start, "cut": drain.cut, "held_new_connections": drain.held}

    def snapshot(self, *, node: str, cluster_id: int, view: ElectionView, own_address: str, interface: str,
                 vips: tuple[VipStatus, ...], checks: tuple[CheckStatus, ...], advert_interval_s: float,
                 preempt: bool, uptime_s: float, version: str, pid: int, now: float,
                 bad_requests: dict[str, int], balance: dict | None = None,
                 bgp: dict | None = None) -> Status:
        peers = tuple(PeerStatus(p.name, self.peer_addresses.get(p.name, str(ipaddress.ip_address(p.address))),
                                 p.state.name if p.up else "LOST", p.priority, p.last_seen_s, p.maintenance)
                      for p in view.peers)
        if view.master == node:
            master_address = own_address
        else:
            master_address = self.peer_addresses.get(view.master) if view.master else None
        return Status(
            node=node, cluster_id=cluster_id, state=view.state.name, since_s=view.since_s,
            priority=view.priority, effective_priority=view.effective_priority, master=view.master,
            maintenance=view.maintenance, vips=vips, peers=peers, checks=checks,
            transitions=tuple(self.history), counters=self.counters(), sticky=view.sticky, faults=view.faults,
            alone=view.alone, handover_target=view.handover_target, master_address=master_address,
            address=own_address, interface=interface, advert_interval_s=advert_interval_s, preempt=preempt,
            uptime_s=uptime_s, version=version, pid=pid,
            timer_late_ms_max=self.late.max_s * 1000, timer_late_ms_minute=self.late.recent_s(now) * 1000,
            timer_late_recent=tuple((round(t, 3), round(late * 1000, 1)) for t, late in self.late.notable),
            last_drain=self.drain_record(), bad_requests=bad_requests, balance=balance, bgp=bgp,
            authority=authority_status(view.lease, self.authority_endpoints),
            misconfigured=tuple(MisconfiguredPeer(str(ipaddress.ip_address(m.address)), m.cause, m.claims,
                                                  m.last_seen_s, m.blocking, m.text) for m in view.misconfigured))
