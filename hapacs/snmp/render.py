"""What SNMP shows of one Status snapshot, as plain data.

`render()` turns a `Status` into sorted (OID, Value) pairs for HAPACS-MIB,
the VRRPV3-MIB (RFC 6527) rows and the system group; `Snapshot` answers GET
and GETNEXT from them; `notifications()` builds the varbinds of a
notification. Pure: no pysnmp, no sockets, no clock. The pysnmp adapter
(instrumentation.py) only converts a `Value` into a pysnmp object.

Mapping decisions (see also the DESCRIPTIONs in etc/HAPACS-MIB.txt):
- States: init(1) backup(2) master(3) fault(4) lost(5); VRRP has no fault,
  so FAULT shows as initialize(1) there (not participating).
- VRRP rows: one per (interface, address family) of the VIPs, indexed
  (ifIndex, VRID = cluster id, inetAddrType). The cluster's counters are
  the same in every row. hapacs uses no virtual MAC, so
  vrrpv3OperationsVirtualMacAddr is not served; neither are the VRRP
  counters hapacs does not keep (TTL, interval, address-list errors...).
- An address not of the row's family is shown as all zeros (unknown).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from typing import Callable, Iterable, Mapping, NamedTuple

from ..status import Status
from . import oids as o
from .oids import Oid

U32_MAX = 2**32 - 1


class Value(NamedTuple):
    """An SNMP value: an SMI base type name and a Python value."""

    syntax: str      # Integer32 Unsigned32 Gauge32 Counter32 Counter64 TimeTicks OctetString ObjectIdentifier
    value: int | bytes | tuple


def integer(n: int) -> Value:
    return Value("Integer32", int(n))


def unsigned(n: int) -> Value:
    return Value("Unsigned32", min(max(int(n), 0), U32_MAX))


def gauge(n: int) -> Value:
    return Value("Gauge32", min(max(int(n), 0), U32_MAX))


def counter32(n: int) -> Value:
    return Value("Counter32", int(n) % 2**32)


def counter64(n: int) -> Value:
    return Value("Counter64", int(n) % 2**64)


def ticks(seconds: float | None) -> Value:
    """TimeTicks: hundredths of a second."""
    return Value("TimeTicks", 0 if seconds is None else min(max(round(seconds * 100), 0), U32_MAX))


def octets(data: bytes) -> Value:
    return Value("OctetString", bytes(data))


def text(string: object, limit: int) -> Value:
    """UTF-8 (SnmpAdminString), cut to `limit` bytes without splitting a character."""
    raw = ("" if string is None else str(string)).encode("utf-8")[:limit]
    return Value("OctetString", raw.decode("utf-8", "ignore").encode("utf-8"))


def truth(flag: bool) -> Value:
    return Value("Integer32", 1 if flag else 2)          # TruthValue: true(1), false(2)


def object_id(oid: Oid) -> Value:
    return Value("ObjectIdentifier", tuple(oid))


STATE = {"INIT": 1, "BACKUP": 2, "MASTER": 3, "FAULT": 4, "LOST": 5}     # HapacsState
VRRP_STATUS = {"INIT": 1, "BACKUP": 2, "MASTER": 3, "FAULT": 1}        # initialize(1) backup(2) master(3)
CHECK_STATUS = {True: 1, False: 2, None: 3}                            # up(1) down(2) pending(3)
MEMBER_STATE = {"up": 1, "drain": 2, "down": 3, "maint": 4}           # hapacsBalanceMemberState
BGP_STATE = {"Idle": 1, "Connect": 2, "Active": 3, "OpenSent": 4, "OpenConfirm": 5, "Established": 6,  # hapacsBgp-
             "Close": 7, "Down": 8, "missing": 9, "unreachable": 10, "unknown": 11}          # SessionState
# vrrpv3StatisticsNewMasterReason: notMaster(0) priority(1) preempted(2) masterNoResponse(3),
# from effects.Why codes; every other way to MASTER counts as priority(1).
NEW_MASTER_REASON = {"master-down": 3, "handover-to-me": 2}

IPV4, IPV6 = 1, 2          # InetAddressType


def state_name(state: object) -> str:
    """"MASTER" from "MASTER", "master" or State.MASTER."""
    return str(getattr(state, "name", state) or "").upper()


def state_code(state: object) -> int:
    return STATE.get(state_name(state), 1)


def vrrp_status(state: object) -> int:
    return VRRP_STATUS.get(state_name(state), 1)


@functools.lru_cache(maxsize=1024)       # the same few addresses, rendered on every snapshot
def inet_address(address: str | None) -> tuple[int, bytes, int | None]:
    """(InetAddressType, InetAddress, prefix length) of "192.0.2.1", "2001:db8::1/64", ...

    A zone ("%eth0") is dropped; anything unparsable is unknown(0) with no bytes.
    """
    if not address:
        return 0, b"", None
    host, _, prefix = address.partition("/")
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
        length = int(prefix) if prefix else None
    except ValueError:
        return 0, b"", None
    return (IPV4 if ip.version == 4 else IPV6), ip.packed, length


def _address_in_family(address: str | None, family: int) -> bytes:
    kind, raw, _ = inet_address(address)
    return raw if kind == family else bytes(4 if family == IPV4 else 16)


def _row(column: Oid, index: Iterable[int], value: Value) -> tuple[Oid, Value]:
    return column + tuple(index), value


def _scalar(obj: Oid, value: Value) -> tuple[Oid, Value]:
    return obj + (0,), value


# --- HAPACS-MIB ----------------------------------------------------------------

def render_hapacs(status: Status) -> list[tuple[Oid, Value]]:
    last = status.transitions[-1] if status.transitions else None
    counters = status.counters
    items = [
        _scalar(o.hapacsNodeName, text(status.node, 64)),
        _scalar(o.hapacsNodeState, integer(state_code(status.state))),
        _scalar(o.hapacsNodePriority, unsigned(status.priority)),
        _scalar(o.hapacsNodeEffectivePriority, unsigned(status.effective_priority)),
        _scalar(o.hapacsNodeMasterName, text(status.master, 64)),
        _scalar(o.hapacsNodeMaintenance, truth(status.maintenance)),
        _scalar(o.hapacsNodeTimeInState, ticks(status.since_s)),
        _scalar(o.hapacsNodeClusterId, unsigned(status.cluster_id)),
        _scalar(o.hapacsNodePreviousState, integer(state_code(last.old) if last else 1)),
        _scalar(o.hapacsNodeLastReason, text(last.reason if last else "", 255)),
        _scalar(o.hapacsNodeSticky, truth(status.sticky)),
        _scalar(o.hapacsNodeFaults, text("; ".join(status.faults), 255)),
        _scalar(o.hapacsTransitions, counter32(counters.transitions)),
        _scalar(o.hapacsBecameMaster, counter32(counters.became_master)),
        _scalar(o.hapacsHeartbeatsSent, counter32(counters.adverts_sent)),
        _scalar(o.hapacsHeartbeatsReceived, counter32(counters.adverts_received)),
        _scalar(o.hapacsSplitBrains, counter32(counters.split_brains)),
        _scalar(o.hapacsPeersLost, counter32(counters.peers_lost)),
    ]
    items += [_scalar(obj, counter32(counters.drops.get(code, 0))) for code, obj in o.DROPPED_BY_CODE.items()]

    for index, peer in enumerate(status.peers[:255], start=1):
        kind, raw, _ = inet_address(peer.address)
        items += [
            _row(o.hapacsPeerName, (index,), text(peer.name, 64)),
            _row(o.hapacsPeerAddressType, (index,), integer(kind)),
            _row(o.hapacsPeerAddress, (index,), octets(raw)),
            _row(o.hapacsPeerState, (index,), integer(state_code(peer.state))),
            _row(o.hapacsPeerPriority, (index,), unsigned(peer.priority)),
            _row(o.hapacsPeerLastHeard, (index,), ticks(peer.last_seen_s)),
            _row(o.hapacsPeerMaintenance, (index,), truth(peer.maintenance)),
        ]
    for index, check in enumerate(status.checks[:65535], start=1):
        latency_us = None if check.latency_ms is None else round(check.latency_ms * 1000)
        items += [
            _row(o.hapacsCheckName, (index,), text(check.name, 64)),
            _row(o.hapacsCheckType, (index,), text(check.type, 32)),
            _row(o.hapacsCheckStatus, (index,), integer(CHECK_STATUS.get(check.ok, 3))),
            _row(o.hapacsCheckLatency, (index,), gauge(latency_us or 0)),
            _row(o.hapacsCheckMessage, (index,), text(check.message, 255)),
            _row(o.hapacsCheckTimeInStatus, (index,), ticks(None if check.ok is None else check.since_s)),
            _row(o.hapacsCheckWeight, (index,), integer(min(max(check.weight, -255), 0))),
        ]
    for index, vip in enumerate(status.vips[:65535], start=1):
        kind, raw, prefix = inet_address(vip.address)
        if prefix is None:
            prefix = 32 if kind == IPV4 else 128 if kind == IPV6 else 0
        items += [
            _row(o.hapacsVipAddressType, (index,), integer(kind)),
            _row(o.hapacsVipAddress, (index,), octets(raw)),
            _row(o.hapacsVipPrefixLength, (index,), unsigned(prefix)),
            _row(o.hapacsVipInterface, (index,), text(vip.interface, 32)),
            _row(o.hapacsVipHeld, (index,), truth(vip.held)),
        ]
    return items + render_authority(status.authority) + render_balance(status.balance) + render_bgp(status.bgp)


AUTHORITY_KIND = {"heartbeats": 1, "etcd": 2}


def render_authority(authority: dict) -> list[tuple[Oid, Value]]:
    """hapacsAuthority from the status's "authority" object (hapacs.status.authority_status)."""
    left = authority.get("lease_left_s")
    return [
        _scalar(o.hapacsAuthorityKind, integer(AUTHORITY_KIND.get(authority.get("kind"), 1))),
        _scalar(o.hapacsAuthorityHolder, text(authority.get("holder"), 64)),
        _scalar(o.hapacsAuthorityLeaseLeft, unsigned(round(left * 1000) if left else 0)),
        _scalar(o.hapacsAuthorityEndpointsUp, gauge(authority.get("endpoints_up") or 0)),
        _scalar(o.hapacsAuthorityEndpoints, gauge(authority.get("endpoints") or 0)),
    ]


