"""The agent's configuration: YAML in, typed frozen objects out.

Validation reads the whole file and reports every problem at once as
`FILE:LINE: dotted.key: what is wrong and what is allowed`; nothing is
acted on until the whole file is valid. `hapacs check-config`, `hapacs run`
and reload all go through `load()`, so they agree on what is valid.
Durations are seconds and carry `_s` in their Python names.
"""

from __future__ import annotations

import grp
import ipaddress
import socket
from dataclasses import dataclass, field

from . import balanceconfig, bgpconfig, etcdconfig, keys as keyfile, timing
from .checktypes import CHECK_TYPES, COMMON_KEYS, DICOM_CHECK_TYPES
from .fields import (
    INVALID, Context, Section, ae_title, boolean, choice, hostname, integer,
    interface_name, ip_address, list_of, listen_address, name_text, number,
    absolute_path, port, text, vip_address, command_line, url, tcp_endpoint,
)
from .yamlsource import Problem

DEFAULT_PATH = "/etc/hapacs/hapacs.yaml"
DEFAULT_SOCKET = "/run/hapacs/hapacs.sock"
DEFAULT_MULTICAST_GROUP = "239.255.54.5"
DEFAULT_MULTICAST_GROUP6 = "ff02::1:5405"
DEFAULT_METRICS_PORT = 9641
VIP_MODES = ("arp", "routed")
ROUTED_INTERFACE = "lo"

WITNESS_TYPES = ("tcp", "dicom-echo")
QUERY_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


