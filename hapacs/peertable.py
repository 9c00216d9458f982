"""The peer table: what this node knows of every other node, and how they rank. Pure.

Ranking follows RFC 5798: the higher priority wins, and the higher
primary address breaks a tie (6.4.3). The table owns one deadline: the
moment the next live peer falls silent.
"""

from __future__ import annotations

from .effects import Announce, Effect, Notice, PeerChange
from .model import Peer, PeerView
from .states import Flags, State
from .wire import Advert


class PeerTable:
    def __init__(self) -> None:
        self._peers: dict[str, Peer] = {}

    def __getitem__(self, name: str) -> Peer:
        return self._peers[name]

    def get(self, name: str | None) -> Peer | None:
        return self._peers.get(name or "")

    def heard(self, advert: Advert, address: bytes, now: float, master_here: bool,
              vip_digest: bytes) -> list[Effect]:
        """Store a heartbeat; what an operator or the workstations must learn from it."""
        before = self._peers.get(advert.node)
        self._peers[advert.node] = Peer.from_advert(advert, address, now)
        effects: list[Effect] = []
        if before is None or not before.up:
            effects.append(PeerChange(advert.node, True, f"peer {advert.node} heard: {advert.state.name}, "
                                      f"priority {advert.priority}"))
            if before is not None and master_here:
                effects.append(Announce(f"peer {advert.node} is back"))
        elif before.is_master and master_here and not (advert.state == State.MASTER and advert.priority > 0):
            # It was MASTER while this node was too (a partition or a hang): workstations on
            # its side may still point at its MAC, so announce again (keepalived often does not).
            effects.append(Announce(f"peer {advert.node} stepped down from MASTER"))
        if advert.vip_digest != vip_digest and (before is None or before.vip_digest != advert.vip_digest):
            effects.append(Notice(f"peer {advert.node} is configured with other VIPs than this node: "
                                  "compare the vips sections"))
        return effects

    # --- silence ------------------------------------------------------------------

    def expire(self, now: float, dead_after: int) -> list[Peer]:
        """Mark as down the live peers silent for their timeout; those that just went down."""
        lost = []
        for peer in self._peers.values():
            # Compare exactly as next_deadline() computes, or a float rounding spins the loop.
            if peer.up and now >= self._silent_at(peer, dead_after):
                peer.up = False
                lost.append(peer)
        return lost

    def next_deadline(self, dead_after: int) -> float | None:
        return min((self._silent_at(p, dead_after) for p in self._peers.values() if p.up), default=None)

    @staticmethod
    def _silent_at(peer: Peer, dead_after: int) -> float:
        return peer.last_seen + peer.timeout_s(dead_after)

    # --- who is there --------------------------------------------------------------

    def up_count(self) -> int:
        return sum(1 for peer in self._peers.values() if peer.up)

    def none_up(self) -> bool:
        """This node hears nobody: the one notion of "alone" (witness, status)."""
        return not any(peer.up for peer in self._peers.values())

    def heard_recently(self, now: float, besides: str | None) -> list[Peer]:
        """Peers, `besides` aside, that missed at most one heartbeat: deciding to take over, a
        peer that fell silent together with the MASTER must not count towards quorum."""
        return [p for p in self._peers.values()
                if p.up and p.name != besides and now - p.last_seen < 2 * p.interval_s]

    def last_heard(self, default: float) -> float:
        return max((p.last_seen for p in self._peers.values()), default=default)

    # --- ranking (RFC 5798 6.4.3: priority, then address) ----------------------------

    def outranking(self, key: tuple[int, bytes], besides: str | None) -> list[Peer]:
        """Live peers (`besides` aside) that rank above `key` and will take over: candidates,
        and peers held only until their first check results (a cold start)."""
        return [peer for peer in self._peers.values()
                if (peer.candidate or peer.coming) and peer.name != besides
                and (peer.priority, peer.address) >= key]

    def best_backup(self) -> Peer | None:
        """The peer a handover should go to: a healthy BACKUP, best first."""
        eligible = [p for p in self._peers.values() if p.candidate and p.state == State.BACKUP]
        return max(eligible, key=lambda p: (p.priority, p.address), default=None)

    # --- for people ---------------------------------------------------------------------

    def summary(self, now: float) -> str:
        """Why no peer can take the VIPs, for a refused release."""
        if not self._peers:
            return " (no peer heard)"
        parts = []
        for peer in self._peers.values():
            if not peer.up:
                parts.append(f"{peer.name} silent for {now - peer.last_seen:.1f} s")
            elif Flags.MAINTENANCE in peer.flags:
                parts.append(f"{peer.name} in maintenance")
            elif peer.state == State.BACKUP and Flags.HELD in peer.flags:
                # Its heartbeats say it is held back, not by what: its own status says.
                parts.append(f"{peer.name} BACKUP but held back (first check results, its BGP session "
                             f"or the etcd lease: `hapacs status` on {peer.name} says which)")
            elif peer.state == State.BACKUP and peer.priority == 0:
                parts.append(f"{peer.name} BACKUP with priority 0 (its checks lowered it)")
            else:
                parts.append(f"{peer.name} {peer.state.name}")
        return " (" + ", ".join(parts) + ")"

    def views(self, now: float) -> tuple[PeerView, ...]:
        return tuple(PeerView(p.name, p.address, p.state, p.priority, now - p.last_seen, p.up,
                              Flags.MAINTENANCE in p.flags)
                     for p in sorted(self._peers.values(), key=lambda p: p.name))


def split_brain_winner(mine: tuple[bool, int, int, bytes], peer: Peer) -> tuple[bool, str]:
    """Two MASTERs hear each other: does this node stay, and why (for the log)?

    `mine` is (maintenance, term, advertised priority, address). The one in maintenance
    stays (an operator froze it), then the newer term (the workstations were told about it
    last), then the higher priority and the higher address (RFC 5798 6.4.3's tie-break).
    """
    theirs = (Flags.MAINTENANCE in peer.flags, peer.term, peer.priority, peer.address)
    labels = ("maintenance is on", "became MASTER more recently", "higher priority", "higher address")
    why = next((label for label, a, b in zip(labels, mine, theirs) if a != b), "identical")
    return mine > theirs, why
