"""Property tests (hypothesis) of the pure core: the wire format and the election.

1. Wire: any bytes given to `wire.decode` give an Advert or a WireError whose
   code is one of `wire.DROP_CODES`; nothing else escapes. Any change to a
   signed datagram (a flipped byte, truncation, extension) is refused. Every
   valid advert survives encode/decode unchanged, and the ReplayGuard never
   accepts a (boot id, sequence) that is not newer than the last accepted one.
2. Election: 2 or 3 nodes on the fake clock of `simnet`, random priorities
   (ties included), preempt settings and split-brain protection (none, a
   witness, or quorum), then a random sequence of crashes, restarts,
   partitions, faults, penalties, maintenance, holds, failed VIPs, witness
   outages, release, takeover and shutdown. After every event and every
   simulation step: a node in FAULT holds no VIP, a stopped node holds none,
   a live BACKUP holds none, every transition has a reason with a sentence,
   no exception but CommandRefused leaves the core, and no node's timer stays
   in the past (handle_timer(now) must move next_deadline() beyond now, or
   the shell's loop would spin). Once everything is healed, restarted and
   cleared, a few seconds of cluster time later there is exactly one MASTER
   and exactly one holder of the VIP.

Derandomized with a fixed number of examples: the same cases on every run, a
few seconds in all.
"""

from __future__ import annotations

import hmac
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hapacs import wire
from hapacs.effects import Transition, Why
from hapacs.election import CommandRefused
from hapacs.states import Flags, State

from .simnet import SimCluster

KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"
CLUSTER_ID = 51

# HAPACS_FUZZ_EXAMPLES=20000 HAPACS_FUZZ_RANDOM=1 runs a longer, randomized campaign.
SCALE = int(os.environ.get("HAPACS_FUZZ_EXAMPLES", "0")) or None
RANDOM = os.environ.get("HAPACS_FUZZ_RANDOM") == "1"


def _settings(examples: int) -> settings:
    return settings(derandomize=not RANDOM, database=None, deadline=None, max_examples=SCALE or examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


FAST = _settings(400)


# --- 1. the wire format --------------------------------------------------------------------

def _decode_or_drop(data: bytes, keys=(KEY,)) -> wire.Advert | wire.WireError:
    """decode(), with the only exception it may raise turned into a value."""
    try:
        return wire.decode(data, list(keys), CLUSTER_ID)
    except wire.WireError as error:
        assert error.code in wire.DROP_CODES, f"unknown drop code {error.code!r}"
        assert isinstance(error.reason, str) and error.reason, "a WireError without a reason"
        return error


def _names(min_size: int):
    """Node names as the wire allows them: 1..32 bytes of UTF-8 (any characters)."""
    return st.text(min_size=min_size, max_size=32).filter(lambda s: 1 <= len(s.encode()) <= 32)


adverts = st.builds(
    wire.Advert,
    cluster_id=st.just(CLUSTER_ID),
    node=_names(1),
    state=st.sampled_from(State),
    priority=st.integers(0, 254),
    flags=st.integers(0, 0xFFFF).map(Flags),        # unknown bits are kept, not refused
    advert_interval_ms=st.integers(10, 60000),
    term=st.integers(0, 2**32 - 1),
    boot_id=st.integers(0, 2**64 - 1),
    seq=st.integers(0, 2**64 - 1),
    vip_digest=st.binary(min_size=8, max_size=8),
    target=st.none() | _names(1),                   # an empty target travels as "none"
)


@FAST
@given(st.binary(max_size=wire.MAX_SIZE + 64))
def test_any_bytes_decode_or_raise_a_wire_error_with_a_drop_code(data):
    result = _decode_or_drop(data)
    # Without the key nothing random gets through the HMAC.
    assert isinstance(result, wire.WireError)


@FAST
@given(st.binary(max_size=wire.MAX_SIZE))
def test_any_body_signed_with_the_key_decodes_or_is_malformed(body):
    # What a peer holding the key (with a bug) could send: the parser behind the HMAC
    # sees arbitrary bytes, and still only a WireError may come out.
    header = b"HP" + bytes([wire.VERSION, CLUSTER_ID])
    data = header + body + hmac.digest(KEY, header + body, "sha256")
    result = _decode_or_drop(data)
    if isinstance(result, wire.Advert):
        assert 1 <= len(result.node.encode()) <= wire.MAX_NAME and result.priority <= 254
        assert 10 <= result.advert_interval_ms <= 60000 and result.state in State
    else:
        assert result.code in ("short", "long", "malformed")


@FAST
@given(adverts)
def test_valid_adverts_round_trip_unchanged(advert):
    data = wire.encode(advert, KEY)
    assert wire.MIN_SIZE <= len(data) <= wire.MAX_SIZE
    assert wire.decode(data, [KEY], CLUSTER_ID) == advert
    assert wire.decode(data, [OTHER_KEY, KEY], CLUSTER_ID) == advert   # key rotation
    assert _decode_or_drop(data, [OTHER_KEY]).code == "auth"


mutations = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                        min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("splice"), st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=40))),
)