class ConfigError(Exception):
    """The configuration is invalid; `problems` says everything that is wrong."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class NodeConfig:
    name: str
    priority: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    state_dir: str


@dataclass(frozen=True)
class WitnessConfig:
    type: str
    host: str
    port: int
    called_ae: str
    calling_ae: str
    interval_s: float
    timeout_s: float


@dataclass(frozen=True)
class ClusterConfig:
    id: int
    interface: str
    port: int
    peers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    multicast_group: ipaddress.IPv4Address | ipaddress.IPv6Address
    advert_interval_s: float
    dead_after: int
    preempt: bool
    preempt_delay_s: float
    auth_key_file: str
    auth_keys: tuple[bytes, ...] = field(repr=False)
    quorum: str
    witness: tuple[WitnessConfig, ...]
    authority: str = "heartbeats"      # who may lead: heartbeats alone, or an etcd lease (etcd:)

    @property
    def unicast(self) -> bool:
        return bool(self.peers)


@dataclass(frozen=True)
class VipConfig:
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    interface: str
    mode: str = "arp"      # arp: on interface, announced by gratuitous ARP/NA; routed: on lo, announced by BGP

    @property
    def routed(self) -> bool:
        return self.mode == "routed"

    @property
    def label(self) -> str:
        return str(self.address)


@dataclass(frozen=True)
class CheckConfig:
    name: str
    type: str
    interval_s: float
    timeout_s: float
    fall: int
    rise: int
    weight: int
    host: str | None = None
    port: int | None = None
    called_ae: str = "ANY-SCP"
    calling_ae: str = "HAPACS"
    query_level: str = "STUDY"
    url: str | None = None
    status: int = 200
    process_name: str | None = None
    pidfile: str | None = None
    path: str | None = None
    min_free_percent: float = 10.0
    command: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NotifyConfig:
    command: tuple[str, ...] | None
    timeout_s: float


@dataclass(frozen=True)
class SnmpUser:
    name: str
    auth_protocol: str
    auth_key: str = field(repr=False)
    priv_protocol: str | None
    priv_key: str | None = field(repr=False)


@dataclass(frozen=True)
class SnmpTrapTarget:
    host: str
    port: int
    version: str
    community: str | None
    user: str | None
    timeout_s: float
    retries: int


@dataclass(frozen=True)
class SnmpConfig:
    listen: tuple[tuple[str, int], ...]
    community: str | None = field(repr=False)
    users: tuple[SnmpUser, ...]
    traps: tuple[SnmpTrapTarget, ...]
    engine_id: str | None


@dataclass(frozen=True)
class HandoverConfig:
    drain_ports: tuple[int, ...]          # empty: the ports of the DICOM checks
    drain_timeout_s: float                # handovers a peer asks for (takeover, preempt)
    shutdown_drain_timeout_s: float       # SIGTERM on a MASTER
    hold_new_connections: bool            # drop new SYNs to the VIPs while draining


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int]     # Prometheus text format at http://listen/metrics


@dataclass(frozen=True)
class ControlConfig:
    socket: str
    group: str | None


@dataclass(frozen=True)
class Config:
    path: str
    node: NodeConfig
    cluster: ClusterConfig
    vips: tuple[VipConfig, ...]
    checks: tuple[CheckConfig, ...]
    notify: NotifyConfig
    snmp: SnmpConfig | None
    control: ControlConfig
    handover: HandoverConfig
    metrics: MetricsConfig | None = None
    balance: balanceconfig.BalanceConfig | None = None   # load balancing (hapacs.balanceconfig)
    bgp: bgpconfig.BgpConfig | None = None               # the BGP session gate (hapacs.bgpconfig)
    etcd: etcdconfig.EtcdConfig | None = None   # the leadership lease, with cluster.authority: etcd

    @property
    def drain_ports(self) -> tuple[int, ...]:
        """The DICOM ports a handover drains: handover.drain_ports, else the DICOM checks' ports and
        the balanced services' ports (their associations end at this node's HAProxy, on the VIP)."""
        if self.handover.drain_ports:
            return self.handover.drain_ports
        balanced = {s.port for s in self.balance.services} if self.balance else set()
        checked = {c.port for c in self.checks if c.type in DICOM_CHECK_TYPES}
        return tuple(sorted(checked | balanced))

    @property
    def drain_targets(self) -> tuple[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], ...]:
        """The (VIP, port) pairs a handover drains, and whose new connections it holds back: every
        VIP on every drained port, except the services balanced by direct routing. Their
        associations carry on through the next VIP holder, which forwards them by the same bucket
        map, so waiting for them gains nothing, and holding their SYNs would only delay new ones by
        TCP's 1 s retransmission."""
        carried_on = {(s.address, s.port) for s in self.balance.services} \
            if self.balance is not None and self.balance.mode == "direct" else set()
        return tuple((v.address.ip, port) for v in self.vips for port in self.drain_ports
                     if (v.address.ip, port) not in carried_on)

    @property
    def interfaces(self) -> tuple[str, ...]:
        """Every interface the agent watches: the cluster's and the VIPs'."""
        names = [self.cluster.interface] + [v.interface for v in self.vips]
        return tuple(dict.fromkeys(names))

    @property
    def master_down_interval_s(self) -> float:
        """RFC 5798 6.1 with dead_after for the 3, with this node's own (RFC) skew."""
        interval = self.cluster.advert_interval_s
        return timing.master_down_interval_s(self.cluster.dead_after, interval,
                                             timing.skew_time_s(self.node.priority, interval))


