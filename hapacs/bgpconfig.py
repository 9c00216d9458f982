"""The `bgp:` section: the BGP session gate of a node whose VIPs are routed.

A routed VIP (`vips[].mode: routed`) reaches the workstations only through
the host's BGP speaker (BIRD 2), which announces it to the site's router.
A node whose BGP session is down would hold a VIP nobody can reach, so with
`bgp:` configured the agent asks BIRD, over its control socket, whether at
least one of `protocols` is Established, and lets the node become MASTER
only while one has been Established for `stable_for` seconds without a
break (hapacs.bird). Read like the rest of the configuration
(hapacs.config): every problem reported at once with its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .fields import INVALID, Context, Section, absolute_path, list_of, number

DEFAULT_SOCKET = "/run/bird/bird.ctl"
DEFAULT_STABLE_FOR_S = 5.0
DEFAULT_POLL_INTERVAL_S = 0.5
# BIRD's own rule for a protocol name (a symbol): a letter or underscore, then letters, digits, underscores.
_PROTOCOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class BgpConfig:
    socket: str                      # BIRD's control socket (birdc -s)
    protocols: tuple[str, ...]       # BGP protocols of BIRD's config; one Established is enough
    stable_for_s: float              # Established this long without a break before the node may be MASTER
    poll_interval_s: float           # how often BIRD is asked


def _protocol_name(ctx: Context, located, path: str):
    value = located.value if located.kind == "scalar" else None
    if not isinstance(value, str) or not _PROTOCOL_NAME.match(value):
        return ctx.bad(located, path, f"{value if isinstance(value, str) else 'this'!r} is not a BIRD protocol "
                       "name (a letter or '_', then letters, digits or '_', 64 characters at most, such as uplink)")
    return value


def read(ctx: Context, sec: Section) -> BgpConfig | None:
    """The bgp section, or None (with the problems recorded in ctx)."""
    socket_path = sec.take("socket", absolute_path, default=DEFAULT_SOCKET)
    protocols = sec.take("protocols", list_of(_protocol_name, min_items=1))
    stable_for = sec.take("stable_for", number(0.0, 600.0), default=DEFAULT_STABLE_FOR_S)
    poll = sec.take("poll_interval", number(0.1, 10.0), default=DEFAULT_POLL_INTERVAL_S)
    sec.done()
    if INVALID in (socket_path, protocols, stable_for, poll):
        return None
    if len(set(protocols)) != len(protocols):
        twice = sorted({p for p in protocols if protocols.count(p) > 1})
        sec.problem("protocols", f"lists a protocol twice ({', '.join(twice)}); give each once")
        return None
    return BgpConfig(socket_path, tuple(protocols), stable_for, poll)