def render_balance(balance: dict | None) -> list[tuple[Oid, Value]]:
    """hapacsBalanceMemberTable from the status's "balance" object (hapacs.balancer.balance_status).

    Indexed (service, member) by position, from 1, as in the configuration; a state
    this table has no name for shows as down(3)."""
    items: list[tuple[Oid, Value]] = []
    services = (balance or {}).get("services") or []
    for service_index, service in enumerate(services[:65535], start=1):
        for member_index, member in enumerate(service.get("members", [])[:65535], start=1):
            index = (service_index, member_index)
            kind, raw, _ = inet_address(member.get("address"))
            items += [
                _row(o.hapacsBalanceServiceName, index, text(service.get("name"), 64)),
                _row(o.hapacsBalanceServiceActive, index, truth(bool(service.get("active")))),
                _row(o.hapacsBalanceMemberName, index, text(member.get("name"), 64)),
                _row(o.hapacsBalanceMemberAddressType, index, integer(kind)),
                _row(o.hapacsBalanceMemberAddress, index, octets(raw)),
                _row(o.hapacsBalanceMemberState, index, integer(MEMBER_STATE.get(member.get("state"), 3))),
                _row(o.hapacsBalanceMemberAssociations, index, gauge(member.get("associations") or 0)),
                _row(o.hapacsBalanceMemberTotal, index, counter32(member.get("total") or 0)),
            ]
    return items