def load(path: str) -> Config:
    """Read and validate the file at `path`; raise ConfigError listing every problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError([Problem(path, 0, "(file)", f"cannot read: {err.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(path, 0, "(file)", "not UTF-8 text")]) from None
    return parse(text, path)


def parse(text: str, path: str) -> Config:
    ctx = Context.from_text(text, path)
    config = _build(ctx) if ctx.root is not None else None
    if ctx.root is None and not ctx.problems:
        ctx.problems.append(Problem(path, 1, "(file)", "the file is empty; at least cluster and vips are needed"))
    if ctx.problems:
        raise ConfigError(sorted(ctx.problems, key=lambda p: p.line))
    assert config is not None
    return config


def _build(ctx: Context) -> Config | None:
    top = Section(ctx, ctx.root, "")
    node = _node(ctx, top.section("node"))
    cluster = _cluster(ctx, top.section("cluster", required=True), node)
    vips = _vips(ctx, top, cluster)
    checks = _checks(ctx, top)
    notify = _notify(top.section("notify"))
    snmp = _snmp(ctx, top.section("snmp")) if "snmp" in top else None
    control = _control(ctx, top.section("control"))
    handover = _handover(top.section("handover"))
    metrics = _metrics(top.section("metrics"))
    balance = balanceconfig.read(ctx, top.section("balance"), vips, checks,
                                 cluster.peers if cluster else None) if "balance" in top else None
    bgp = bgpconfig.read(ctx, top.section("bgp")) if "bgp" in top else None
    etcd = _etcd(ctx, top, cluster)
    top.done()
    if ctx.problems:
        return None
    return Config(ctx.path, node, cluster, vips, checks, notify, snmp, control, handover, metrics, balance, bgp, etcd)


def _etcd(ctx: Context, top: Section, cluster: ClusterConfig | None) -> etcdconfig.EtcdConfig | None:
    """`etcd:` goes with `cluster.authority: etcd`, and only with it."""
    authority = cluster.authority if cluster else None
    located = top.items.get("cluster")
    authority_line = located.key_lines.get("authority") if located is not None and located.kind == "map" else None
    if "etcd" not in top:
        if authority == "etcd":
            top.problem("cluster.authority", "is etcd but there is no etcd: section; add etcd: with endpoints "
                        "and prefix, or use authority: heartbeats", line=authority_line)
        return None
    etcd = etcdconfig.read(ctx, top.section("etcd"))
    if authority == "heartbeats":
        top.problem("etcd", "an etcd: section needs cluster.authority: etcd (now heartbeats, the default); "
                    "set it, or remove etcd:")
    return etcd


def _node(ctx: Context, sec: Section) -> NodeConfig | None:
    name = sec.take("name", name_text, default=socket.gethostname().split(".")[0][:32] or "hapacs")
    priority = sec.take("priority", integer(1, 254), default=100)
    address = sec.take("address", ip_address, default=None)
    state_dir = sec.take("state_dir", absolute_path, default="/var/lib/hapacs")
    sec.done()
    if INVALID in (name, priority, address, state_dir):
        return None
    return NodeConfig(name, priority, address, state_dir)


def _cluster(ctx: Context, sec: Section, node: NodeConfig | None) -> ClusterConfig | None:
    cluster_id = sec.take("id", integer(1, 255), default=1)
    interface = sec.take("interface", interface_name)
    udp_port = sec.take("port", port, default=5405)
    peers = sec.take("peers", list_of(ip_address), default=())
    group = sec.take("multicast_group", ip_address, default=None)
    interval = sec.take("advert_interval", number(0.02, 10.0), default=0.1)
    dead_after = sec.take("dead_after", integer(2, 255), default=3)
    preempt = sec.take("preempt", boolean, default=True)
    preempt_delay = sec.take("preempt_delay", number(0.0, 3600.0), default=5.0)
    key_path = sec.take("auth_key_file", absolute_path)
    quorum = sec.take("quorum", choice("none", "majority"), default="none")
    witness = sec.take("witness", list_of(_witness), default=())
    authority = sec.take("authority", choice(*etcdconfig.AUTHORITIES), default="heartbeats")

    own_address = node.address if node else None
    if peers is not INVALID:
        _check_peers(sec, peers, own_address)
    if group is None:
        family6 = isinstance(own_address, ipaddress.IPv6Address)
        group = ipaddress.ip_address(DEFAULT_MULTICAST_GROUP6 if family6 else DEFAULT_MULTICAST_GROUP)
    elif group is not INVALID and not group.is_multicast:
        sec.problem("multicast_group", f"{group} is not a multicast address; use one in 239.0.0.0/8 "
                    "(IPv4) or ff02::/16 (IPv6)")
    if authority == "etcd" and quorum == "majority":
        # etcd's own majority decides who may lead: a second quorum could only keep a lease holder out.
        sec.problem("quorum", "majority cannot go with authority: etcd (etcd's majority decides who may "
                    "lead); remove quorum")
    if authority == "etcd" and witness not in (INVALID, ()):
        sec.problem("witness", "cannot go with authority: etcd (etcd decides who may lead when peers fall "
                    "silent); remove witness")
    if quorum == "majority" and peers is not INVALID and len(peers) < 2:
        sec.problem("quorum", "majority needs a cluster of three or more nodes listed in cluster.peers "
                    "(the cluster's size); with two nodes use a witness instead")
    auth_keys: tuple[bytes, ...] = ()
    if key_path is not INVALID:
        try:
            auth_keys = keyfile.load(key_path)
        except keyfile.KeyFileError as err:
            sec.problem("auth_key_file", str(err))
    sec.done()
    if INVALID in (cluster_id, interface, udp_port, peers, group, interval, dead_after, preempt,
                   preempt_delay, key_path, quorum, witness, authority):
        return None
    return ClusterConfig(cluster_id, interface, udp_port, tuple(peers or ()), group, interval,
                         dead_after, preempt, preempt_delay, key_path, auth_keys, quorum,
                         tuple(witness or ()), authority)


def _check_peers(sec: Section, peers, own_address) -> None:
    if len(set(peers)) != len(peers):
        sec.problem("peers", "lists the same address twice; give each peer once")
    families = {p.version for p in peers}
    if len(families) > 1:
        sec.problem("peers", "mixes IPv4 and IPv6 addresses; heartbeats use one family")
    if own_address is not None and families and own_address.version not in families:
        sec.problem("peers", f"are IPv{families.pop()} but node.address {own_address} is not")
    # This node's own address may be listed: one list can be copied to every node, and
    # each node skips its own entry (hapacs.hostcheck.without_own_address).


def _witness(ctx: Context, located, path: str):
    sec = Section(ctx, located, path)
    kind = sec.take("type", choice(*WITNESS_TYPES))
    host = sec.take("host", hostname)
    # Without a valid type there is no telling whether a port is needed: report the type only.
    needs_port = Section.REQUIRED if kind == "tcp" else (104 if kind == "dicom-echo" else INVALID)
    witness_port = sec.take("port", port, default=needs_port)
    called = sec.take("called_ae", ae_title, default="ANY-SCP")
    calling = sec.take("calling_ae", ae_title, default="HAPACS")
    interval = sec.take("interval", number(0.05, 3600.0), default=1.0)
    timeout = sec.take("timeout", number(0.05, 600.0), default=1.0)
    sec.done()
    if INVALID in (kind, host, witness_port, called, calling, interval, timeout):
        return INVALID
    return WitnessConfig(kind, host, witness_port, called, calling, interval, timeout)


def _vips(ctx: Context, top: Section, cluster: ClusterConfig | None) -> tuple[VipConfig, ...]:
    peers = cluster.peers if cluster else ()

    def one(ctx: Context, located, path: str):
        sec = Section(ctx, located, path)
        address = sec.take("address", vip_address)
        mode = sec.take("mode", choice(*VIP_MODES), default="arp")
        interface = sec.take("interface", interface_name, default=cluster.interface if cluster else "")
        sec.done()
        if address is INVALID or interface is INVALID or mode is INVALID:
            return INVALID
        if mode == "routed":
            return _routed(sec, address)
        return VipConfig(address, interface)

    vips = top.take("vips", list_of(one, min_items=1))
    if vips is INVALID:
        return ()
    seen: dict[str, int] = {}
    for index, vip in enumerate(vips):
        key = str(vip.address.ip)
        if key in seen:
            top.problem("vips", f"{key} is listed twice (entries {seen[key]} and {index}); give each VIP once",
                        line=top.item_line("vips", index))
        seen[key] = index
        if vip.address.ip in peers:
            top.problem("vips", f"{key} is also a peer address; a VIP must be an address no host owns",
                        line=top.item_line("vips", index))
    return tuple(vips)


def _routed(sec: Section, address) -> VipConfig:
    """A routed VIP: one address on lo, announced by the host's BGP speaker (protocol direct on lo)."""
    host_length = address.max_prefixlen
    problems = []
    if address.network.prefixlen != host_length:
        problems.append(f"a routed VIP is one host route: write {address.ip}/{host_length}, not "
                        f"/{address.network.prefixlen} (allowed: /32 for IPv4, /128 for IPv6)")
    if "interface" in sec:
        problems.append("a routed VIP lives on lo (the BGP speaker announces it from there): leave out "
                        "interface, or use mode: arp for a VIP on an interface")
    for message in problems:
        sec.problem("mode", message)
    return INVALID if problems else VipConfig(address, ROUTED_INTERFACE, "routed")


