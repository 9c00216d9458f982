"""Split-brain protection: quorum and witnesses. Pure.

A node that hears no peer cannot tell "they all died" from "I am the one
cut off". Two answers, both optional:

* quorum (`cluster.quorum: majority`, three nodes or more): a node may
  become or stay MASTER only while it hears a majority, itself included.
* witnesses (`cluster.witness`): a node that hears no peer may become
  MASTER only with a witness answer newer than the last peer it heard;
  a lone MASTER whose witness does not answer goes to FAULT.

The guard keeps what it learnt (when this node last heard nobody, the
last witness answer) and answers questions; the election acts on them.
It has no deadline of its own: witness probes are driven by events.
"""

from __future__ import annotations


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