def render_bgp(bgp: dict | None) -> list[tuple[Oid, Value]]:
    """hapacsBgpReady and hapacsBgpSessionTable from the status's "bgp" object (hapacs.bgpgate);
    nothing without bgp:. A state this table has no name for shows as unknown(11)."""
    if bgp is None:
        return []
    items = [_scalar(o.hapacsBgpReady, truth(bool(bgp.get("ready"))))]
    for index, protocol in enumerate(bgp.get("protocols", [])[:65535], start=1):
        items += [
            _row(o.hapacsBgpSessionName, (index,), text(protocol.get("name"), 64)),
            _row(o.hapacsBgpSessionState, (index,), integer(BGP_STATE.get(protocol.get("state"), 11))),
            _row(o.hapacsBgpSessionTimeInState, (index,), ticks(protocol.get("since_s"))),
        ]
    return items


# --- VRRPV3-MIB ------------------------------------------------------------------

class VrrpRow(NamedTuple):
    if_index: int
    vrid: int
    family: int                      # InetAddressType: ipv4(1), ipv6(2)
    addresses: tuple[bytes, ...]     # the VIPs of this row, packed

    @property
    def index(self) -> Oid:
        return (self.if_index, self.vrid, self.family)


def vrrp_rows(status: Status, if_index_of: Callable[[str], int | None]) -> list[VrrpRow]:
    """One row per (interface, address family) of the VIPs; VIPs on unknown interfaces are left out."""
    groups: dict[tuple[int, int], list[bytes]] = {}
    for vip in status.vips:
        kind, raw, _ = inet_address(vip.address)
        if_index = if_index_of(vip.interface or status.interface)
        if kind in (IPV4, IPV6) and if_index:
            groups.setdefault((if_index, kind), []).append(raw)
    vrid = min(max(status.cluster_id, 1), 255)
    return [VrrpRow(if_index, vrid, family, tuple(addresses))
            for (if_index, family), addresses in sorted(groups.items())]