def _check(ctx: Context, located, path: str):
    sec = Section(ctx, located, path)
    name = sec.take("name", name_text)
    kind = sec.take("type", choice(*CHECK_TYPES))
    common = dict(
        interval_s=sec.take("interval", number(0.05, 3600.0), default=0.5),
        timeout_s=sec.take("timeout", number(0.05, 600.0), default=1.0),
        fall=sec.take("fall", integer(1, 100), default=2),
        rise=sec.take("rise", integer(1, 100), default=3),
        weight=sec.take("weight", integer(-253, 0), default=0),
    )
    extra: dict[str, object] = {}
    if kind in DICOM_CHECK_TYPES:
        extra["host"] = sec.take("host", hostname, default="127.0.0.1")
        extra["port"] = sec.take("port", port, default=104)
        extra["called_ae"] = sec.take("called_ae", ae_title, default="ANY-SCP")
        extra["calling_ae"] = sec.take("calling_ae", ae_title, default="HAPACS")
        if kind == "dicom-find":
            extra["query_level"] = sec.take("query_level", choice(*QUERY_LEVELS), default="STUDY")
    elif kind == "tcp":
        extra["host"] = sec.take("host", hostname)
        extra["port"] = sec.take("port", port)
    elif kind == "http":
        extra["url"] = sec.take("url", url)
        extra["status"] = sec.take("status", integer(100, 599), default=200)
    elif kind == "process":
        extra["process_name"] = sec.take("process_name", text(1, 64), default=name)
        extra["pidfile"] = sec.take("pidfile", absolute_path, default=None)
    elif kind == "disk":
        extra["path"] = sec.take("path", absolute_path)
        extra["min_free_percent"] = sec.take("min_free_percent", number(0.0, 100.0), default=10.0)
    elif kind == "script":
        extra["command"] = sec.take("command", command_line)
    allowed_here = COMMON_KEYS + (CHECK_TYPES[kind].keys if kind in CHECK_TYPES else ())
    sec.done(hint=f"for a check of type {kind}" if kind is not INVALID else None, allowed=allowed_here)
    values = [name, kind, *common.values(), *extra.values()]
    if INVALID in values:
        return INVALID
    return CheckConfig(name=name, type=kind, **common, **extra)


