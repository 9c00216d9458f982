"""An in-memory cluster for the election core: fake clock, lossy network, no sleeps.

Each node is a real `Election`; heartbeats go through the real wire
encoder, HMAC and replay guard, and arrive after `latency_s` unless the
link is cut. The clock jumps straight to the next deadline or delivery,
so a minute of cluster time takes milliseconds.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from dataclasses import dataclass, field

from hapacs import wire
from hapacs.effects import (
    AcquireVips, Announce, HandoverDone, ProbeWitness, ReleaseVips, SendAdvert, SplitBrain, StartDrain,
    Stopped, Transition,
)
from hapacs.election import Election, Params
from hapacs.heartbeat import HeartbeatWriter
from hapacs.states import State

KEY = b"k" * 32
CLUSTER = 7
DIGEST = wire.vip_digest(["192.0.2.100/24"])
WITNESS_PROBE_S = 0.01   # a witness that answers (or refuses) at once


@dataclass
class SimNode:
    name: str
    election: Election
    address: bytes
    alive: bool = True          # False: crashed, neither sends nor runs timers
    holds_vip: bool = False
    boot_id: int = 1
    transitions: list[tuple[float, Transition]] = field(default_factory=list)
    effects: list[tuple[float, object]] = field(default_factory=list)
    drain_delay_s: float | None = 0.0   # None: the shell never finishes draining
    witness_reachable: bool = True      # what a witness probe from this node finds
    witness_delay_s: float = WITNESS_PROBE_S   # how long a witness probe takes to answer
    guard: wire.ReplayGuard = field(default_factory=wire.ReplayGuard)
    writer: HeartbeatWriter | None = None
    key: bytes = KEY                    # a node configured with another key or cluster id
    cluster_id: int = CLUSTER

    def __post_init__(self) -> None:
        # The heartbeats carry the election's name (node.name), which tests may make a duplicate.
        self.writer = HeartbeatWriter(self.cluster_id, self.election.p.name, self.boot_id)

    @property
    def state(self) -> State:
        return self.election.state


class SimCluster:
    def __init__(self, latency_s: float = 0.0005):
        self.now = 1000.0
        self.latency_s = latency_s
        self.nodes: dict[str, SimNode] = {}
        self.cut: set[frozenset[str]] = set()
        self.one_way: set[tuple[str, str]] = set()   # (sender, receiver): that direction drops
        self._queue: list = []
        self._order = itertools.count()
        self.holder_history: list[tuple[float, tuple[str, ...]]] = []

    # --- building ------------------------------------------------------------

    def add(self, name: str, priority: int, address: str, *, interval: float = 0.1, dead_after: int = 3,
            preempt: bool = True, preempt_delay: float = 0.0, start: bool = True, witness: bool = False,
            cluster_size: int = 0, drain_timeout: float = 1.0, key: bytes = KEY, cluster_id: int = CLUSTER,
            node_name: str | None = None) -> SimNode:
        """`name` is the simulator's handle; `node_name` (default: `name`) is node.name."""
        packed = ipaddress.ip_address(address).packed
        params = Params(node_name or name, packed, priority, interval, dead_after, preempt, preempt_delay,
                        DIGEST, drain_timeout_s=drain_timeout, witness=witness, cluster_size=cluster_size)
        node = SimNode(name, Election(params, self.now), packed, key=key, cluster_id=cluster_id)
        self.nodes[name] = node
        if start:
            self.apply(node, node.election.start(self.now))
        return node

    def restart(self, name: str, **kwargs) -> SimNode:
        old = self.nodes[name]
        params = old.election.p
        node = SimNode(name, Election(params, self.now), old.address, boot_id=old.boot_id + 1,
                       holds_vip=old.holds_vip, key=old.key, cluster_id=old.cluster_id)
        self.nodes[name] = node
        self.apply(node, node.election.start(self.now))
        return node

    # --- network ---------------------------------------------------------------

    def isolate(self, name: str) -> None:
        for other in self.nodes:
            if other != name:
                self.cut.add(frozenset((name, other)))

    def cut_one_way(self, sender: str, receiver: str) -> None:
        """An asymmetric fault: `receiver` no longer hears `sender`, the other way still works."""
        self.one_way.add((sender, receiver))

    def heal(self) -> None:
        self.cut.clear()
        self.one_way.clear()

    def crash(self, name: str) -> None:
        """kill -9 of the agent: it stops, and its VIP stays until its lease would expire."""
        self.nodes[name].alive = False

    def apply(self, node: SimNode, effects) -> None:
        for effect in effects:
            node.effects.append((self.now, effect))
            if isinstance(effect, SendAdvert):
                self._send(node, effect)
            elif isinstance(effect, Transition):
                node.transitions.append((self.now, effect))
            elif isinstance(effect, AcquireVips):
                node.holds_vip = True
                self._record_holders()
            elif isinstance(effect, ReleaseVips):
                node.holds_vip = False
                self._record_holders()
            elif isinstance(effect, Stopped):
                node.alive = False   # the agent process exits
            elif isinstance(effect, ProbeWitness):
                self._schedule(self.now + node.witness_delay_s, "witness", node.name, None)
            elif isinstance(effect, StartDrain) and node.drain_delay_s is not None:
                self._schedule(self.now + node.drain_delay_s, "drained", node.name, None)

    def _record_holders(self) -> None:
        self.holder_history.append((self.now, self.holders()))

    def _send(self, node: SimNode, effect: SendAdvert) -> None:
        params = node.election.p
        data = node.writer.encode(effect.advert, params.advert_interval_s, params.vip_digest, node.key)
        for other in self.nodes:
            if (other != node.name and frozenset((node.name, other)) not in self.cut
                    and (node.name, other) not in self.one_way):
                self._schedule(self.now + self.latency_s, "deliver", other, (data, node.address))

    def _schedule(self, at: float, kind: str, name: str, payload) -> None:
        heapq.heappush(self._queue, (at, next(self._order), kind, name, payload))

    # --- running -----------------------------------------------------------------

    def step(self) -> bool:
        """Advance to the next event (delivery or timer); False if nothing is left."""
        timer_at, timer_node = None, None
        for node in self.nodes.values():
            deadline = node.election.next_deadline() if node.alive else None
            if deadline is not None and (timer_at is None or deadline < timer_at):
                timer_at, timer_node = deadline, node
        queued_at = self._queue[0][0] if self._queue else None
        if timer_at is None and queued_at is None:
            return False
        if queued_at is not None and (timer_at is None or queued_at <= timer_at):
            at, _, kind, name, payload = heapq.heappop(self._queue)
            self.now = max(self.now, at)
            node = self.nodes[name]
            if not node.alive:
                return True
            if kind == "deliver":
                self._deliver(node, *payload)
            elif kind == "drained":
                self.apply(node, node.election.drained(0, self.now))
            elif kind == "witness":
                ok, probed_at = node.witness_reachable, payload
                self.apply(node, node.election.set_witness(ok, "ris:104 " + ("ok" if ok else "unreachable"),
                                                           self.now, probed_at))
            return True
        self.now = max(self.now, timer_at)
        self.apply(timer_node, timer_node.election.handle_timer(self.now))
        return True

    def _deliver(self, node: SimNode, data: bytes, address: bytes) -> None:
        """As the agent does: a valid heartbeat to the election, one it cannot accept from a
        peer (wrong key, other cluster id) as evidence of a misconfigured peer."""
        try:
            advert = wire.decode(data, [node.key], node.cluster_id)
            node.guard.check(advert)
        except wire.WireError as err:
            claimed = wire.peek(data) if err.code in ("auth", "cluster") else None
            if claimed is not None:
                self.apply(node, node.election.unreadable(address, err.code, claimed, self.now))
            return
        self.apply(node, node.election.receive(advert, address, self.now))

    def run(self, seconds: float, max_steps: int = 200_000) -> None:
        end = self.now + seconds
        for _ in range(max_steps):
            nxt = self._peek()
            if nxt is None or nxt > end:
                break
            self.step()
        else:
            raise AssertionError(f"more than {max_steps} steps in {seconds} s of cluster time")
        self.now = max(self.now, end)

    def run_until(self, predicate, timeout: float, what: str) -> float:
        """Run until predicate() holds; return the cluster time it took."""
        start = self.now
        end = start + timeout
        for _ in range(200_000):
            if predicate():
                return self.now - start
            nxt = self._peek()
            if nxt is None or nxt > end:
                raise AssertionError(f"{what}: not reached within {timeout} s of cluster time")
            self.step()
        raise AssertionError(f"{what}: more than 200000 steps (a deadline that never moves?)")

    def _peek(self) -> float | None:
        candidates = [n.election.next_deadline() for n in self.nodes.values() if n.alive]
        candidates = [c for c in candidates if c is not None]
        if self._queue:
            candidates.append(self._queue[0][0])
        return min(candidates) if candidates else None

    def command(self, name: str, method: str, *args, **kwargs) -> list:
        """Call an Election method with the cluster's time as its `now`."""
        node = self.nodes[name]
        effects = getattr(node.election, method)(*args, self.now, **kwargs)
        self.apply(node, effects)
        return effects

    # --- looking -------------------------------------------------------------------

    def masters(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.alive and n.state == State.MASTER]

    def holders(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes.values() if n.holds_vip and n.alive)

    def effects_of(self, name: str, kind) -> list:
        return [e for _, e in self.nodes[name].effects if isinstance(e, kind)]


__all__ = ["SimCluster", "SimNode", "Announce", "HandoverDone", "SplitBrain", "Stopped"]