def _vrrp_up_time_s(status: Status) -> float:
    """Seconds since the virtual router left initialize (RFC 6527 vrrpv3OperationsUpTime).

    Derived from the transition history: now = last transition + since_s; the
    latest move from INIT/FAULT to BACKUP/MASTER is when it left initialize.
    Older than the kept history: the agent's uptime is the best bound.
    """
    if vrrp_status(status.state) == 1 or not status.transitions:
        return 0.0
    now = status.transitions[-1].monotonic + status.since_s
    for record in reversed(status.transitions):
        if vrrp_status(record.old) == 1 and vrrp_status(record.new) != 1:
            return max(now - record.monotonic, 0.0)
    return status.uptime_s


def new_master_reason(status: Status) -> int:
    for record in reversed(status.transitions):
        if state_name(record.new) == "MASTER":
            return NEW_MASTER_REASON.get(record.code, 1)
    return 0


def master_address(status: Status, family: int) -> bytes:
    """vrrpv3OperationsMasterIpAddr: ours when MASTER, else the MASTER's as last heard."""
    mine = state_name(status.state) == "MASTER"
    return _address_in_family(status.address if mine else status.master_address, family)


def render_vrrp(status: Status, if_index_of: Callable[[str], int | None]) -> list[tuple[Oid, Value]]:
    drops = status.counters.drops
    items = [
        _scalar(o.vrrpv3RouterChecksumErrors, counter64(drops.get("auth", 0))),
        _scalar(o.vrrpv3RouterVersionErrors, counter64(drops.get("version", 0))),
        _scalar(o.vrrpv3RouterVrIdErrors, counter64(drops.get("cluster", 0))),
        _scalar(o.vrrpv3GlobalStatisticsDiscontinuityTime, ticks(0)),
    ]
    interval_cs = min(max(round(status.advert_interval_s * 100), 1), 4095)
    up_time = ticks(_vrrp_up_time_s(status))
    reason = integer(new_master_reason(status))
    for row in vrrp_rows(status, if_index_of):
        index = row.index
        items += [
            _row(o.vrrpv3OperationsMasterIpAddr, index, octets(master_address(status, row.family))),
            _row(o.vrrpv3OperationsPrimaryIpAddr, index, octets(_address_in_family(status.address, row.family))),
            _row(o.vrrpv3OperationsStatus, index, integer(vrrp_status(status.state))),
            _row(o.vrrpv3OperationsPriority, index, unsigned(min(status.effective_priority, 255))),
            _row(o.vrrpv3OperationsAddrCount, index, integer(min(len(row.addresses), 255))),
            _row(o.vrrpv3OperationsAdvInterval, index, integer(interval_cs)),
            _row(o.vrrpv3OperationsPreemptMode, index, truth(status.preempt)),
            # The MASTER adds the VIPs as its own addresses, so it answers on them.
            _row(o.vrrpv3OperationsAcceptMode, index, truth(True)),
            _row(o.vrrpv3OperationsUpTime, index, up_time),
            _row(o.vrrpv3OperationsRowStatus, index, integer(1)),                     # active(1)
            _row(o.vrrpv3StatisticsMasterTransitions, index, counter32(status.counters.became_master)),
            _row(o.vrrpv3StatisticsNewMasterReason, index, reason),
            _row(o.vrrpv3StatisticsRcvdAdvertisements, index, counter64(status.counters.adverts_received)),
            _row(o.vrrpv3StatisticsPacketLengthErrors, index,
                 counter64(drops.get("short", 0) + drops.get("long", 0))),
            _row(o.vrrpv3StatisticsRowDiscontinuityTime, index, ticks(0)),
            _row(o.vrrpv3StatisticsRefreshRate, index, unsigned(interval_cs * 10)),   # milliseconds
        ]
        for raw in row.addresses:
            # InetAddress in an index: its length, then its bytes (RFC 2578 7.7).
            items.append(_row(o.vrrpv3AssociatedIpAddrRowStatus, index + (len(raw), *raw), integer(1)))
    return items