def _checks(ctx: Context, top: Section) -> tuple[CheckConfig, ...]:
    checks = top.take("checks", list_of(_check), default=())
    if checks is INVALID:
        return ()
    seen: dict[str, int] = {}
    for index, check in enumerate(checks):
        if check.name in seen:
            top.problem("checks", f"two checks are named {check.name!r} (entries {seen[check.name]} "
                        f"and {index}); names must be unique", line=top.item_line("checks", index))
        seen[check.name] = index
    return tuple(checks)


def _notify(sec: Section) -> NotifyConfig:
    command = sec.take("command", command_line, default=None)
    timeout = sec.take("timeout", number(0.1, 600.0), default=10.0)
    sec.done()
    return NotifyConfig(command if command is not INVALID else None, timeout)


def _snmp_user(ctx: Context, located, path: str):
    sec = Section(ctx, located, path)
    name = sec.take("name", text(1, 32))
    auth = sec.take("auth_protocol", choice("sha", "sha256", "sha512"), default="sha256")
    auth_key = sec.take("auth_key", text(8, 256))
    priv = sec.take("priv_protocol", choice("aes128", "aes256"), default=None)
    priv_key = sec.take("priv_key", text(8, 256), default=None)
    sec.done()
    if (priv is None) != (priv_key is None) and INVALID not in (priv, priv_key):
        sec.problem("priv_key" if priv_key is None else "priv_protocol",
                    "priv_protocol and priv_key go together: give both (authPriv) or neither (authNoPriv)")
        return INVALID
    if INVALID in (name, auth, auth_key, priv, priv_key):
        return INVALID
    return SnmpUser(name, auth, auth_key, priv, priv_key)


def _snmp_trap(ctx: Context, located, path: str):
    sec = Section(ctx, located, path)
    host = sec.take("host", hostname)
    trap_port = sec.take("port", port, default=162)
    version = sec.take("version", choice("2c", "3"), default="2c")
    community = sec.take("community", text(1, 64), default=None)
    user = sec.take("user", text(1, 32), default=None)
    timeout = sec.take("timeout", number(0.1, 60.0), default=1.0)
    retries = sec.take("retries", integer(0, 10), default=2)
    sec.done()
    if version == "3" and user is None:
        sec.problem("user", "version 3 notifications need user: one of snmp.users")
        return INVALID
    if INVALID in (host, trap_port, version, community, user, timeout, retries):
        return INVALID
    return SnmpTrapTarget(host, trap_port, version, community, user, timeout, retries)


