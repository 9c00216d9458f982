"""Peers that are alive but misconfigured: evidence that must keep a node from taking the VIPs.

A node that drops every heartbeat it hears (wrong key, another cluster.id)
believes it is alone and would take the VIPs while the real MASTER holds
them: two holders. A node whose name another host also uses ignores that
host's heartbeats as its own, with the same result. So datagrams that fail
authentication or carry another cluster id, coming from an address in
cluster.peers (or, with multicast, failing authentication), and valid
heartbeats that carry this node's own name from another address, are kept
here as evidence of a living peer. Pure.

How the evidence is weighed, and why an attacker gains nothing by it:

* A "suspect" ranks by what its heartbeats claim (priority, address),
  unverified. This node does not become MASTER while a suspect claims to
  be MASTER or ranks above it; a lower-ranked suspect does not stop it.
  Two misconfigured nodes thus still elect one: each blocks the other only
  if the other ranks higher or is already MASTER.
* Unauthenticated evidence counts only until this node has heard one valid
  heartbeat (then it knows its key works and who its peers are), and never
  from an address whose valid heartbeats it has heard. Forged or replayed
  garbage injected after the cluster has run correctly therefore neither
  moves a VIP nor stops a real failover; from a known peer's address it is
  only counted in drops, from another address shown in status, not blocking.
* A suspect that claims FAULT or maintenance does not block either: it will
  never take the VIPs, and waiting for it would leave them unheld.
* A duplicate name is authenticated (the other host has our key), so it
  always counts: of two nodes with one name only the higher-ranked may
  hold the VIPs, and a MASTER that hears a higher-ranked MASTER of its name
  steps down.
* Evidence expires like a peer: after dead_after + 1 of the longer of the
  two advertisement intervals without a datagram.
* Noise never floods the log: at most MAX_SUSPECTS addresses are followed,
  and each (address, cause) is reported at most once per REPORT_AGAIN_S.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import timing
from .effects import Announce, Effect, Misconfigured, Reason, Why
from .model import Peer, SuspectView, would_take_over
from .peertable import split_brain_winner
from .states import State
from .wire import Advert

if TYPE_CHECKING:
    from .election import Election

# Noise must not flood the log (an ERROR and an SNMP notification per report): at most this
# many addresses are followed at once, and an address is reported for one cause at most once
# per REPORT_AGAIN_S, however often it comes and goes. More is a flood, counted in drops only.
MAX_SUSPECTS = 16
MAX_REPORTED = 64         # (address, cause) report times remembered; beyond, new ones go unreported
REPORT_AGAIN_S = 60.0

CAUSES = {
    "auth": "its heartbeats fail authentication: another key in cluster.auth_key_file",
    "cluster": "its heartbeats carry another cluster.id",
    "name": "it uses this node's name: node.name must be unique",
}


@dataclass
class Suspect:
    address: bytes
    cause: str
    claimed: Advert
    last_seen: float
    reported: bool = False   # its coming was logged: its going is too

    @property
    def shown(self) -> str:
        return str(ipaddress.ip_address(self.address))

    @property
    def claims(self) -> str:
        return f"{self.claimed.node} {self.claimed.state.name} priority {self.claimed.priority}"

    @property
    def claims_master(self) -> bool:
        return self.claimed.state == State.MASTER and self.claimed.priority > 0

    @property
    def may_take_over(self) -> bool:
        """It claims to be a node that would become MASTER: one in FAULT or maintenance never
        does, so waiting for it would leave the VIPs unheld."""
        return would_take_over(self.claimed.state, self.claimed.priority, self.claimed.flags)


class Suspects:
    def __init__(self) -> None:
        self._by_address: dict[bytes, Suspect] = {}
        self.validated: set[bytes] = set()   # addresses of peers heard with valid heartbeats
        self.synced = False                  # this node has heard a valid heartbeat since start
        self._reported: dict[tuple[bytes, str], float] = {}   # (address, cause): when last reported

    def valid(self, address: bytes) -> None:
        self.validated.add(address)
        self.synced = True

    # --- evidence in -------------------------------------------------------------------

    def unreadable(self, owner: Election, address: bytes, cause: str, claimed: Advert, now: float) -> list[Effect]:
        """A datagram from a peer's address that failed authentication ("auth") or carries
        another cluster id ("cluster"), with what it claims (unverified)."""
        if address in self.validated or address == owner.p.address:
            return []   # a known peer's address: forged or replayed, never evidence
        suspect, effects = self._heard(owner, address, cause, claimed, now)
        if (self._rival_master(owner, suspect) and not self.synced
                and (claimed.priority, address) > (owner.priority, owner.p.address)):
            # Two MASTERs that cannot read each other (a network cut healed between a node with a
            # wrong key and the others): the lower-ranked one steps down, as a split brain would.
            # A node that ever heard a valid heartbeat never does: forged garbage moves nothing.
            effects += self._step_down(owner, f"a misconfigured peer at {suspect.shown} ({suspect.claims}) is "
                                       f"also MASTER and ranks above this node: {CAUSES[cause]}", now)
        return effects

    def duplicate(self, owner: Election, advert: Advert, address: bytes, now: float) -> list[Effect]:
        """A valid heartbeat with this node's own name from another address."""
        suspect, effects = self._heard(owner, address, "name", advert, now)
        if self._rival_master(owner, suspect):
            # The rule that decides between two MASTERs that hear each other decides here too.
            mine = (owner.maintenance, owner.master_term, owner.advertised_priority(), owner.p.address)
            wins, why = split_brain_winner(mine, Peer.from_advert(advert, address, now))
            text = f"the host at {suspect.shown} also calls itself {advert.node} and is MASTER"
            if not wins:
                return effects + self._step_down(owner, f"{text} ({why})", now)
            if effects:
                effects.append(Announce(f"{text}; this node stays MASTER ({why})"))
        return effects

    @staticmethod
    def _rival_master(owner: Election, suspect: Suspect | None) -> bool:
        """This node is MASTER and the suspect claims to be MASTER too."""
        return suspect is not None and owner.state == State.MASTER and suspect.claims_master

    @staticmethod
    def _step_down(owner: Election, text: str, now: float) -> list[Effect]:
        """This MASTER loses to a living peer it cannot follow: BACKUP, as a split brain ends."""
        return owner.enter(State.BACKUP, Reason(Why.SPLIT_BRAIN, text), now)

    def _heard(self, owner: Election, address: bytes, cause: str, claimed: Advert,
               now: float) -> tuple[Suspect | None, list[Effect]]:
        """Keep (or renew) the evidence: the suspect (None when too many are followed already) and
        its report when it is new or its cause changed, at most once per REPORT_AGAIN_S."""
        key = (owner.priority, owner.p.address)
        known = self._by_address.get(address)
        if known is None and len(self._by_address) >= MAX_SUSPECTS:
            return None, []
        blocked = known is not None and self._blocks(known, key)
        same = known is not None and known.cause == cause
        suspect = self._by_address[address] = Suspect(address, cause, claimed, now, same and known.reported)
        if blocked and self.blocking(key) is None:
            # Its new claim (FAULT, maintenance, stepped down) no longer keeps this node from
            # taking over: listen again, as when a suspect falls silent.
            owner.listen_again(now)
        if same or not self._may_report(address, cause, now):
            return suspect, []
        suspect.reported = True
        # A peer with this node's name is understood well enough; the others are not.
        what = "is misconfigured" if cause == "name" else "cannot be understood"
        return suspect, [Misconfigured(suspect.shown, cause, f"a living peer at {suspect.shown} "
                                       f"({suspect.claims}) {what}: {CAUSES[cause]}")]

    def _may_report(self, address: bytes, cause: str, now: float) -> bool:
        last = self._reported.get((address, cause))
        if last is not None and now - last < REPORT_AGAIN_S:
            return False
        if len(self._reported) >= MAX_REPORTED:
            self._reported = {k: at for k, at in self._reported.items() if now - at < REPORT_AGAIN_S}
            if len(self._reported) >= MAX_REPORTED:
                return False
        self._reported[(address, cause)] = now
        return True

    # --- weighing --------------------------------------------------------------------------

    def blocking(self, key: tuple[int, bytes]) -> str | None:
        """Why the evidence keeps this node from becoming MASTER, or None."""
        for suspect in self._by_address.values():
            if self._blocks(suspect, key):
                why = "claims to be MASTER" if suspect.claims_master else "ranks above this node"
                return (f"a misconfigured peer at {suspect.shown} ({suspect.claims}) {why}: "
                        f"{CAUSES[suspect.cause]}")
        return None

    def _blocks(self, suspect: Suspect, key: tuple[int, bytes]) -> bool:
        if suspect.cause != "name" and self.synced:
            return False
        return suspect.claims_master or (suspect.may_take_over and (suspect.claimed.priority, suspect.address) > key)

    # --- time ---------------------------------------------------------------------------------

    def expire(self, now: float, dead_after: int, interval_s: float) -> list[Effect]:
        gone = [s for s in self._by_address.values() if now >= self._silent_at(s, dead_after, interval_s)]
        for suspect in gone:
            del self._by_address[suspect.address]
        return [Misconfigured(s.shown, s.cause, f"the misconfigured peer at {s.shown} fell silent", gone=True)
                for s in gone if s.reported]

    def next_deadline(self, dead_after: int, interval_s: float) -> float | None:
        return min((self._silent_at(s, dead_after, interval_s) for s in self._by_address.values()), default=None)

    @staticmethod
    def _silent_at(suspect: Suspect, dead_after: int, interval_s: float) -> float:
        return suspect.last_seen + timing.peer_timeout_s(dead_after,
                                                         max(interval_s, suspect.claimed.advert_interval_s))

    def views(self, key: tuple[int, bytes], now: float) -> tuple[SuspectView, ...]:
        return tuple(SuspectView(s.address, s.cause, s.claims, now - s.last_seen, self._blocks(s, key),
                                 CAUSES[s.cause])
                     for s in sorted(self._by_address.values(), key=lambda s: s.address))