def _mutate(data: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind == "flip":
        out = bytearray(data)
        for position, xor in arg:
            out[position % len(out)] ^= xor
        return bytes(out)
    if kind == "truncate":
        return data[:arg % len(data)]
    if kind == "extend":
        return data + arg
    position, inserted = arg
    position %= len(data) + 1
    return data[:position] + inserted + data[position:]


@FAST
@given(adverts, mutations)
def test_any_change_to_a_signed_datagram_is_refused(advert, mutation):
    data = wire.encode(advert, KEY)
    mutated = _mutate(data, mutation)
    result = _decode_or_drop(mutated)
    if mutated == data:       # two flips of the same byte can cancel out
        assert result == advert
    else:
        assert isinstance(result, wire.WireError), f"{mutation} was accepted"
        if len(mutated) < wire.MIN_SIZE:
            assert result.code == "short"
        elif len(mutated) > wire.MAX_SIZE:
            assert result.code == "long"


stamps = st.lists(st.tuples(st.sampled_from(["pacs-a", "pacs-b"]), st.integers(0, 3), st.integers(0, 5)),
                  max_size=60)


@FAST
@given(stamps)
def test_replay_guard_accepts_only_stamps_newer_than_the_last_accepted(sequence):
    guard = wire.ReplayGuard()
    last: dict[str, tuple[int, int]] = {}
    base = wire.Advert(CLUSTER_ID, "x", State.BACKUP, 100, Flags.NONE, 100, 1, 0, 0, b"\0" * 8)
    for node, boot_id, seq in sequence:
        advert = wire.Advert(**(base.__dict__ | dict(node=node, boot_id=boot_id, seq=seq)))
        newer = node not in last or (boot_id, seq) > last[node]
        try:
            guard.check(advert)
        except wire.WireError as error:
            assert error.code == "replay" and not newer, f"refused a newer stamp {(boot_id, seq)}"
            continue
        assert newer, f"accepted {(boot_id, seq)} from {node} after {last[node]}"
        last[node] = (boot_id, seq)


# --- 2. the election under random events ------------------------------------------------------

PRIORITIES = [1, 100, 100, 150, 254]      # 100 twice: ties (broken by the address) are common
ADDRESSES = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
NAMES = ["a", "b", "c"]
KINDS = ["crash", "restart", "isolate", "cut", "heal", "fault", "fault2", "clear", "penalty",
         "maintenance_on", "maintenance_off", "release", "takeover", "shutdown", "hold", "unhold",
         "vip_failed", "witness_down", "witness_up", "run"]
SPIN_LIMIT = 1000   # consecutive steps at one instant: a timer that never moves forward


class FuzzCluster(SimCluster):
    """SimCluster that checks the invariants after every step and every applied effect."""

    def __init__(self):
        super().__init__()
        self.steps_at_now = 0
        self.history: list[str] = []

    def add(self, name, *args, **kwargs):
        node = super().add(name, *args, **kwargs)
        self._watch_timer(node)
        return node

    def restart(self, name, **kwargs):
        node = super().restart(name, **kwargs)
        self._watch_timer(node)
        return node

    def _watch_timer(self, node) -> None:
        """After handle_timer(now), the node's next deadline must lie beyond now."""
        election = node.election
        original = election.handle_timer

        def handle_timer(now):
            effects = original(now)
            deadline = election.next_deadline()
            assert deadline is None or deadline > now, (
                f"{node.name}: next_deadline {deadline!r} is not after handle_timer({now!r}) "
                f"({election.state.name}); the shell would spin\n" + self.trail())
            return effects
        election.handle_timer = handle_timer

    def apply(self, node, effects) -> None:
        super().apply(node, effects)
        for effect in effects:
            if isinstance(effect, Transition):
                assert isinstance(effect.reason.code, Why) and effect.reason.text.strip(), (
                    f"{node.name}: transition {effect} without a reason\n" + self.trail())
                self.history.append(f"{self.now:.3f} {node.name} {effect.old.name}->{effect.new.name}: "
                                    f"{effect.reason.text}")
        self.check()

    def step(self) -> bool:
        before = self.now
        moved = super().step()
        self.steps_at_now = self.steps_at_now + 1 if self.now == before else 0
        assert self.steps_at_now < SPIN_LIMIT, f"{SPIN_LIMIT} steps without time moving\n" + self.trail()
        self.check()
        return moved

    def check(self) -> None:
        for node in self.nodes.values():
            where = f"{node.name} ({node.state.name}, alive={node.alive})"
            if node.state == State.FAULT:
                assert not node.holds_vip, f"{where} holds the VIP in FAULT\n" + self.trail()
            if node.election.stopped:
                assert not node.holds_vip, f"{where} holds the VIP after it stopped\n" + self.trail()
            if node.alive and node.state == State.BACKUP:
                assert not node.holds_vip, f"{where} holds the VIP as BACKUP\n" + self.trail()

    def trail(self) -> str:
        return "events and transitions:\n  " + "\n  ".join(self.history[-40:])


def _event(sim: FuzzCluster, names: list[str], kind: str, index: int, arg: int) -> None:
    name = names[index % len(names)]
    node = sim.nodes[name]
    sim.history.append(f"{sim.now:.3f} event {kind} {name} {arg}")
    if kind == "run":
        sim.run(arg / 20)
        return
    if kind == "crash":
        sim.crash(name)
    elif kind == "restart":
        sim.restart(name)             # kill -9 and start again, or start a crashed or stopped node
    elif kind == "isolate":
        sim.isolate(name)
    elif kind == "cut":
        other = names[(index + 1) % len(names)]
        sim.cut.add(frozenset((name, other)))
    elif kind == "heal":
        sim.heal()
    elif kind in ("witness_down", "witness_up"):   # what this node's witness probes find
        node.witness_reachable = kind == "witness_up"
    elif not node.alive:
        return                        # commands need a running agent
    elif kind == "fault":
        sim.command(name, "set_fault", "check:pacs", "check pacs down")
    elif kind == "fault2":
        sim.command(name, "set_fault", "link:eth0", "link eth0 down")
    elif kind == "clear":
        source = "check:pacs" if arg % 2 else "link:eth0"
        sim.command(name, "set_fault", source, None, recovered=f"{source} recovered")
    elif kind == "penalty":
        sim.command(name, "set_penalty", arg)
    elif kind == "maintenance_on":
        sim.command(name, "set_maintenance", True)
    elif kind == "maintenance_off":
        sim.command(name, "set_maintenance", False)
    elif kind == "release":
        sim.command(name, "release", arg / 100)
    elif kind == "takeover":
        sim.command(name, "takeover")
    elif kind == "shutdown":
        sim.command(name, "shutdown", arg / 100)
    elif kind == "hold":
        sim.command(name, "set_hold", "checks", "waiting for the first check results")
    elif kind == "unhold":
        sim.command(name, "set_hold", "checks", None)
    elif kind == "vip_failed":             # FAULT, and the core retries the VIPs 5 s later
        sim.command(name, "vip_failed", "RTNETLINK answers: File exists")


events = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 2), st.integers(0, 200)),
                  min_size=1, max_size=30)
