"""Node states (RFC 5798 terms, FAULT as in keepalived) and heartbeat flags."""

from __future__ import annotations

import enum


class State(enum.IntEnum):
    """What a node is doing. The values travel in heartbeats: never renumber."""

    INIT = 0    # RFC 5798 Initialize: listening before deciding, holds nothing
    BACKUP = 1
    MASTER = 2
    FAULT = 3   # unhealthy: holds no VIP and never becomes MASTER


class Flags(enum.IntFlag):
    """Bits of the heartbeat's flags field. Unknown bits are ignored, not refused."""

    NONE = 0
    MAINTENANCE = 0x01       # frozen by the operator: no automatic transition
    PREEMPT = 0x02           # the sender preempts a worse MASTER
    STICKY = 0x04            # MASTER by operator command: not to be preempted
    TAKEOVER_REQUEST = 0x08  # a BACKUP asks the MASTER named in `target` to hand over
    HANDOVER = 0x10          # a MASTER (priority 0) hands its VIPs to the node named in `target`
    MANUAL = 0x20            # with TAKEOVER_REQUEST or HANDOVER: an operator's command, the
                             # new MASTER is STICKY
    HELD = 0x40              # may not become MASTER on its own yet (e.g. checks not run yet)
