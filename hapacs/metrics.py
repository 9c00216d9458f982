"""Prometheus metrics: the agent's status snapshot, in the Prometheus text format, over HTTP.

Imported only when `metrics.listen` is configured; prometheus_client is imported
nowhere else. `families()` turns one frozen Status (the object `hapacs status`,
the control socket and SNMP render) into metric families, so the metrics never
disagree with the status. `MetricsServer` answers `GET /metrics` (and HEAD) on
the agent's own event loop, in callbacks (no thread, no task per request):
the loop owns the state, so the snapshot is never read half-changed. The
rendered page is kept for SNAPSHOT_TTL_S, so a storm of scrapes costs a parse
and a write each (well under a millisecond of CPU), not a render.

What this module must never do: change the agent (every request only reads),
block the loop, or let a request crash the agent or flood the log. Anything
but GET or HEAD is refused with 405, other paths with 404, oversized or
malformed requests with 4xx; each is counted by cause and logged at most
once per cause every 10 s, without a traceback.

Naming follows the Prometheus conventions: a `hapacs_` prefix, units in the
name (`_seconds`), counters end in `_total`, and states are label values
(`hapacs_state{state="MASTER"} 1`, one series per state), never names. Every
hapacs series carries `node` and `cluster_id`, so alert rules join and
aggregate a cluster's nodes without relabelling.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .effects import Why
from .logs import RateLimited
from .states import State
from .status import MEMBER_STATES, Status

PATH = "/metrics"
STATES = tuple(s.name for s in State)                 # INIT, BACKUP, MASTER, FAULT
PEER_STATES = STATES + ("LOST",)                      # LOST: a peer that fell silent
SNAPSHOT_TTL_S = 0.1          # a page is rendered at most this often, like the SNMP snapshot
MAX_REQUEST_BYTES = 8192      # request line and headers; a scrape needs about 300
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT_S = 10.0      # to send a whole request head once the connection is open
IDLE_TIMEOUT_S = 60.0         # a kept-alive connection with no request is closed after this
MAX_UNREAD_BYTES = 1 << 20   # answers a client has not read yet

# Why a request got no page; the label values of hapacs_metrics_bad_requests_total.
BAD_CAUSES = ("malformed", "too_large", "method", "not_found", "body", "timeout", "too_many_connections",
              "slow_reader")


class _Page:
    """Metric families being built; every series carries the node and cluster_id labels."""

    def __init__(self, status: Status) -> None:
        base = {"node": status.node, "cluster_id": str(status.cluster_id)}
        self.names, self.values = list(base), list(base.values())
        self.out: list[Metric] = []

    def add(self, kind, name: str, text: str, value: float | None = None, labels: Iterable[tuple] = (),
            label_names: tuple[str, ...] = ()) -> None:
        family = kind(name, text, labels=self.names + list(label_names))
        if value is not None:
            family.add_metric(self.values, value)
        for *extra, sample in labels:
            family.add_metric(self.values + list(extra), sample)
        self.out.append(family)

    def gauge(self, *args, **kwargs) -> None:
        self.add(GaugeMetricFamily, *args, **kwargs)

    def counter(self, *args, **kwargs) -> None:
        self.add(CounterMetricFamily, *args, **kwargs)


def _flag(value: bool) -> float:
    return 1.0 if value else 0.0


def families(status: Status, scrapes: int = 0,
             bad_requests: dict[str, int] | None = None) -> list[Metric]:
    """The metric families of one status snapshot (and of the metrics server's own counts)."""
    page = _Page(status)
    _node(page, status)
    _peers_and_checks(page, status)
    _counters(page, status)
    _balance(page, status.balance)
    _bgp(page, status.bgp)
    _authority(page, status.authority)
    page.counter("hapacs_metrics_scrapes_total", "Pages served at /metrics.", scrapes)
    page.counter("hapacs_metrics_bad_requests_total",
                 "Requests to the metrics port answered without a page, by cause.",
                 labels=[(cause, (bad_requests or {}).get(cause, 0)) for cause in BAD_CAUSES],
                 label_names=("cause",))
    return page.out


def _authority(page: _Page, authority: dict) -> None:
    """Who may lead (docs/status-json.md, "authority"); the etcd series only with authority etcd."""
    kind = authority.get("kind", "heartbeats")
    holder = authority.get("holder")
    page.gauge("hapacs_authority_holder", "Always 1: who holds the leadership (authority etcd: the node named "
               "in the key as this node knows it, none: no series; heartbeats: no series).",
               labels=[(kind, holder, 1.0)] if holder else [], label_names=("kind", "holder"))
    if kind != "etcd":
        return
    left = authority.get("lease_left_s")
    page.gauge("hapacs_etcd_lease_left_seconds", "Seconds until this node's etcd lease runs out by its own "
               "deadline (sent + TTL - margin); 0 when it holds none.", left if left is not None else 0.0)
    page.gauge("hapacs_etcd_lease_ttl_seconds", "The etcd lease's TTL as granted.", authority["lease_ttl_s"])
    page.gauge("hapacs_etcd_endpoints_up", "etcd endpoints that answered their last status request.",
               authority["endpoints_up"])
    page.gauge("hapacs_etcd_endpoints", "etcd endpoints configured (etcd.endpoints).", authority["endpoints"])


def _node(page: _Page, status: Status) -> None:
    gauge = page.gauge
    gauge("hapacs_info", "Always 1: this agent's version, heartbeat address and interface.",
          labels=[(status.version, status.address or "", status.interface, 1.0)],
          label_names=("version", "address", "interface"))
    gauge("hapacs_state", "1 for this node's current state, 0 for the others (FAULT: unhealthy, holds no VIP).",
          labels=[(s, _flag(status.state == s)) for s in STATES], label_names=("state",))
    gauge("hapacs_time_in_state_seconds", "Seconds since this node entered its current state.", status.since_s)
    gauge("hapacs_priority", "Configured priority (node.priority, 1 to 254).", status.priority)
    gauge("hapacs_effective_priority", "Priority after check penalties; what the election uses.",
          status.effective_priority)
    gauge("hapacs_maintenance", "1 while maintenance is on (no automatic transition of this node).",
          _flag(status.maintenance))
    gauge("hapacs_sticky", "1 while this node is MASTER by an operator's takeover (no preemption back).",
          _flag(status.sticky))
    gauge("hapacs_alone", "1 while this node hears no peer.", _flag(status.alone))
    gauge("hapacs_master_info", "Always 1: the node this node takes for MASTER (none: no series).",
          labels=[(status.master, status.master_address or "", 1.0)] if status.master else [],
          label_names=("master", "master_address"))
    gauge("hapacs_advert_interval_seconds", "Seconds between heartbeats (cluster.advert_interval).",
          status.advert_interval_s)
    gauge("hapacs_vip_held", "1 when this node holds the VIP now.",
          labels=[(v.address, v.interface, _flag(v.held)) for v in status.vips],
          label_names=("address", "interface"))
    # One series per living peer this node cannot understand (another key, another cluster id, or
    # its own node name); none while there is none. blocking="true": it keeps this node from
    # becoming MASTER.
    gauge("hapacs_misconfigured_peers",
          "1 for each living peer this node cannot understand, by address and cause (auth, cluster, name).",
          labels=[(m.address, m.cause, "true" if m.blocking else "false", 1.0) for m in status.misconfigured],
          label_names=("address", "cause", "blocking"))
    gauge("hapacs_timer_lateness_seconds",
          "Largest lateness of the agent's timer (heartbeats ride on it) over about the last minute.",
          status.timer_late_ms_minute / 1000)
    gauge("hapacs_timer_lateness_max_seconds", "Largest lateness of the agent's timer since it started.",
          status.timer_late_ms_max / 1000)


def _peers_and_checks(page: _Page, status: Status) -> None:
    gauge = page.gauge
    gauge("hapacs_peer_state", "1 for the state a peer last announced (LOST: fallen silent), 0 for the others.",
          labels=[(p.name, p.address, s, _flag(p.state == s)) for p in status.peers for s in PEER_STATES],
          label_names=("peer", "address", "state"))
    gauge("hapacs_peer_priority", "The priority a peer last announced.",
          labels=[(p.name, p.priority) for p in status.peers], label_names=("peer",))
    gauge("hapacs_peer_last_seen_seconds", "Seconds since the last valid heartbeat from a peer.",
          labels=[(p.name, p.last_seen_s) for p in status.peers], label_names=("peer",))
    gauge("hapacs_peer_maintenance", "1 while a peer announces maintenance.",
          labels=[(p.name, _flag(p.maintenance)) for p in status.peers], label_names=("peer",))
    # A check without a first result yet has no series: "up" or "down" would both be untrue.
    gauge("hapacs_check_up", "1 when a health check is up, 0 when down (after fall/rise).",
          labels=[(c.name, c.type, _flag(c.ok)) for c in status.checks if c.ok is not None],
          label_names=("check", "type"))
    gauge("hapacs_check_latency_seconds", "How long the last probe of a health check took.",
          labels=[(c.name, c.type, c.latency_ms / 1000) for c in status.checks if c.latency_ms is not None],
          label_names=("check", "type"))
    gauge("hapacs_check_weight", "Priority lost while a check is down (0: down means FAULT).",
          labels=[(c.name, c.type, c.weight) for c in status.checks], label_names=("check", "type"))


def _counters(page: _Page, status: Status) -> None:
    counter, counters = page.counter, status.counters
    reasons = dict.fromkeys((w.value for w in Why), 0) | counters.by_reason
    counter("hapacs_transitions_total", "State transitions of this node, by reason code.",
            labels=sorted(reasons.items()), label_names=("reason",))
    counter("hapacs_became_master_total", "Transitions of this node to MASTER.", counters.became_master)
    counter("hapacs_heartbeats_sent_total", "Heartbeats sent.", counters.adverts_sent)
    counter("hapacs_heartbeats_received_total", "Valid heartbeats received from peers.",
            counters.adverts_received)
    counter("hapacs_heartbeats_dropped_total",
            "Datagrams dropped on the heartbeat port, by cause (auth: wrong key or forged).",
            labels=sorted(counters.drops.items()), label_names=("cause",))
    counter("hapacs_split_brains_total", "Times two MASTERs heard each other.", counters.split_brains)
    counter("hapacs_peers_lost_total", "Times a peer fell silent.", counters.peers_lost)
    counter("hapacs_drains_total", "Drains of DICOM associations before a handover.", counters.drains)
    counter("hapacs_drain_cut_associations_total",
            "DICOM associations still open when a drain timed out (cut by the handover).", counters.drain_cut)


def _balance(page: _Page, balance: dict | None) -> None:
    """The members behind each balanced service (no series without balance:)."""
    if balance is None:
        return
    services = balance.get("services") or []
    members = [(s["name"], m) for s in services for m in s.get("members", [])]
    page.gauge("hapacs_balance_active",
               "1 while this node holds the service's VIP, so its HAProxy carries the associations.",
               labels=[(s["name"], _flag(s.get("active"))) for s in services], label_names=("service",))
    page.gauge("hapacs_balance_member_state",
               "1 for a balanced member's state in this node's HAProxy (up, drain, down, maint), 0 for the others.",
               labels=[(service, m["name"], state, _flag(m.get("state") == state))
                       for service, m in members for state in MEMBER_STATES],
               label_names=("service", "member", "state"))
    page.gauge("hapacs_balance_member_associations",
               "DICOM associations this node's HAProxy holds open to a member now.",
               labels=[(service, m["name"], m["associations"]) for service, m in members
                       if m.get("associations") is not None],
               label_names=("service", "member"))
    # Starts from 0 again when HAProxy starts again or reloads; rate() takes that as a reset.
    page.counter("hapacs_balance_member_associations_total",
                 "DICOM associations this node's HAProxy has sent to a member.",
                 labels=[(service, m["name"], m["total"]) for service, m in members
                         if m.get("total") is not None],
                 label_names=("service", "member"))


def _bgp(page: _Page, bgp: dict | None) -> None:
    """The BGP session gate (no series without bgp:)."""
    if bgp is None:
        return
    page.gauge("hapacs_bgp_session_up", "1 while the host's BGP speaker has this session Established.",
               labels=[(p["name"], _flag(p["state"] == "Established")) for p in bgp["protocols"]],
               label_names=("protocol",))
    page.gauge("hapacs_bgp_ready", "1 while the BGP gate lets this node be MASTER (a session Established "
               "for bgp.stable_for).", _flag(bgp["ready"]))


class _Families:
    """A prometheus_client collector over a function that returns the families."""

    def __init__(self, build: Callable[[], list[Metric]]):
        self._build = build

    def collect(self) -> list[Metric]:
        return self._build()


def render(status: Status) -> bytes:
    """One status snapshot as a Prometheus text page (tests, tools)."""
    return generate_latest(_Families(lambda: families(status)))


class BadRequest(Exception):
    """A request answered without a page: the HTTP status, the counter's cause, one sentence."""

    def __init__(self, code: int, cause: str, text: str, allow: bool = False):
        super().__init__(text)
        self.code, self.cause, self.text, self.allow = code, cause, text, allow


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def parse_head(head: bytes) -> tuple[str, str, bool]:
    """(method, path, keep_alive) of one request head; BadRequest if it is not HTTP/1.x."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[1].startswith("/"):
        raise BadRequest(400, "malformed", "not an HTTP/1.x request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, "malformed", "a header line is not NAME: VALUE")
        headers[name.lower()] = value.strip().lower()
    if method not in ("GET", "HEAD"):
        raise BadRequest(405, "method", f"{method[:16]!r}: the metrics are read only; allowed: GET, HEAD",
                         allow=True)
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        raise BadRequest(400, "body", "a GET request with a body")
    path = target.split("?", 1)[0]
    if path != PATH:
        raise BadRequest(404, "not_found", f"nothing at {path[:64]!r}; the metrics are at {PATH}")
    connection = headers.get("connection", "")
    keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    return method, path, keep_alive


class MetricsServer:
    """HTTP for Prometheus on the agent's loop: `await start()`, `await stop()`."""

    def __init__(self, listen: tuple[str, int], status: Callable[[], Status], log: logging.Logger):
        """`status` is called on the loop at most every SNAPSHOT_TTL_S; it must only read memory."""
        self.host, self.port = listen
        self._status = status
        self._log = log
        self._limited = RateLimited(log)
        self._server: asyncio.AbstractServer | None = None
        self.connections: set[_Connection] = set()
        self._page: tuple[float, bytes] | None = None
        self.scrapes = 0
        self.bad_requests: collections.Counter[str] = collections.Counter()
        self._registry = CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
        self._registry.register(_Families(self._families))
        ProcessCollector(registry=self._registry)   # process_cpu_seconds_total, memory, open fds

    @property
    def shown(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def bound_port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Bind exactly `listen` (raises OSError); returns when scrapes are answered."""
        loop = asyncio.get_running_loop()
        # IPv6 listens on IPv6 only (asyncio sets IPV6_V6ONLY): the endpoint is where it was told.
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port,
                                                reuse_address=True)
        self._log.info("metrics for Prometheus at http://%s%s (read only)", self.shown, PATH)

    def bind_error(self, err: OSError) -> str:
        """What an operator reads when the port cannot be had; asyncio rewords the error, the
        errno's own text is what operators know."""
        return (f"cannot listen for metrics on {self.shown} (metrics.listen): "
                f"{os.strerror(err.errno) if err.errno else err}")

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.transport.abort()
        await self._server.wait_closed()
        self._server = None

    def page(self) -> bytes:
        """The rendered page, at most SNAPSHOT_TTL_S old."""
        now = time.monotonic()
        cached = self._page
        if cached is None or now - cached[0] >= SNAPSHOT_TTL_S:
            cached = self._page = (now, generate_latest(self._registry))
        return cached[1]

    def _families(self) -> list[Metric]:
        return families(self._status(), self.scrapes, dict(self.bad_requests))

    def bad(self, cause: str, transport: asyncio.BaseTransport, text: str) -> None:
        self.bad_requests[cause] += 1
        peer = transport.get_extra_info("peername")
        source = peer[0] if peer else "?"
        self._limited.warning(f"metrics-{cause}", time.monotonic(), "metrics: refused a request from %s (%s): %s",
                              source, cause, text)

    def failed(self, problem: Exception) -> None:
        self._limited.warning("metrics-internal", time.monotonic(), "metrics: a request failed (%s: %s)",
                              type(problem).__name__, problem)


def _response(code: int, body: bytes, content_type: str, keep_alive: bool, head_only: bool = False,
              allow: bool = False) -> bytes:
    head = (f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n"
            + ("Allow: GET, HEAD\r\n" if allow else "") + "\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)


class _Connection(asyncio.Protocol):
    """One client connection: request heads in, pages out. Callbacks only (no task), one timer.

    A client that sends no whole request within REQUEST_TIMEOUT_S, idles longer than
    IDLE_TIMEOUT_S between requests, or does not read what it asked for, is dropped.
    """

    def __init__(self, server: MetricsServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answered = 0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if len(self.server.connections) >= MAX_CONNECTIONS:
            self.server.bad("too_many_connections", transport, f"more than {MAX_CONNECTIONS} connections open")
            transport.write(_response(503, b"", "text/plain", keep_alive=False))
            transport.close()
            return
        self.server.connections.add(self)
        self._arm(REQUEST_TIMEOUT_S)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.server.connections.discard(self)

    def _arm(self, delay_s: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(delay_s, self._timed_out)

    def _timed_out(self) -> None:
        # An idle kept-alive connection just ends; one that never sent a whole request is counted.
        if not self.transport.is_closing() and (not self.answered or self.buffer):
            self.server.bad("timeout", self.transport, f"no whole request within {REQUEST_TIMEOUT_S:g} s")
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        try:
            self.buffer += data
            self._answer()
        except Exception as problem:        # a bug here must cost a connection, never the agent
            self.server.failed(problem)
            self.transport.abort()

    def eof_received(self) -> bool:
        if self.buffer.strip():
            self.server.bad("malformed", self.transport, "the connection closed in the middle of a request")
        return False                         # close our side too

    def _answer(self) -> None:
        while not self.transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n", 0, MAX_REQUEST_BYTES)
            if end < 0:
                if len(self.buffer) >= MAX_REQUEST_BYTES:
                    self._refuse(BadRequest(431, "too_large", f"a request head over {MAX_REQUEST_BYTES} bytes"))
                return
            head, self.buffer = self.buffer[:end + 4], self.buffer[end + 4:]
            try:
                method, _path, keep_alive = parse_head(head)
            except BadRequest as refused:
                self._refuse(refused)
                return
            body = self.server.page()
            self.server.scrapes += 1
            self.answered += 1
            self.transport.write(_response(200, body, CONTENT_TYPE_PLAIN_0_0_4, keep_alive,
                                           head_only=method == "HEAD"))
            if not keep_alive:
                self.transport.close()
                return
            if self.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
                # Pipelined requests whose answers are not read: memory, not a scrape.
                self.server.bad("slow_reader", self.transport, "does not read the pages it asks for")
                self.transport.abort()
                return
            self._arm(IDLE_TIMEOUT_S)

    def _refuse(self, refused: BadRequest) -> None:
        self.server.bad(refused.cause, self.transport, refused.text)
        self.transport.write(_response(refused.code, (refused.text + "\n").encode(), "text/plain; charset=utf-8",
                                       keep_alive=False, allow=refused.allow))
        self.transport.close()