clusters = st.fixed_dictionaries({
    "size": st.integers(2, 3),
    "priorities": st.lists(st.sampled_from(PRIORITIES), min_size=3, max_size=3),
    "preempt": st.lists(st.booleans(), min_size=3, max_size=3),
    "preempt_delay": st.sampled_from([0.0, 0.5]),
    "drain_delay": st.sampled_from([0.0, 0.2, 1.5]),
    "protection": st.sampled_from(["none", "witness", "quorum"]),   # split-brain protection
})


def _build(spec) -> tuple[FuzzCluster, list[str]]:
    sim = FuzzCluster()
    names = NAMES[:spec["size"]]
    for i, name in enumerate(names):
        node = sim.add(name, spec["priorities"][i], ADDRESSES[i], preempt=spec["preempt"][i],
                       preempt_delay=spec["preempt_delay"], witness=spec["protection"] == "witness",
                       # quorum: majority needs three nodes or more (hapacs.config refuses it for two)
                       cluster_size=len(names) if spec["protection"] == "quorum" and len(names) >= 3 else 0)
        node.drain_delay_s = spec["drain_delay"]
    return sim, names


@_settings(100)
@given(clusters, events)
def test_election_keeps_its_invariants_under_random_events_and_converges(spec, sequence):
    sim, names = _build(spec)
    sim.run(1.0)
    for kind, index, arg in sequence:
        try:
            _event(sim, names, kind, index, arg)
        except CommandRefused as refused:
            assert str(refused), "a refusal without a reason"
            sim.history.append(f"{sim.now:.3f}   refused: {refused}")
        sim.run(0.05 * (arg % 7))

    # Everything healed, every agent running, no fault, no maintenance. A shutdown still under way
    # (draining, waiting for the successor) ends within 3 s: the node is then restarted too.
    sim.run(3.0)
    sim.history.append(f"{sim.now:.3f} heal everything")
    sim.heal()
    for name in names:
        sim.nodes[name].witness_reachable = True
        if not sim.nodes[name].alive:
            sim.restart(name)
    for name in names:
        sim.command(name, "set_fault", "check:pacs", None, recovered="check pacs up")
        sim.command(name, "set_fault", "link:eth0", None, recovered="link eth0 up")
        sim.command(name, "set_maintenance", False)
        sim.command(name, "set_hold", "checks", None)
    # Long enough for a listening start, a preempt delay, a 1.5 s drain and a handover wait.
    sim.run(8.0)
    masters, holders = sim.masters(), sim.holders()
    assert len(masters) == 1 and holders == tuple(masters), (
        f"after healing: MASTERs {masters}, holders {holders}; states "
        f"{ {n: sim.nodes[n].state.name for n in names} }\n" + sim.trail())
    sim.run(3.0)
    assert sim.masters() == masters and sim.holders() == holders, (
        f"did not stay settled: MASTERs {sim.masters()}, holders {sim.holders()}\n" + sim.trail())


def test_fuzz_cluster_catches_a_broken_invariant():
    # The checker itself: a node put in FAULT while (wrongly) keeping its VIP is caught.
    sim, _ = _build({"size": 2, "priorities": [150, 100, 1], "preempt": [True] * 3,
                     "preempt_delay": 0.0, "drain_delay": 0.0, "protection": "none"})
    sim.run(1.0)
    sim.nodes["a"].election.state = State.FAULT
    with pytest.raises(AssertionError, match="holds the VIP in FAULT"):
        sim.check()
