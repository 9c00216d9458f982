"""The BGP session gate: may this node hold routed VIPs now? Pure.

A routed VIP reaches the workstations only while the host's BGP speaker has
a session to its router. The shell (hapacs.bird) asks BIRD for the state of
the configured BGP protocols and feeds the answer here with `now`; this
module decides, and says why in one sentence:

| what BIRD says                                    | ready | session_down | the shell does           |
|---------------------------------------------------|-------|--------------|--------------------------|
| nothing yet (first answer pending)                | no    | no           | hold                     |
| a listed protocol Established for >= stable_for   | yes   | no           | no hold; fault cleared   |
| Established, for less than stable_for             | no    | no           | hold; fault cleared      |
| none Established (Active, Connect, Idle, missing) | no    | yes          | hold; a MASTER: fault    |
| BIRD not reachable (no socket, refused, timeout)  | no    | yes          | hold; a MASTER: fault    |
| BIRD's answer unreadable                          | no    | no           | hold (state unknown)     |

"Established for stable_for" means without a break: a new session (BIRD's
`since` changed, or a state other than Established seen in between)
starts the count again, so a flapping session never opens the gate. A
MASTER whose sessions are all down cannot announce its VIPs any more; the
shell puts it in FAULT (it releases them) so that a node of another site,
whose session is up, takes over.
"""

from __future__ import annotations

from dataclasses import dataclass

ESTABLISHED = "Established"
# The BGP session states as BIRD shows them in `show protocols`: RFC 4271 8.2.2's, and BIRD's Close.
BGP_STATES = ("Idle", "Connect", "Active", "OpenSent", "OpenConfirm", ESTABLISHED, "Close")


@dataclass(frozen=True)
class Protocol:
    """One line of BIRD's `show protocols`, as hapacs.bird read it."""
    name: str
    state: str          # one of BGP_STATES; without one, Down (BIRD shows it down) or BIRD's State (start, up)
    since: str          # BIRD's `since` column, as written: a new value means a new session


@dataclass
class _Seen:
    state: str
    since: str
    at: float           # when this node first saw this (state, since)


class SessionGate:
    def __init__(self, protocols: tuple[str, ...], stable_for_s: float):
        self.protocols = protocols
        self.stable_for_s = stable_for_s
        self.seen: dict[str, _Seen] = {}
        self.problem: str | None = "waiting for the first answer of the BGP speaker"
        self.unreachable = False

    def update(self, answer: dict[str, Protocol], now: float) -> None:
        """BIRD answered: the protocols it listed (those it did not list are missing)."""
        self.problem, self.unreachable = None, False
        for name in self.protocols:
            protocol = answer.get(name)
            state, since = (protocol.state, protocol.since) if protocol else ("missing", "")
            old = self.seen.get(name)
            if old is None or (old.state, old.since) != (state, since):
                self.seen[name] = _Seen(state, since, now)

    def failed(self, text: str, unreachable: bool, now: float) -> None:
        """BIRD could not be asked (`unreachable`) or answered garbage: the state is unknown.
        Unreachable counts as down: a BGP speaker that is gone announces nothing."""
        self.problem, self.unreachable = text, unreachable
        if unreachable:
            for name in self.protocols:
                old = self.seen.get(name)
                if old is None or old.state != "unreachable":
                    self.seen[name] = _Seen("unreachable", "", now)

    def _longest_established(self) -> tuple[str, float] | None:
        """(name, since when) of the protocol Established the longest, if one is and BIRD's answer was read."""
        if self.problem is not None:
            return None
        established = [(name, seen.at) for name, seen in self.seen.items() if seen.state == ESTABLISHED]
        return min(established, key=lambda found: found[1], default=None)

    def ready_at(self) -> float | None:
        """When the gate opens (or opened), if a session is Established now."""
        longest = self._longest_established()
        return None if longest is None else longest[1] + self.stable_for_s

    def ready(self, now: float) -> bool:
        at = self.ready_at()
        return at is not None and now >= at

    def session_down(self) -> bool:
        """No listed protocol is Established, as far as is known (an unreadable answer is not known)."""
        if self.unreachable:
            return True
        if self.problem is not None:
            return False
        return not any(self.seen.get(name) and self.seen[name].state == ESTABLISHED for name in self.protocols)

    def hold_text(self, now: float) -> str | None:
        """Why this node may not become MASTER, or None when it may."""
        if self.ready(now):
            return None
        if self.problem is not None:
            return f"BGP session state unknown: {self.problem}"
        longest = self._longest_established()
        if longest is not None:
            name, since = longest
            return (f"BGP session {name} Established for {now - since:.1f} s, not yet the {self.stable_for_s:g} s "
                    "of bgp.stable_for")
        shown = ", ".join(f"{name} not established ({self.seen[name].state} for {now - self.seen[name].at:.1f} s)"
                          for name in self.protocols if name in self.seen)
        return "BGP session " + shown

    def fault_text(self) -> str:
        return (f"BGP session down ({', '.join(f'{n} {self.seen[n].state}' for n in self.protocols if n in self.seen)})"
                ": this node cannot announce its routed VIPs")

    def snapshot(self, now: float) -> dict:
        """The status's "bgp" object (docs/status-json.md)."""
        protocols = [{"name": name, "state": self.seen[name].state if name in self.seen else "unknown",
                      "since_s": round(now - self.seen[name].at, 3) if name in self.seen else None}
                     for name in self.protocols]
        return {"protocols": protocols, "ready": self.ready(now), "stable_for_s": self.stable_for_s,
                "hold": self.hold_text(now)}
