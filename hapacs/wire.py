"""The heartbeat on the wire: encode, decode, authenticate, refuse replays.

Pure: no sockets, no clock. Every datagram either decodes to an `Advert`
or raises `WireError(code, reason)`; nothing else escapes `decode()`.
The transport counts errors by `code` and drops the datagram.

Layout (network byte order), then an HMAC-SHA256 over everything before it:

    offset size  field
    0      2     magic "HP"
    2      1     version (1)
    3      1     cluster id (1..255)
    4      1     state (0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT)
    5      1     effective priority (0 = leaving, 1..254)
    6      2     flags (states.Flags)
    8      2     advertisement interval, milliseconds
    10     4     term: bumped by each node that becomes MASTER
    14     8     boot id: larger on every start of the sender
    22     8     sequence number within the boot
    30     8     digest of the sender's VIP set
    38     1+n   node name (UTF-8, 1..32 bytes)
    39+n   1+m   target node name (0..32 bytes; takeover and handover)
    ...    32    HMAC-SHA256(key, all of the above)
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

from .states import Flags, State

MAGIC = b"HP"
VERSION = 1
_HEADER = struct.Struct("!2sBBBBHHIQQ8s")
DIGEST_SIZE = 32
MAX_NAME = 32
MIN_SIZE = _HEADER.size + 1 + 1 + 1 + DIGEST_SIZE
MAX_SIZE = _HEADER.size + 1 + MAX_NAME + 1 + MAX_NAME + DIGEST_SIZE

# Why a datagram was dropped; these are the counter names in status and SNMP.
DROP_CODES = ("short", "long", "magic", "version", "cluster", "auth", "malformed", "replay")


class WireError(Exception):
    """A datagram that is not a valid heartbeat for us."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Advert:
    """One heartbeat, as the sender meant it."""

    cluster_id: int
    node: str
    state: State
    priority: int
    flags: Flags
    advert_interval_ms: int
    term: int
    boot_id: int
    seq: int
    vip_digest: bytes
    target: str | None = None

    @property
    def advert_interval_s(self) -> float:
        return self.advert_interval_ms / 1000.0


def vip_digest(vips: Iterable[str]) -> bytes:
    """Eight bytes that differ when two nodes are configured with different VIPs."""
    joined = "\n".join(sorted(vips)).encode()
    return hashlib.sha256(joined).digest()[:8]


def _name_bytes(name: str | None, what: str) -> bytes:
    raw = (name or "").encode("utf-8")
    if len(raw) > MAX_NAME:
        raise ValueError(f"{what} {name!r} is longer than {MAX_NAME} bytes")
    return bytes([len(raw)]) + raw


_MACS: dict[bytes, "hmac.HMAC"] = {}


def _mac(key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 from a state computed once per key (OpenSSL looks the digest up on every
    one-shot call, which costs more than hashing a heartbeat)."""
    base = _MACS.get(key)
    if base is None:
        if len(_MACS) > 8:   # keys come from the key file: a handful, replaced on reload
            _MACS.clear()
        base = _MACS[key] = hmac.new(key, digestmod=hashlib.sha256)
    mac = base.copy()
    mac.update(body)
    return mac.digest()


def encode(advert: Advert, key: bytes) -> bytes:
    """The datagram for `advert`, signed with `key`."""
    if not advert.node:
        raise ValueError("an advert needs a node name")
    body = _HEADER.pack(MAGIC, VERSION, advert.cluster_id, int(advert.state), advert.priority,
                        int(advert.flags), advert.advert_interval_ms, advert.term,
                        advert.boot_id, advert.seq, advert.vip_digest)
    body += _name_bytes(advert.node, "node name") + _name_bytes(advert.target, "target name")
    return body + _mac(key, body)


def decode(data: bytes, keys: Sequence[bytes], cluster_id: int) -> Advert:
    """Authenticate and parse one datagram, or raise WireError."""
    if len(data) < MIN_SIZE:
        raise WireError("short", f"{len(data)} bytes, shorter than the smallest heartbeat ({MIN_SIZE})")
    if len(data) > MAX_SIZE:
        raise WireError("long", f"{len(data)} bytes, longer than the largest heartbeat ({MAX_SIZE})")
    if data[:2] != MAGIC:
        raise WireError("magic", "not a hapacs heartbeat (wrong magic bytes)")
    if data[2] != VERSION:
        raise WireError("version", f"heartbeat version {data[2]}, this agent speaks version {VERSION}")
    if data[3] != cluster_id:
        raise WireError("cluster", f"cluster id {data[3]}, ours is {cluster_id}")
    body, digest = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if not any(hmac.compare_digest(_mac(k, body), digest) for k in keys):
        raise WireError("auth", "HMAC does not match any of our keys (wrong key or forged)")
    return _parse(body)


def peek(data: bytes) -> Advert | None:
    """What a datagram that failed authentication or carries another cluster id says, read
    without trusting it: only to tell an operator what a misconfigured peer claims (its
    name, state, priority). None when it is not a well-formed heartbeat at all."""
    if not MIN_SIZE <= len(data) <= MAX_SIZE or data[:2] != MAGIC or data[2] != VERSION:
        return None
    try:
        return _parse(data[:-DIGEST_SIZE])
    except WireError:
        return None


def _parse(body: bytes) -> Advert:
    (_, _, cluster, state, priority, flags, interval_ms, term, boot_id, seq,
     digest) = _HEADER.unpack_from(body)
    offset = _HEADER.size
    node, offset = _take_name(body, offset, "node name")
    target, offset = _take_name(body, offset, "target name")
    if offset != len(body):
        raise WireError("malformed", f"{len(body) - offset} stray bytes after the names")
    if not node:
        raise WireError("malformed", "empty node name")
    if state > max(State):
        raise WireError("malformed", f"unknown state {state}")
    if priority == 255:
        raise WireError("malformed", "priority 255 (allowed: 0 to 254)")
    if not 10 <= interval_ms <= 60000:
        raise WireError("malformed", f"advertisement interval {interval_ms} ms (allowed: 10 to 60000)")
    return Advert(cluster, node, State(state), priority, Flags(flags), interval_ms, term, boot_id,
                  seq, digest, target or None)


def _take_name(body: bytes, offset: int, what: str) -> tuple[str, int]:
    if offset >= len(body):
        raise WireError("malformed", f"{what} missing")
    length = body[offset]
    end = offset + 1 + length
    if length > MAX_NAME or end > len(body):
        raise WireError("malformed", f"{what} length {length} does not fit")
    try:
        return body[offset + 1:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise WireError("malformed", f"{what} is not UTF-8") from None


class ReplayGuard:
    """Per sender, accept only heartbeats newer than the last accepted one.

    Newer means a larger (boot id, sequence) pair: a restarted sender uses
    a larger boot id, so its sequence may start again from zero. Only
    authenticated heartbeats reach here, so the table holds real nodes.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}

    def check(self, advert: Advert) -> None:
        """Raise WireError('replay') for an old heartbeat; remember a new one."""
        stamp = (advert.boot_id, advert.seq)
        last = self._last.get(advert.node)
        if last is not None and stamp <= last:
            raise WireError("replay", f"from {advert.node}: boot {advert.boot_id} sequence {advert.seq} "
                            f"is not newer than boot {last[0]} sequence {last[1]}")
        self._last[advert.node] = stamp