# --- system group -------------------------------------------------------------------

SYS_SERVICES = 72        # end-to-end (4) and application (7) layers: 2**3 + 2**6


def render_system(status: Status, description: str, uptime_ticks: int) -> list[tuple[Oid, Value]]:
    return [
        _scalar(o.sysDescr, text(description, 255)),
        _scalar(o.sysObjectID, object_id(o.hapacsAgent)),
        _scalar(o.sysUpTime, Value("TimeTicks", uptime_ticks % 2**32)),
        _scalar(o.sysContact, text("", 255)),
        _scalar(o.sysName, text(status.node, 255)),
        _scalar(o.sysLocation, text("", 255)),
        _scalar(o.sysServices, integer(SYS_SERVICES)),
    ]


# --- answering requests ---------------------------------------------------------------

def _leaf_objects() -> frozenset[Oid]:
    """The OBJECT-TYPEs we implement: named OIDs that are leaves, minus notifications and
    the OIDs that are values only. A GET below one of them with no value is noSuchInstance;
    anywhere else noSuchObject (RFC 3416 4.2.1)."""
    named = set(o.named("hapacs").values()) | set(o.named("vrrpv3").values()) \
        | set(o.named("sys").values()) | set(o.named("snmpEngine").values())
    leaves = {oid for oid in named if not any(other[:len(oid)] == oid and other != oid for other in named)}
    return frozenset(oid for oid in leaves - {o.hapacsAgent}
                     if oid[:len(o.hapacsNotifications)] != o.hapacsNotifications
                     and oid[:len(o.hapacsNotifyObjects)] != o.hapacsNotifyObjects   # accessible-for-notify
                     and oid[:len(o.vrrpv3MIB) + 1] != o.vrrpv3MIB + (0,))


OBJECT_TYPES = _leaf_objects()


class Snapshot:
    """Sorted (OID, Value) pairs; GET and GETNEXT in O(log n)."""

    __slots__ = ("_oids", "_values")

    def __init__(self, items: Iterable[tuple[Oid, Value]]):
        self._values: dict[Oid, Value] = dict(items)
        self._oids: list[Oid] = sorted(self._values)

    def __len__(self) -> int:
        return len(self._oids)

    def get(self, oid: Oid) -> Value | None:
        return self._values.get(oid)

    def next_after(self, oid: Oid) -> tuple[Oid, Value] | None:
        """The first pair whose OID is lexicographically after `oid`, or None at the end."""
        position = bisect.bisect_right(self._oids, oid)
        if position == len(self._oids):
            return None
        found = self._oids[position]
        return found, self._values[found]

    def items(self) -> list[tuple[Oid, Value]]:
        return [(oid, self._values[oid]) for oid in self._oids]


def is_object_type(oid: Oid) -> bool:
    """True when `oid` is at or below an object we implement (then a missing value is noSuchInstance)."""
    return any(oid[:length] in OBJECT_TYPES for length in range(len(oid), 6, -1))


def render(status: Status, if_index_of: Callable[[str], int | None], description: str,
           uptime_ticks: int, extra: Iterable[tuple[Oid, Value]] = ()) -> Snapshot:
    """The whole tree this agent serves, for one Status."""
    return Snapshot([*render_system(status, description, uptime_ticks), *extra,
                     *render_vrrp(status, if_index_of), *render_hapacs(status)])


# --- notifications --------------------------------------------------------------------------

class Notification(NamedTuple):
    """One SNMPv2 notification: its snmpTrapOID and its varbinds (sysUpTime is added when sent)."""

    trap_oid: Oid
    varbinds: tuple[tuple[Oid, Value], ...]


