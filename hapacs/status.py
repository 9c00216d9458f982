"""One frozen status snapshot, rendered as JSON (docs/status-json.md) or as a table.

The control socket, `hapacs status`, SNMP and systemd's STATUS= line all
read this same object, so they never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .leasegate import LeaseView


# A balanced member's state in the status's "balance" object (metrics and SNMP show the same).
MEMBER_STATES = ("up", "drain", "down", "maint")


@dataclass(frozen=True)
class VipStatus:
    address: str
    interface: str
    held: bool


@dataclass(frozen=True)
class PeerStatus:
    name: str
    address: str
    state: str            # INIT, BACKUP, MASTER, FAULT; "LOST" when silent
    priority: int
    last_seen_s: float
    maintenance: bool = False


@dataclass(frozen=True)
class CheckStatus:
    name: str
    type: str
    ok: bool | None       # None until the first result
    latency_ms: float | None
    message: str
    since_s: float | None = None   # time in the current up/down state
    weight: int = 0


@dataclass(frozen=True)
class MisconfiguredPeer:
    """A living peer this node cannot understand, or that uses its name (docs/status-json.md)."""
    address: str
    cause: str            # auth | cluster | name
    claims: str           # what its heartbeats say, unverified
    last_seen_s: float
    blocking: bool        # it keeps this node from becoming MASTER
    message: str


@dataclass(frozen=True)
class TransitionRecord:
    at: str               # ISO 8601 UTC, for people
    old: str
    new: str
    reason: str
    code: str
    monotonic: float = 0.0


@dataclass(frozen=True)
class Counters:
    transitions: int = 0
    became_master: int = 0
    adverts_sent: int = 0
    adverts_received: int = 0
    split_brains: int = 0
    peers_lost: int = 0
    drains: int = 0                  # handover drains finished
    drain_cut: int = 0               # DICOM associations still open when a drain ended (cut)
    drops: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)   # transitions by reason code


@dataclass(frozen=True)
class Status:
    node: str
    cluster_id: int
    state: str
    since_s: float
    priority: int
    effective_priority: int
    master: str | None
    maintenance: bool
    vips: tuple[VipStatus, ...]
    peers: tuple[PeerStatus, ...]
    checks: tuple[CheckStatus, ...]
    transitions: tuple[TransitionRecord, ...]
    counters: Counters
    sticky: bool = False
    faults: tuple[str, ...] = ()
    alone: bool = False
    handover_target: str | None = None
    master_address: str | None = None
    address: str | None = None
    interface: str = ""
    advert_interval_s: float = 0.0
    preempt: bool = True
    uptime_s: float = 0.0
    version: str = ""
    pid: int = 0
    # How late the agent's timer fired (heartbeats included): a loaded host shows here first.
    timer_late_ms_max: float = 0.0
    timer_late_ms_minute: float = 0.0
    timer_late_recent: tuple[tuple[float, float], ...] = ()   # (monotonic, ms) of the last late firings
    # The last drain before a handover: when it ended (monotonic), how long, what it found.
    last_drain: dict | None = None
    # Requests refused because they could not be read at all, by where they came in
    # ("snmp": undecodable datagrams, "control": not JSON on one line, too long or too deep).
    bad_requests: dict[str, int] = field(default_factory=dict)
    misconfigured: tuple[MisconfiguredPeer, ...] = ()
    # Load balancing (balance: configured): hapacs.balancer.balance_status, already JSON-shaped.
    balance: dict | None = None
    # The BGP session gate (bgp: configured): hapacs.bgpgate.SessionGate.snapshot, already JSON-shaped.
    bgp: dict | None = None
    # Who may lead (authority_status): {"kind": "heartbeats"}, or the etcd lease.
    authority: dict = field(default_factory=lambda: {"kind": "heartbeats"})

    def to_json(self) -> dict:
        """The status object of docs/status-json.md, plus what operators need beside it."""
        return {
            "node": self.node, "cluster_id": self.cluster_id,
            "state": self.state, "since_s": round(self.since_s, 3),
            "priority": self.priority, "effective_priority": self.effective_priority,
            "master": self.master, "maintenance": self.maintenance,
            "vips": [asdict(v) for v in self.vips],
            "peers": [{"name": p.name, "address": p.address, "state": p.state, "priority": p.priority,
                       "last_seen_s": round(p.last_seen_s, 3), "maintenance": p.maintenance}
                      for p in self.peers],
            "checks": [{"name": c.name, "type": c.type, "ok": c.ok,
                        "latency_ms": None if c.latency_ms is None else round(c.latency_ms, 1),
                        "message": c.message,
                        "since_s": None if c.since_s is None else round(c.since_s, 3),
                        "weight": c.weight} for c in self.checks],
            "transitions": [{"at": t.at, "from": t.old, "to": t.new, "reason": t.reason, "code": t.code,
                             "monotonic": round(t.monotonic, 6)}
                            for t in self.transitions],
            "counters": {k: v for k, v in asdict(self.counters).items() if k not in ("drops", "by_reason")},
            "drops": dict(self.counters.drops),
            "transitions_by_reason": dict(self.counters.by_reason),
            "sticky": self.sticky, "faults": list(self.faults), "alone": self.alone,
            "handover_target": self.handover_target, "master_address": self.master_address,
            "address": self.address, "interface": self.interface,
            "advert_interval_s": self.advert_interval_s, "preempt": self.preempt,
            "uptime_s": round(self.uptime_s, 3), "version": self.version, "pid": self.pid,
            "timer_late_ms": {"max": round(self.timer_late_ms_max, 2),
                              "last_minute": round(self.timer_late_ms_minute, 2),
                              "recent": [list(x) for x in self.timer_late_recent]},
            "last_drain": self.last_drain,
            "bad_requests": dict(self.bad_requests),
            "misconfigured": [{"address": m.address, "cause": m.cause, "claims": m.claims,
                               "last_seen_s": round(m.last_seen_s, 3), "blocking": m.blocking,
                               "message": m.message} for m in self.misconfigured],
            **({"balance": self.balance} if self.balance is not None else {}),
            **({"bgp": self.bgp} if self.bgp is not None else {}),
            "authority": dict(self.authority),
        }


def authority_status(lease: LeaseView | None, endpoints: tuple[int, int] | None) -> dict:
    """The status's "authority" object (docs/status-json.md): heartbeats alone, or the etcd lease
    as this node knows it (`lease_left_s` only while this node holds it)."""
    if lease is None:
        return {"kind": "heartbeats"}
    up, total = endpoints or (0, 0)
    return {"kind": "etcd", "holder": lease.holder, "lease_ttl_s": lease.ttl_s,
            "lease_left_s": None if lease.left_s is None else round(lease.left_s, 2),
            "endpoints_up": up, "endpoints": total, "phase": lease.phase.value, "last_error": lease.last_error}


def authority_line(authority: dict) -> list[str]:
    if authority.get("kind") != "etcd":
        return []
    held = authority["holder"] or "(nobody)"
    left = authority["lease_left_s"]
    text = (f"authority etcd: lease held by {held}" + (f", {left:.1f} s left of {authority['lease_ttl_s']} s"
                                                       if left is not None else "")
            + f", {authority['endpoints_up']} of {authority['endpoints']} endpoints answer")
    return [text] + ([f"  last etcd error: {authority['last_error']}"] if authority["last_error"] else [])


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return lines


def balance_lines(balance: dict | None) -> list[str]:
    if not balance:
        return []
    direct = balance["mode"] == "direct"      # the kernel keeps no count; each member serves some buckets
    rows = []
    for service in balance["services"]:
        name = f"{service['name']} {service['address']}:{service['port']}" + (" (here)" if service["active"] else "")
        for member in service["members"]:
            counts = [member["buckets"]] if direct else [member["associations"], member["total"]]
            rows.append([name, member["name"], member["address"], member["state"], *map(str, counts)])
    if balance["active"]:
        role = "this node serves"
    else:
        role = "standby, " + ("same bucket map loaded" if direct else "HAProxy ready")
    if balance.get("drain"):
        role += "  [drain on: this node's PACS takes no new association]"
    headers = ["SERVICE", "MEMBER", "ADDRESS", "STATE", *(["BUCKETS"] if direct else ["OPEN", "TOTAL"])]
    return ["", f"balancing ({balance['mode']}): {role}", *_table(headers, rows)]


def bgp_lines(bgp: dict | None) -> list[str]:
    """The BGP session gate (hapacs.bgpgate): open or why not, and each session's state."""
    if not bgp:
        return []
    gate = "open: may be MASTER" if bgp["ready"] else f"closed: {bgp['hold']}"
    rows = [[p["name"], p["state"], _age(p["since_s"])] for p in bgp["protocols"]]
    return ["", f"BGP gate {gate}", *_table(["BGP SESSION", "STATE", "SINCE"], rows)]


