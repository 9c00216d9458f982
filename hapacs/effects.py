"""What the election core decides: reasons and effects, as frozen data.

The core returns a list of these; the asyncio shell carries them out in
order. Every transition carries a Reason: a code for machines (status,
SNMP, tests) and one sentence for people (logs, notify scripts).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .states import Flags, State


class Why(str, enum.Enum):
    STARTUP = "startup"
    MASTER_HEARD = "master-heard"        # INIT -> BACKUP: someone else is MASTER
    MASTER_DOWN = "master-down"          # the MASTER fell silent (Master_Down_Timer)
    NO_MASTER = "no-master"              # nobody was MASTER when the timer ran out
    MASTER_LEFT = "master-left"          # the MASTER said it leaves (priority 0, FAULT, BACKUP)
    HANDOVER_TO_ME = "handover-to-me"    # the MASTER handed its VIPs to this node
    HANDED_OVER = "handed-over"          # this node handed its VIPs to another
    SPLIT_BRAIN = "split-brain"          # two MASTERs heard each other; this one lost
    FAULT = "fault"                      # link down, check down, ...
    RECOVERED = "recovered"              # every fault cleared
    COMMAND = "command"                  # takeover by an operator
    LEASE_LOST = "lease-lost"            # the leadership lease (etcd) ran out or went to another
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class Reason:
    code: Why
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Outgoing:
    """The parts of a heartbeat the core decides; the shell adds the rest."""

    state: State
    priority: int
    flags: Flags
    term: int
    target: str | None = None


@dataclass(frozen=True)
class SendAdvert:
    advert: Outgoing


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    reason: Reason


@dataclass(frozen=True)
class AcquireVips:
    """Add every VIP (as a renewable lease) and announce it (GARP / NA)."""
    reason: Reason


@dataclass(frozen=True)
class ReleaseVips:
    reason: Reason


@dataclass(frozen=True)
class Announce:
    """Announce the VIPs again (GARP / NA) without changing anything."""
    why: str


@dataclass(frozen=True)
class StartDrain:
    """Wait until no DICOM association is open on a VIP (at most timeout_s), then
    tell the core with `drained()`."""
    target: str
    timeout_s: float


@dataclass(frozen=True)
class HandoverDone:
    target: str | None
    ok: bool
    text: str
    cut: int = 0


@dataclass(frozen=True)
class PeerChange:
    name: str
    up: bool
    text: str


@dataclass(frozen=True)
class SplitBrain:
    peer: str
    winner: str
    text: str


@dataclass(frozen=True)
class Notice:
    """Something an operator should read in the log, without a state change."""
    text: str


@dataclass(frozen=True)
class Misconfigured:
    """A living peer this node cannot understand, or one with this node's name (logged as an
    ERROR, an SNMP notification); `gone` when it has fallen silent."""
    address: str
    cause: str            # "auth": wrong key; "cluster": another cluster.id; "name": this node's name
    text: str
    gone: bool = False


@dataclass(frozen=True)
class ProbeWitness:
    """Probe the witnesses now and report with `set_witness()`: this node hears no peer."""
    why: str


@dataclass(frozen=True)
class Stopped:
    text: str


@dataclass(frozen=True)
class CommandPending:
    """An operator's command is under way; its answer (CommandDone, or HandoverDone for a
    release) comes by `deadline` at the latest."""
    command: str
    deadline: float


@dataclass(frozen=True)
class CommandDone:
    """The answer to an operator's command that took time (takeover)."""
    command: str
    ok: bool
    text: str


@dataclass(frozen=True)
class TakeLease:
    """Grant a lease of `ttl_s` and take the leadership key with it if nobody holds it; answer
    with the lease events of hapacs.leasegate, dated when the request was sent."""
    ttl_s: int


@dataclass(frozen=True)
class RenewLease:
    """Renew the lease once (keepalive); answer with LeaseRenewed or LeaseFailed."""
    lease_id: int


@dataclass(frozen=True)
class RevokeLease:
    """Give the lease up (its key goes with it), after the VIPs are gone: the next node takes
    the key at once instead of waiting for the TTL. No answer is needed."""
    lease_id: int
    why: str


@dataclass(frozen=True)
class ProbeAuthority:
    """Ask the authority who holds the key (a linearizable read); answer with KeyHolder or
    LeaseFailed: whether it can be reached again."""
    why: str


@dataclass(frozen=True)
class VipsUntil:
    """The lease was granted or renewed: the VIPs' addresses must end by `until` (the lease's
    local deadline, on the core's clock), so that a holder that dies with its host alive (kill -9)
    stops serving before another node can take the lease. Sent before AcquireVips and at every
    renewal; no answer is needed."""
    until: float


Effect = (SendAdvert | Transition | AcquireVips | ReleaseVips | Announce | StartDrain
          | HandoverDone | PeerChange | SplitBrain | Notice | Misconfigured | ProbeWitness | Stopped
          | CommandPending | CommandDone | TakeLease | RenewLease | RevokeLease | ProbeAuthority | VipsUntil)
