"""The heartbeat wire format: round trip, authentication, replay, garbage."""

from __future__ import annotations

import os
import random

import pytest

from hapacs import wire
from hapacs.states import Flags, State

KEY = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"


def advert(**changes) -> wire.Advert:
    base = dict(cluster_id=51, node="pacs-a", state=State.MASTER, priority=150,
                flags=Flags.PREEMPT | Flags.STICKY, advert_interval_ms=100, term=7, boot_id=1_700_000_000,
                seq=42, vip_digest=wire.vip_digest(["192.0.2.100/24"]), target=None)
    base.update(changes)
    return wire.Advert(**base)


def test_round_trip_keeps_every_field():
    original = advert(target="pacs-b", flags=Flags.HANDOVER | Flags.MANUAL, priority=0)
    assert wire.decode(wire.encode(original, KEY), [KEY], 51) == original


def test_sizes_are_bounded():
    small = wire.encode(advert(node="a"), KEY)
    large = wire.encode(advert(node="n" * 32, target="t" * 32), KEY)
    assert len(small) == wire.MIN_SIZE and len(large) == wire.MAX_SIZE


def test_second_key_is_accepted_for_rotation():
    data = wire.encode(advert(), OTHER)
    assert wire.decode(data, [KEY, OTHER], 51).node == "pacs-a"


@pytest.mark.parametrize("mutate, code", [
    (lambda d: d[:10], "short"),
    (lambda d: d + b"\0" * 200, "long"),
    (lambda d: b"XX" + d[2:], "magic"),
    (lambda d: d[:2] + b"\x09" + d[3:], "version"),
    (lambda d: d[:3] + b"\x34" + d[4:], "cluster"),
    (lambda d: d[:5] + b"\xff" + d[6:], "auth"),      # any change breaks the HMAC
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "auth"),
])
def test_damaged_datagrams_are_refused_with_a_code(mutate, code):
    data = wire.encode(advert(), KEY)
    with pytest.raises(wire.WireError) as info:
        wire.decode(mutate(data), [KEY], 51)
    assert info.value.code == code and info.value.reason


def test_wrong_key_is_auth_error():
    with pytest.raises(wire.WireError) as info:
        wire.decode(wire.encode(advert(), OTHER), [KEY], 51)
    assert info.value.code == "auth"


def test_authenticated_but_malformed_fields_are_refused():
    # A node with the key but a bug: state 9, priority 255, interval 0.
    for bad in (dict(state=9), dict(priority=255), dict(advert_interval_ms=0)):
        fields = advert().__dict__ | bad
        data = wire.encode(wire.Advert(**fields), KEY)
        with pytest.raises(wire.WireError) as info:
            wire.decode(data, [KEY], 51)
        assert info.value.code == "malformed"


def test_replay_guard_accepts_only_newer_per_sender():
    guard = wire.ReplayGuard()
    guard.check(advert(seq=5))
    for stale in (advert(seq=5), advert(seq=4)):
        with pytest.raises(wire.WireError) as info:
            guard.check(stale)
        assert info.value.code == "replay"
    guard.check(advert(seq=6))
    guard.check(advert(boot_id=1_700_000_001, seq=0))     # a restart starts over
    with pytest.raises(wire.WireError):
        guard.check(advert(seq=7))                      # the old boot is over
    guard.check(advert(node="pacs-b", seq=1))           # per sender


def test_random_bytes_never_raise_anything_but_wire_error():
    rng = random.Random(5405)
    valid = wire.encode(advert(), KEY)
    for _ in range(5000):
        kind = rng.randrange(3)
        if kind == 0:
            data = os.urandom(rng.randrange(0, 200))
        elif kind == 1:
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        else:
            data = b"HP\x01\x33" + os.urandom(rng.randrange(0, 150))
        try:
            wire.decode(data, [KEY], 51)
        except wire.WireError as err:
            assert err.code in wire.DROP_CODES


def test_vip_digest_ignores_order():
    assert wire.vip_digest(["a", "b"]) == wire.vip_digest(["b", "a"]) != wire.vip_digest(["a"])