def _snmp(ctx: Context, sec: Section) -> SnmpConfig | None:
    listen = sec.take("listen", list_of(listen_address, min_items=1), default=(("0.0.0.0", 161),))
    community = sec.take("community", text(1, 64), default=None)
    users = sec.take("users", list_of(_snmp_user), default=())
    traps = sec.take("traps", list_of(_snmp_trap), default=())
    engine_id = sec.take("engine_id", text(10, 64), default=None)
    sec.done()
    if engine_id not in (None, INVALID):
        digits = engine_id.removeprefix("0x")
        if len(digits) % 2 or not all(c in "0123456789abcdefABCDEF" for c in digits) or not 10 <= len(digits) <= 64:
            sec.problem("engine_id", "must be 5 to 32 bytes in hex, such as 0x80007ea90401020304")
    if INVALID in (listen, community, users, traps, engine_id):
        return None
    names = [u.name for u in users]
    for trap in traps:
        if trap.user is not None and trap.user not in names:
            sec.problem("traps", f"user {trap.user!r} is not one of snmp.users ({', '.join(names) or 'none'})")
        if trap.version == "2c" and trap.community is None and community is None:
            sec.problem("traps", f"a version 2c receiver ({trap.host}) needs a community (its own or snmp.community)")
    if len(set(names)) != len(names):
        sec.problem("users", "two users have the same name")
    if community is None and not users:
        sec.problem("community", "SNMP is configured but neither community (v2c) nor users (v3) is set")
    return SnmpConfig(tuple(listen), community, tuple(users), tuple(traps), engine_id)


def _handover(sec: Section) -> HandoverConfig:
    ports = sec.take("drain_ports", list_of(port), default=())
    drain = sec.take("drain_timeout", number(0.0, timing.MAX_DRAIN_TIMEOUT_S),
                     default=timing.DEFAULT_DRAIN_TIMEOUT_S)
    shutdown = sec.take("shutdown_drain_timeout", number(0.0, 600.0), default=5.0)
    hold = sec.take("hold_new_connections", boolean, default=True)
    sec.done()
    if ports is INVALID:
        ports = ()
    elif len(set(ports)) != len(ports):
        sec.problem("drain_ports", "lists the same port twice")
    # An INVALID value came with a problem: the whole configuration is refused, this object unused.
    return HandoverConfig(tuple(ports), drain, shutdown, hold)


def _metrics(sec: Section) -> MetricsConfig | None:
    listen = sec.take("listen", tcp_endpoint(DEFAULT_METRICS_PORT), default=None)
    sec.done()
    if listen in (None, INVALID):
        return None
    return MetricsConfig(listen)


def _control(ctx: Context, sec: Section) -> ControlConfig:
    path = sec.take("socket", absolute_path, default=DEFAULT_SOCKET)
    group = sec.take("group", text(1, 32), default=None)
    sec.done()
    if group not in (None, INVALID):
        try:
            grp.getgrnam(group)
        except KeyError:
            sec.problem("group", f"no group named {group!r} on this host; create it or leave group out "
                        "(then only root may use the control socket)")
    return ControlConfig(path, group)



def control_socket_path(path: str, strict: bool = False) -> str:
    """Only control.socket from the file, read leniently.

    Control commands need nothing else, and an operator in control.group may
    not be allowed to read the key file that a full load checks. A file that
    cannot be read gives the default socket, or with `strict` raises OSError
    (or UnicodeDecodeError), so that check_hapacs can name the file.
    """
    from .yamlsource import parse_file
    default = DEFAULT_SOCKET
    try:
        root = parse_file(path)
    except (OSError, UnicodeDecodeError):
        if strict:
            raise
        return default
    if root is None or root.kind != "map":
        return default
    control = root.value.get("control")
    if control is None or control.kind != "map":
        return default
    socket_path = control.value.get("socket")
    if socket_path is not None and isinstance(socket_path.value, str) and socket_path.value.startswith("/"):
        return socket_path.value
    return default
