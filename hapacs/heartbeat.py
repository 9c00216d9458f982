"""Assembling this node's heartbeat: what the core decided (`Outgoing`) plus who sends it and
when (cluster id, name, interval, boot id, sequence, VIP digest), encoded and signed. Pure.

The agent and the test simulator both send through this, so the simulated
cluster speaks exactly the bytes the real one does.
"""

from __future__ import annotations

import struct

from . import wire
from .effects import Outgoing

# What wire.encode raises for a value that does not fit its field.
ENCODE_ERRORS = (ValueError, OverflowError, struct.error)


class HeartbeatWriter:
    def __init__(self, cluster_id: int, name: str, boot_id: int) -> None:
        self.cluster_id, self.name, self.boot_id = cluster_id, name, boot_id
        self.seq = 0   # (boot id, seq) grows with every heartbeat: peers refuse replays by it

    def encode(self, out: Outgoing, advert_interval_s: float, vip_digest: bytes, key: bytes) -> bytes:
        """The signed datagram; raises one of ENCODE_ERRORS when a field does not fit."""
        self.seq += 1
        advert = wire.Advert(self.cluster_id, self.name, out.state, out.priority, out.flags,
                             int(round(advert_interval_s * 1000)), out.term, self.boot_id, self.seq,
                             vip_digest, out.target)
        return wire.encode(advert, key)
