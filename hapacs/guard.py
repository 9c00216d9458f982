"""Split-brain protection: quorum and witnesses. Pure.

A node that hears no peer cannot tell "they all died" from "I am the one
cut off". Two answers, both optional:

* quorum (`cluster.quorum: majority`, three nodes or more): a node may
  become or stay MASTER only while it hears a majority, itself included.
* witnesses (`cluster.witness`): a node that hears no peer may become
  MASTER only with a witness answer newer than the last peer it heard;
  a node that hears no peer and reaches no witness goes to FAULT
  (isolated) until a peer or a witness answers.

The guard keeps what it learnt (when this node last heard nobody, the
last witness answer), answers the election's questions and, after every
event, sets or clears the election's "quorum" and "isolated" gates. It
has no deadline of its own: witness probes are driven by events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .effects import Effect, ProbeWitness
from .states import State

if TYPE_CHECKING:
    from .election import Election


class SplitBrainGuard:
    def __init__(self, witness: bool, cluster_size: int) -> None:
        self.witness = witness
        self.cluster_size = cluster_size       # 0: no quorum
        self.alone_since: float | None = None
        self.witness_ok: bool | None = None
        self.witness_at: float | None = None
        self.awaiting_witness = False          # a takeover waits for a witness answer

    def reconfigure(self, witness: bool, cluster_size: int) -> None:
        self.witness, self.cluster_size = witness, cluster_size

    # --- quorum -------------------------------------------------------------------

    @property
    def needed(self) -> int:
        return self.cluster_size // 2 + 1

    def quorum_problem(self, heard: int) -> str | None:
        """With `heard` nodes heard (this one included): why there is no quorum, or None."""
        if not self.cluster_size or heard >= self.needed:
            return None
        return f"no quorum: hears {heard} of {self.cluster_size} nodes, {self.needed} needed"

    def takeover_problem(self, heard_recently: int) -> str | None:
        """Taking over with `heard_recently` peers that still speak: why not, or None."""
        if self.cluster_size and 1 + heard_recently < self.needed:
            return f"it hears {1 + heard_recently} of {self.cluster_size} nodes"
        return None

    # --- witness ------------------------------------------------------------------

    def needs_witness(self, heard_recently: int, last_heard: float) -> bool:
        """Hearing nobody, a takeover needs a witness answer newer than the last peer heard."""
        if not self.witness or heard_recently:
            return False
        return self.witness_at is None or self.witness_at < last_heard or not self.witness_ok

    def ask_witness(self, why: str) -> ProbeWitness:
        """A takeover waits for a witness answer: probe now (`witness_result` goes on)."""
        self.awaiting_witness = True
        return ProbeWitness(why)

    def hears(self, peers_up: int, now: float) -> str | None:
        """After every event: "heard" when peers came back, "alone" when this node just
        started hearing nobody (probe the witnesses), else None."""
        if not self.witness:
            return None
        if peers_up:
            self.alone_since = None
            return "heard"
        if self.alone_since is None:
            self.alone_since = now
            return "alone"
        return None

    def record(self, ok: bool, now: float) -> None:
        self.witness_ok, self.witness_at = ok, now

    # --- acting on the election's gates -----------------------------------------------

    def after_event(self, owner: Election, now: float) -> list[Effect]:
        """Re-check quorum and isolation after every event."""
        if not owner.deciding:
            return []
        effects: list[Effect] = []
        up = owner.peers.up_count()
        if self.cluster_size:
            text = self.quorum_problem(up + 1)
            if owner.state == State.MASTER or "quorum" in owner.faults:
                # A MASTER without a majority releases the VIPs: the majority side elects its own.
                effects += owner.set_fault("quorum", text, now, "quorum regained")
            elif (text is None) == ("quorum" in owner.holds):
                effects += owner.set_hold("quorum", text, now)
        heard = self.hears(up, now)
        if heard == "heard" and self.awaiting_witness:
            # It asked a witness because it heard nobody, and now hears a peer: the election goes on
            # without the witness (its Master_Down_Timer stopped when it asked; re-arm it).
            self.awaiting_witness = False
            owner.listen_again(now)
        if heard == "heard" and "isolated" in owner.faults:
            effects += owner.set_fault("isolated", None, now, "a peer is heard again")
        elif heard == "alone":
            effects.append(ProbeWitness("no peer heard"))
        return effects

    def witness_result(self, owner: Election, ok: bool, text: str, now: float, probed_at: float) -> list[Effect]:
        """A witness probe's result: `ok` if any witness answered; `text` says what failed.
        It is dated from when the probe began: a probe sent before the peers fell silent may
        have crossed the cut, and proves nothing about this node being reachable after it."""
        self.record(ok, probed_at)
        others = owner.peers.heard_recently(now, besides=owner.master)
        if not self.witness or not owner.deciding or others:
            return []
        if not ok:
            self.awaiting_witness = False
            return owner.set_fault("isolated", f"isolated: no peer heard and no witness reachable ({text})", now)
        effects = owner.set_fault("isolated", None, now, f"witness reachable ({text})")
        if self.awaiting_witness and owner.state in (State.INIT, State.BACKUP):
            self.awaiting_witness = False
            effects += owner.watch.master_down(now)
        return effects
