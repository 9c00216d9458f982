"""The SNMP agent of hapacs, running inside the caller's asyncio loop.

It answers GET, GETNEXT and GETBULK (SNMPv1/v2c with the read-only
community, SNMPv3 with the USM users) from the Status snapshot, refuses
every SET, and sends notifications to the `snmp.traps` receivers. It never
blocks the loop: requests only read in-memory state; notifications are
queued by `notify()` and sent by a task.

Only this package imports pysnmp; import this module only when SNMP is
configured (an agent without SNMP then never loads pysnmp).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from typing import Callable, Mapping

from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config as engine_config
from pysnmp.entity import engine as snmp_engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.smi import error

from ..config import SnmpConfig, SnmpUser
from ..effects import Misconfigured, PeerChange, SplitBrain, Transition
from ..logs import RateLimited
from ..status import Status
from . import oids
from .identity import engine_id_for, next_boots
from .instrumentation import SnapshotInstrumentation
from .notify import Notifier, Receiver
from .render import Snapshot, Value, integer, notifications, octets, render

RECEIVE_BUFFER_BYTES = 4 << 20      # a burst of 1000 GETs fits (the default buffer kept 256 of 1000)
IP_FREEBIND = 15                    # linux/in.h; Python 3.11 has no socket.IP_FREEBIND
SO_RCVBUFFORCE = 33                 # asm-generic/socket.h; neither socket.SO_RCVBUFFORCE
READ_VIEW = (1, 3, 6, 1)            # the instrumentation decides what exists; VACM who may read
COMMUNITY_SECURITY_NAME = "hapacs-read"
LISTEN_DOMAINS = {socket.AF_INET: udp.DOMAIN_NAME + (1,), socket.AF_INET6: udp6.DOMAIN_NAME + (1,)}
INTERFACE_RETRY_S = 10.0

AUTH_PROTOCOLS = {
    "sha": engine_config.USM_AUTH_HMAC96_SHA,
    "sha256": engine_config.USM_AUTH_HMAC192_SHA256,
    "sha512": engine_config.USM_AUTH_HMAC384_SHA512,
}
# AES-256 key extension as in draft-blumenthal-aes-usm-04, which net-snmp's "-x AES-256"
# uses (pysnmp's USM_PRIV_CFB256_AES is the Cisco "Reeder" variant instead).
PRIV_PROTOCOLS = {
    None: engine_config.USM_PRIV_NONE,
    "aes128": engine_config.USM_PRIV_CFB128_AES,
    "aes256": engine_config.USM_PRIV_CFB256_AES_BLUMENTHAL,
}


class _GuardedReceive:
    """The receive path of pysnmp's asyncio transports, with a guard around each datagram.

    pysnmp hands every datagram to the engine in a loop callback; a datagram it cannot
    decode (random bytes, a truncated or hostile BER message) either raises out of that
    callback, and asyncio logs an ERROR with a 30-line traceback (anyone on the segment
    could fill the journal that way), or is dropped silently with only an SNMP counter
    raised. `guard(address, receive)` runs the engine's receive and sees both.
    """

    guard: Callable[[tuple, Callable[[], None]], None]

    def datagram_received(self, datagram, address) -> None:
        self.loop.call_soon(self.guard, address, lambda: self._callback_function(self, address, datagram))


class _GuardedUdp(_GuardedReceive, udp.UdpAsyncioTransport):
    pass


class _GuardedUdp6(_GuardedReceive, udp6.Udp6AsyncioTransport):
    pass


class SnmpBindError(Exception):
    """A `snmp.listen` address could not be bound; the message names it."""

    def __init__(self, host: str, port: int, problem: OSError):
        super().__init__(f"cannot listen for SNMP on {_shown(host, port)}: {problem.strerror or problem}")
        self.host, self.port, self.errno = host, port, problem.errno


class SnmpAgent:
    """SNMP for one hapacs node: call `await start()` in the running loop, `await stop()` at the end."""

    def __init__(self, config: SnmpConfig, node_name: str, status: Callable[[], Status], log,
                 state_dir: str | None = None, *, if_indexes: Mapping[str, int] | None = None,
                 snapshot_ttl_s: float = 0.1):
        """`status` is called on the loop for each request burst (at most every snapshot_ttl_s)
        and for each notify(); it must only read memory. `if_indexes` maps interface names to
        the ifIndex used in VRRPV3-MIB rows; missing names are looked up with if_nametoindex."""
        self._config = config
        self._status = status
        self._log = log
        self._state_dir = state_dir
        self._fixed_if_indexes = dict(if_indexes or {})
        self._found_if_indexes: dict[str, tuple[int | None, float]] = {}
        self._snapshot_ttl_s = snapshot_ttl_s
        self._snapshot_cache: tuple[float, Snapshot] | None = None
        self._render_failures = 0
        self.bad_requests = 0       # datagrams that could not be processed (undecodable, hostile)
        self._limited = RateLimited(log)
        self._system = " ".join(os.uname()[i] for i in (0, 2, 4))      # sysname release machine
        self.engine_id = engine_id_for(node_name, config.engine_id)
        self.engine_boots = 0
        self.addresses: list[tuple[str, int]] = []
        self._engine: snmp_engine.SnmpEngine | None = None
        self._notifier: Notifier | None = None
        self._responders: list = []

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listen address (raises SnmpBindError naming the first that fails),
        set up the engine, users and receivers. Returns when requests are answered."""
        if self._engine is not None:
            raise RuntimeError("the SNMP agent is already started")
        sockets = []
        try:
            for host, port in self._config.listen:
                sockets.append(self._bind(host, port))
            await self._serve(sockets)
        except BaseException:
            for sock in sockets:
                sock.close()
            await self.stop(flush_timeout_s=0)
            raise
        self._log.info("SNMP listening on %s; engine ID 0x%s, boots %d; %s",
                       ", ".join(_shown(h, p) for h, p in self.addresses), self.engine_id.hex(),
                       self.engine_boots, self._describe_access())

    async def _serve(self, sockets: list[socket.socket]) -> None:
        # Building the engine is 0.3 s or more of CPU (pysnmp compiles its own MIB modules,
        # USM turns every password into keys): in a thread, so that heartbeats on this loop
        # keep their timing, also when a reload restarts SNMP.
        engine = self._engine = await asyncio.to_thread(self._build_engine)
        for number, sock in enumerate(sockets, start=1):
            family = sock.family
            transport = (_GuardedUdp if family == socket.AF_INET else _GuardedUdp6)()
            transport.guard = self._receive_guarded
            transport.open_server_mode(sock=sock)
            await transport._lport              # the endpoint is made in a task; wait for it
            engine_config.add_transport(engine, LISTEN_DOMAINS[family] + (number,), transport)
            self.addresses.append(sock.getsockname()[:2])
        self._notifier = Notifier(engine, self._config, self._log)
        await self._notifier.start()

    def _build_engine(self) -> snmp_engine.SnmpEngine:
        """Engine, identity, credentials and responders; touches no event loop."""
        engine = snmp_engine.SnmpEngine()
        self._set_identity(engine)
        self._add_credentials(engine)
        snmp_context = context.SnmpContext(engine)
        snmp_context.unregister_context_name(b"")
        snmp_context.register_context_name(b"", SnapshotInstrumentation(self._snapshot))
        self._responders = [responder(engine, snmp_context) for responder in (
            cmdrsp.GetCommandResponder, cmdrsp.NextCommandResponder,
            cmdrsp.BulkCommandResponder, cmdrsp.SetCommandResponder)]
        return engine

    async def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Send what is queued (up to flush_timeout_s), then close every socket."""
        if self._engine is None:
            return
        if self._notifier:
            if not await self._notifier.flush(flush_timeout_s):
                self._log.warning("SNMP: stopping with notifications not yet delivered")
            await self._notifier.stop()
            self._notifier = None
        for responder in self._responders:
            responder.close(self._engine)
        self._responders = []
        self._engine.close_dispatcher()
        self._engine = None
        self.addresses = []

    def observe(self, effect) -> None:
        """An effect listener: the core's decisions an NMS hears about as notifications."""
        if isinstance(effect, Transition):
            self.notify("state_change", old=effect.old.name, new=effect.new.name, reason=effect.reason.text,
                        code=effect.reason.code)
        elif isinstance(effect, PeerChange) and not effect.up:
            self.notify("peer_lost", peer=effect.name)
        elif isinstance(effect, SplitBrain):
            self.notify("split_brain", peer=effect.peer, winner=effect.winner)
        elif isinstance(effect, Misconfigured) and not effect.gone:
            self.notify("misconfigured", address=effect.address, cause=effect.cause, message=effect.text)

    def notify(self, kind: str, **fields) -> None:
        """Queue the notification(s) for an event and return at once; never raises.

        state_change(old, new, reason, code=None), check_down(check, message),
        check_up(check, message), peer_lost(peer), split_brain(peer, winner),
        misconfigured(address, cause, message).
        A state_change to MASTER also sends vrrpv3NewMaster.
        """
        if self._notifier is None:
            return
        try:
            for notification in notifications(kind, fields, self._status(), self._if_index_of):
                self._notifier.submit(notification)
        except Exception as problem:
            self._log.error("SNMP notification %s not sent: %s", kind, problem)

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until queued notifications are sent (informs answered or timed out)."""
        return await self._notifier.flush(timeout_s) if self._notifier else True

    @property
    def receivers(self) -> list[Receiver]:
        """The notification receivers with their sent/failed counts."""
        return self._notifier.receivers if self._notifier else []

    # --- setup ---------------------------------------------------------------------------

    def _bind(self, host: str, port: int) -> socket.socket:
        try:
            family, _, _, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as problem:
            raise SnmpBindError(host, port, problem) from problem
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:        # as root, beyond net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            try:
                sock.bind(address)
            except OSError as problem:
                if problem.errno != errno.EADDRNOTAVAIL:
                    raise
                # Not on this host (yet): a VIP. Bind anyway; answers start when it appears.
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                sock.bind(address)
                self._log.warning("SNMP: %s is not an address of this host yet; listening there "
                                  "anyway (IP_FREEBIND), answers start when it appears", _shown(host, port))
            sock.setblocking(False)
        except OSError as problem:
            sock.close()
            raise SnmpBindError(host, port, problem) from problem
        return sock

    def _set_identity(self, engine: snmp_engine.SnmpEngine) -> None:
        """Our engine ID and boots. Set after construction: given to the constructor, pysnmp
        would keep boots under the temporary directory instead (pysnmp 7.1)."""
        builder = engine.get_mib_builder()
        engine_id, boots = builder.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineID", "snmpEngineBoots")
        engine_id.syntax = engine_id.syntax.clone(self.engine_id)
        engine.snmpEngineID = engine_id.syntax
        self.engine_boots, problem = next_boots(self._state_dir, self.engine_id)
        if problem:
            self._log.warning("SNMP: %s", problem)
        boots.syntax = boots.syntax.clone(self.engine_boots)

    def _add_credentials(self, engine: snmp_engine.SnmpEngine) -> None:
        if self._config.community:
            engine_config.add_v1_system(engine, COMMUNITY_SECURITY_NAME, self._config.community)
            for model in (1, 2):            # SNMPv1 and SNMPv2c
                engine_config.add_vacm_user(engine, model, COMMUNITY_SECURITY_NAME, "noAuthNoPriv",
                                            readSubTree=READ_VIEW)
        for user in self._config.users:
            engine_config.add_v3_user(engine, user.name, AUTH_PROTOCOLS[user.auth_protocol], user.auth_key,
                                      PRIV_PROTOCOLS[user.priv_protocol], user.priv_key)
            engine_config.add_vacm_user(engine, 3, user.name, _security_level(user), readSubTree=READ_VIEW)

    def _describe_access(self) -> str:
        parts = ["v1/v2c community set" if self._config.community else "no v1/v2c"]
        parts += [f"v3 user {u.name} ({u.auth_protocol}/{u.priv_protocol or 'no privacy'})"
                  for u in self._config.users]
        parts += [str(receiver) for receiver in self.receivers]
        return "; ".join(parts)

    def _receive_guarded(self, address, receive: Callable[[], None]) -> None:
        """Let the engine process one datagram; count and log (at a limited rate) one it cannot."""
        before = self._undecodable()
        try:
            receive()
        except Exception as problem:
            why = f"{type(problem).__name__}: {_first_line(problem)}"
            self._log.debug("SNMP: the datagram from %s failed", address, exc_info=problem)
        else:
            if self._undecodable() == before:
                return
            why = "not an SNMP message this agent reads"
        self.bad_requests += 1
        self._limited.warning("bad-request", time.monotonic(), "SNMP: dropped a datagram from %s that "
                              "cannot be processed (%s)", _shown(*address[:2]), why)

    def _undecodable(self) -> int:
        """pysnmp's own counts of what it dropped unread: BER it cannot decode (RFC 3418
        snmpInASNParseErrs), an unknown version (snmpInBadVersions), a malformed SNMPv3
        header (RFC 3412 snmpInvalidMsgs)."""
        if self._engine is None:
            return 0
        try:
            builder = self._engine.get_mib_builder()
            counters = builder.import_symbols("__SNMPv2-MIB", "snmpInASNParseErrs", "snmpInBadVersions")
            counters += builder.import_symbols("__SNMP-MPD-MIB", "snmpInvalidMsgs")
            return sum(int(counter.syntax) for counter in counters)
        except Exception:       # another pysnmp: then only what raises is counted
            return 0

    # --- the read path: synchronous, on the loop, memory only -----------------------------

    def _snapshot(self) -> Snapshot:
        now = time.monotonic()
        cached = self._snapshot_cache
        if cached and now - cached[0] < self._snapshot_ttl_s:
            return cached[1]
        try:
            status = self._status()
            snapshot = render(status, self._if_index_of, self._description(status),
                              self._uptime_ticks(), self._engine_items())
        except Exception as problem:
            self._render_failures += 1
            if self._render_failures in (1, 10, 100) or self._render_failures % 1000 == 0:
                self._log.exception("SNMP: cannot render the status (%d times): %s",
                                    self._render_failures, problem)
            raise error.GenError() from problem
        self._snapshot_cache = (now, snapshot)
        return snapshot

    def _description(self, status: Status) -> str:
        version = f" {status.version}" if status.version else ""
        return (f"hapacs{version}, high-availability agent for PACS servers: node {status.node}, "
                f"cluster {status.cluster_id}; {self._system}")

    def _uptime_ticks(self) -> int:
        # The engine's sysUpTime, so requests and notifications agree.
        uptime, = self._engine.get_mib_builder().import_symbols("__SNMPv2-MIB", "sysUpTime")
        return int(uptime.syntax.clone())

    def _engine_items(self) -> list[tuple[tuple[int, ...], Value]]:
        builder = self._engine.get_mib_builder()
        engine_id, boots, engine_time, max_size = builder.import_symbols(
            "__SNMP-FRAMEWORK-MIB", "snmpEngineID", "snmpEngineBoots", "snmpEngineTime",
            "snmpEngineMaxMessageSize")
        return [(oids.snmpEngineID + (0,), octets(bytes(engine_id.syntax))),
                (oids.snmpEngineBoots + (0,), integer(int(boots.syntax))),
                (oids.snmpEngineTime + (0,), integer(int(engine_time.syntax.clone()))),
                (oids.snmpEngineMaxMessageSize + (0,), integer(int(max_size.syntax)))]

    def _if_index_of(self, interface: str) -> int | None:
        if interface in self._fixed_if_indexes:
            return self._fixed_if_indexes[interface]
        found = self._found_if_indexes.get(interface)
        now = time.monotonic()
        if found and (found[0] is not None or now - found[1] < INTERFACE_RETRY_S):
            return found[0]
        try:
            index = socket.if_nametoindex(interface) if interface else None
        except OSError:
            index = None
            if found is None:
                self._log.warning("SNMP: no interface %r on this host; its VIPs have no VRRPV3-MIB row",
                                  interface)
        self._found_if_indexes[interface] = (index, now)
        return index


def _security_level(user: SnmpUser) -> str:
    return "authPriv" if user.priv_protocol else "authNoPriv"


def _first_line(problem: Exception) -> str:
    text = str(problem).strip().splitlines()
    return text[0][:200] if text else "no message"


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