def _heading(status: Status) -> list[str]:
    """The node's state with its flags, and the cluster line."""
    flags = []
    if status.maintenance:
        flags.append("MAINTENANCE")
    if status.sticky:
        flags.append("sticky (by takeover)")
    if status.alone:
        flags.append("alone: no peer heard")
    if status.handover_target:
        flags.append(f"handing over to {status.handover_target}")
    priority = str(status.priority)
    if status.effective_priority != status.priority:
        priority += f" (effective {status.effective_priority})"
    lines = [
        f"{status.node}  {status.state}  for {_age(status.since_s)}"
        + (f"  [{', '.join(flags)}]" if flags else ""),
        f"cluster {status.cluster_id} on {status.interface}, priority {priority}, "
        f"master {status.master or '(none)'}"
        + (f" at {status.master_address}" if status.master_address and status.master != status.node else ""),
    ]
    return lines + authority_line(status.authority)


def render_table(status: Status, history: int = 5) -> str:
    """What an operator reads at a glance: who is MASTER, what is wrong, what changed."""
    lines = _heading(status)
    if status.faults:
        lines.append("FAULT because: " + "; ".join(status.faults))
    for peer in status.misconfigured:
        lines.append(f"MISCONFIGURED PEER {peer.address} ({peer.claims}): {peer.message}"
                     + ("; this node will not become MASTER while it hears it" if peer.blocking else ""))
    lines.append("")
    lines += _table(["VIP", "INTERFACE", "HELD HERE"],
                    [[v.address, v.interface, "yes" if v.held else "no"] for v in status.vips])
    lines.append("")
    if status.peers:
        lines += _table(["PEER", "ADDRESS", "STATE", "PRIORITY", "LAST HEARD"],
                        [[p.name, p.address, p.state + (" (maintenance)" if p.maintenance else ""),
                          str(p.priority), _age(p.last_seen_s) + " ago"] for p in status.peers])
    else:
        lines.append("PEERS  none heard yet")
    if status.checks:
        lines.append("")
        lines += _table(["CHECK", "TYPE", "RESULT", "LATENCY", "SINCE", "MESSAGE"],
                        [[c.name, c.type, {None: "pending", True: "up", False: "DOWN"}[c.ok],
                          "-" if c.latency_ms is None else f"{c.latency_ms:.1f} ms",
                          _age(c.since_s), c.message] for c in status.checks])
    lines += balance_lines(status.balance)
    lines += bgp_lines(status.bgp)
    recent = status.transitions[-history:]
    if recent:
        lines.append("")
        lines += _table(["WHEN (UTC)", "FROM", "TO", "REASON"],
                        [[t.at.replace("T", " ").rstrip("Z"), t.old, t.new, t.reason] for t in recent])
    drops = {k: v for k, v in status.counters.drops.items() if v}
    lines.append("")
    lines.append(f"heartbeats sent {status.counters.adverts_sent}, received {status.counters.adverts_received}; "
                 f"dropped: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"))
    bad = {k: v for k, v in status.bad_requests.items() if v}
    if bad:
        lines.append("bad requests refused: " + ", ".join(f"{k} {v}" for k, v in sorted(bad.items())))
    if status.timer_late_ms_minute > 0.3 * status.advert_interval_s * 1000 > 0:
        lines.append(f"warning: heartbeats ran up to {status.timer_late_ms_minute:.0f} ms late in the last "
                     "minute: the host is too loaded for these timers (see README, Choosing timers)")
    return "\n".join(lines) + "\n"