KINDS = {
    "state_change": ("old", "new", "reason"),
    "check_down": ("check", "message"),
    "check_up": ("check", "message"),
    "peer_lost": ("peer",),
    "split_brain": ("peer", "winner"),
    "misconfigured": ("address", "cause", "message"),
}

# hapacsMisconfiguredCause, from the cause names of hapacs.suspects.
MISCONFIGURED_CAUSE = {"auth": 1, "cluster": 2, "name": 3}


def _position(names: Iterable[str], wanted: str) -> int:
    """1-based row index of `wanted`; 0 when it is not (or no longer) in the table."""
    for index, name in enumerate(names, start=1):
        if name == wanted:
            return index
    return 0


def notifications(kind: str, fields: Mapping[str, object], status: Status,
                  if_index_of: Callable[[str], int | None]) -> list[Notification]:
    """The notifications for one event. Raises ValueError for an unknown kind or a missing field.

    state_change(old, new, reason[, code]) -> hapacsStateChange, plus one vrrpv3NewMaster
        per VRRP row when new is MASTER (code: an effects.Why value, for its reason object)
    check_down / check_up(check, message)  -> hapacsCheckDown / hapacsCheckUp
    peer_lost(peer)                        -> hapacsPeerLost
    split_brain(peer, winner)              -> hapacsSplitBrain
    misconfigured(address, cause, message) -> hapacsMisconfiguredPeer (cause: auth, cluster or name)
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r} (known: {', '.join(KINDS)})")
    missing = [name for name in KINDS[kind] if fields.get(name) is None]
    if missing:
        raise ValueError(f"notification {kind} needs {', '.join(missing)}")
    node = _scalar(o.hapacsNodeName, text(status.node, 64))

    if kind == "state_change":
        found = [Notification(o.hapacsStateChange, (
            node,
            _scalar(o.hapacsNodeState, integer(state_code(fields["new"]))),
            _scalar(o.hapacsNodePreviousState, integer(state_code(fields["old"]))),
            _scalar(o.hapacsNodeLastReason, text(fields["reason"], 255)),
        ))]
        if state_name(fields["new"]) == "MASTER":
            code = getattr(fields.get("code"), "value", fields.get("code"))     # effects.Why or its value
            reason = integer(NEW_MASTER_REASON.get(code or "", 1))
            for row in vrrp_rows(status, if_index_of):
                found.append(Notification(o.vrrpv3NewMaster, (
                    _row(o.vrrpv3OperationsMasterIpAddr, row.index,
                         octets(_address_in_family(status.address, row.family))),
                    _row(o.vrrpv3StatisticsNewMasterReason, row.index, reason),
                )))
        return found

    if kind == "misconfigured":
        return [_misconfigured(node, fields)]

    if kind in ("check_down", "check_up"):
        index = _position((c.name for c in status.checks), fields["check"])
        return [Notification(o.hapacsCheckDown if kind == "check_down" else o.hapacsCheckUp, (
            node,
            _row(o.hapacsCheckName, (index,), text(fields["check"], 64)),
            _row(o.hapacsCheckMessage, (index,), text(fields["message"], 255)),
        ))]

    index = _position((p.name for p in status.peers), fields["peer"])
    peer = _row(o.hapacsPeerName, (index,), text(fields["peer"], 64))
    if kind == "peer_lost":
        return [Notification(o.hapacsPeerLost, (node, peer))]
    return [Notification(o.hapacsSplitBrain, (
        node, peer, _scalar(o.hapacsSplitBrainWinner, text(fields["winner"], 64))))]


def _misconfigured(node: tuple[Oid, Value], fields: Mapping[str, object]) -> Notification:
    if fields["cause"] not in MISCONFIGURED_CAUSE:
        raise ValueError(f"unknown misconfiguration cause {fields['cause']!r}")
    kind_of_address, raw, _ = inet_address(str(fields["address"]))
    return Notification(o.hapacsMisconfiguredPeer, (
        node,
        _scalar(o.hapacsMisconfiguredAddressType, integer(kind_of_address)),
        _scalar(o.hapacsMisconfiguredAddress, octets(raw)),
        _scalar(o.hapacsMisconfiguredCause, integer(MISCONFIGURED_CAUSE[fields["cause"]])),
        _scalar(o.hapacsMisconfiguredMessage, text(fields["message"], 255)),
    ))
