"""The election's data: its parameters, what it knows of each peer, and the
frozen views it gives to status and SNMP. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import timing
from .states import Flags, State
from .wire import Advert

if TYPE_CHECKING:
    from .leasegate import LeaseView


def would_take_over(state: State, priority: int, flags: Flags) -> bool:
    """A node that says this in its heartbeats would become MASTER if the MASTER went away, now or
    once its checks give first results (HELD): INIT or BACKUP, priority above 0, not in maintenance.
    One in FAULT or maintenance never does."""
    return state in (State.INIT, State.BACKUP) and priority > 0 and Flags.MAINTENANCE not in flags


class CommandRefused(Exception):
    """An operator's command that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class Params:
    name: str
    address: bytes             # the address heartbeats come from; breaks priority ties
    priority: int              # 1..254
    advert_interval_s: float
    dead_after: int
    preempt: bool
    preempt_delay_s: float
    vip_digest: bytes = b""
    drain_timeout_s: float = timing.DEFAULT_DRAIN_TIMEOUT_S   # handovers a peer asks for (takeover, preempt)
    witness: bool = False           # witnesses configured: alone, a node needs one to be MASTER
    cluster_size: int = 0           # quorum: majority of this many nodes (0: no quorum)
    lease_ttl_s: int = 0            # authority etcd: lead only under a lease of this TTL (0: heartbeats)


@dataclass
class Peer:
    """What this node knows of another node, from its last heartbeat."""

    name: str
    address: bytes
    state: State
    priority: int
    flags: Flags
    term: int
    interval_s: float
    last_seen: float
    target: str | None
    vip_digest: bytes
    up: bool = True

    @classmethod
    def from_advert(cls, advert: Advert, address: bytes, now: float) -> Peer:
        """What a heartbeat says of its sender, heard from `address` at `now`."""
        return cls(advert.node, address, advert.state, advert.priority, advert.flags, advert.term,
                   advert.advert_interval_s, now, advert.target, advert.vip_digest)

    @property
    def is_master(self) -> bool:
        """A MASTER that means to stay (priority 0 means it is leaving)."""
        return self.up and self.state == State.MASTER and self.priority > 0

    @property
    def candidate(self) -> bool:
        """Could take over if the MASTER went away."""
        return self.up and would_take_over(self.state, self.priority, self.flags) and Flags.HELD not in self.flags

    @property
    def coming(self) -> bool:
        """A candidate soon: held back only until its checks give first results (HELD)."""
        return self.up and would_take_over(self.state, self.priority, self.flags) and Flags.HELD in self.flags

    def timeout_s(self, dead_after: int) -> float:
        return timing.peer_timeout_s(dead_after, self.interval_s)


@dataclass(frozen=True)
class PeerView:
    name: str
    address: bytes
    state: State
    priority: int
    last_seen_s: float
    up: bool
    maintenance: bool


@dataclass(frozen=True)
class SuspectView:
    """A living peer this node cannot understand (or that has its name), for status."""

    address: bytes
    cause: str
    claims: str           # what its heartbeats say, unverified: "pacs-b MASTER priority 100"
    last_seen_s: float
    blocking: bool        # it keeps this node from becoming MASTER
    text: str


@dataclass(frozen=True)
class ElectionView:
    """A frozen picture of the election for status, SNMP and tests."""

    state: State
    since_s: float
    priority: int
    effective_priority: int
    master: str | None
    maintenance: bool
    sticky: bool
    term: int
    faults: tuple[str, ...]
    holds: tuple[str, ...]
    peers: tuple[PeerView, ...]
    handover_target: str | None
    alone: bool
    misconfigured: tuple[SuspectView, ...] = ()
    lease: LeaseView | None = None     # hapacs.leasegate.LeaseView with authority etcd
