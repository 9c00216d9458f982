"""Sending notifications to the `snmp.traps` receivers, in a task of its own.

`Notifier.submit()` only puts a `render.Notification` on a bounded queue;
the task sends it to every receiver: SNMPv2c as TRAP, SNMPv3 as INFORM,
acknowledged and sent again after each `timeout`, `retries` times (RFC 3413
3.3). Failures are logged and counted, never raised. Like SNMP itself, it
does not promise order: an INFORM waiting for discovery or a retry may
arrive after a later one (each carries sysUpTime.0).

Why not pysnmp's NotificationOriginator or hlapi: both import pysnmp.smi's
MIB compiler, so pysmi and jinja2 (+250 ms, +15 MB RSS), and hlapi stalls the
loop ~350 ms on its first call (measured with pysnmp 7.1) and duplicates messages
when targets share a tag. Here each receiver is addressed
directly through the engine's message dispatcher; the engine still does
SNMPv3 discovery, USM security and the INFORM's response matching.

Notifications leave from one client socket per address family, not from
the listening sockets, which may be bound to loopback or a VIP.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.proto import errind, rfc1902
from pysnmp.proto.api import v2c

from ..config import SnmpConfig, SnmpTrapTarget
from . import oids
from .instrumentation import to_pysnmp
from .render import Notification

QUEUE_SIZE = 256
# Our own transport domains for the client sockets, below the standard UDP ones.
CLIENT_DOMAINS = {socket.AF_INET: udp.DOMAIN_NAME + (2,), socket.AF_INET6: udp6.DOMAIN_NAME + (2,)}
SECURITY_LEVELS = {"noAuthNoPriv": 1, "authNoPriv": 2, "authPriv": 3}
DISCOVERY_RETRIES = 4       # SNMPv3 engine discovery and time-window reports, as pysnmp's own


@dataclass
class Receiver:
    """One `snmp.traps` entry: where it is, how to reach it, how it went."""

    number: int
    target: SnmpTrapTarget
    address: tuple | None = None          # resolved (host, port[, flow, scope])
    family: int = 0
    security: tuple = ()                  # (message processing model, security model, name, level)
    sent: int = 0                         # TRAPs sent, INFORMs acknowledged
    failed: int = 0
    last_problem: str = ""

    @property
    def inform(self) -> bool:
        return self.target.version == "3"

    def __str__(self) -> str:
        return f"{'inform' if self.inform else 'trap'} receiver {self.target.host}:{self.target.port}"


class Notifier:
    """Queues notifications and sends them to every receiver from a task."""

    def __init__(self, engine: SnmpEngine, snmp: SnmpConfig, log):
        self._engine = engine
        self._log = log
        self._users = {user.name: user for user in snmp.users}
        self._community = snmp.community
        self._receivers = [Receiver(number, target) for number, target in enumerate(snmp.traps, start=1)]
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(QUEUE_SIZE)
        self._transports: dict[int, object] = {}
        self._pending: set[asyncio.Future] = set()
        self._sending = False
        self._task: asyncio.Task | None = None

    @property
    def receivers(self) -> list[Receiver]:
        return list(self._receivers)

    async def start(self) -> None:
        """Register the receivers; their names are resolved in the task, so a slow DNS
        never delays the agent's start."""
        for receiver in self._receivers:
            self._add_security(receiver)
        self._task = asyncio.create_task(self._run(), name="hapacs-snmp-notify")

    def submit(self, notification: Notification) -> None:
        """Queue one notification; when the queue is full, the oldest one is dropped."""
        if not self._receivers:
            return
        if self._queue.full():
            dropped = self._queue.get_nowait()
            self._queue.task_done()
            self._log.warning("SNMP notification queue full (%d): dropped the oldest, %s",
                              QUEUE_SIZE, name_of(dropped.trap_oid))
        self._queue.put_nowait(notification)

    @property
    def idle(self) -> bool:
        """Nothing queued, being sent, or waiting for an INFORM's answer."""
        return self._queue.empty() and not self._sending and not self._pending

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued notification is sent and every INFORM answered or given up."""
        if self.idle:
            return True

        async def settled():
            await self._queue.join()
            while self._pending:
                await asyncio.gather(*self._pending, return_exceptions=True)
        try:
            await asyncio.wait_for(settled(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for pending in list(self._pending):
            pending.cancel()
        for family in list(self._transports):
            config.delete_transport(self._engine, CLIENT_DOMAINS[family])
            self._transports.pop(family).close_transport()

    # --- setup ---------------------------------------------------------------------

    def _add_security(self, receiver: Receiver) -> None:
        target = receiver.target
        if receiver.inform:
            user = self._users[target.user]          # config.py checked that the user exists
            level = "authPriv" if user.priv_protocol else "authNoPriv"
            receiver.security = (3, 3, user.name, SECURITY_LEVELS[level])
        else:
            name = f"hapacs-notify-{receiver.number}"
            # Tagged, so this community entry never matches an incoming request.
            config.add_v1_system(self._engine, name, target.community or self._community, transportTag=name)
            receiver.security = (1, 2, name, SECURITY_LEVELS["noAuthNoPriv"])

    async def _resolve(self, receiver: Receiver) -> bool:
        """Find the receiver's address and a socket to reach it; False (logged) if not yet."""
        target = receiver.target
        try:
            found = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
            family, _, _, _, address = found[0]
            await self._client_transport(family)
        except (OSError, UnicodeError) as problem:
            self._problem(receiver, f"cannot reach {target.host}: {problem}; trying again at the next notification")
            return False
        receiver.family = family
        receiver.address = address[:2] if family == socket.AF_INET else (address[0], address[1], 0, address[3])
        return True

    async def _client_transport(self, family: int) -> None:
        if family in self._transports:
            return
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(("0.0.0.0", 0) if family == socket.AF_INET else ("::", 0))
            sock.setblocking(False)
            kind = udp.UdpAsyncioTransport if family == socket.AF_INET else udp6.Udp6AsyncioTransport
            transport = kind().open_server_mode(sock=sock)
            await transport._lport          # the endpoint is made in a task; wait for it
        except BaseException:
            sock.close()
            raise
        config.add_transport(self._engine, CLIENT_DOMAINS[family], transport)
        self._transports[family] = transport

    # --- sending -------------------------------------------------------------------

    async def _run(self) -> None:
        for receiver in self._receivers:
            await self._resolve(receiver)
        while True:
            notification = await self._queue.get()
            self._sending = True
            try:
                for receiver in self._receivers:
                    if receiver.address or await self._resolve(receiver):
                        self._send(receiver, notification)
                    await asyncio.sleep(0)      # one message at a time: SNMPv3 crypto takes ms
            except Exception:                           # never let the task die
                self._log.exception("SNMP notification %s failed", name_of(notification.trap_oid))
            finally:
                self._sending = False
                self._queue.task_done()

    def _pdu(self, receiver: Receiver, notification: Notification):
        uptime, = self._engine.get_mib_builder().import_symbols("__SNMPv2-MIB", "sysUpTime")
        pdu = v2c.InformRequestPDU() if receiver.inform else v2c.SNMPv2TrapPDU()
        v2c.apiPDU.set_defaults(pdu)
        # RFC 3416 4.2.6 / 4.2.7: sysUpTime.0 and snmpTrapOID.0 first.
        v2c.apiPDU.set_varbinds(pdu, [
            (rfc1902.ObjectName(oids.sysUpTime + (0,)), uptime.syntax.clone()),
            (rfc1902.ObjectName(oids.snmpTrapOID + (0,)), rfc1902.ObjectIdentifier(notification.trap_oid)),
            *[(rfc1902.ObjectName(oid), to_pysnmp(value)) for oid, value in notification.varbinds],
        ])
        return pdu

    def _send(self, receiver: Receiver, notification: Notification) -> None:
        pdu = self._pdu(receiver, notification)
        if not receiver.inform:
            try:
                self._dispatch(receiver, pdu, None)
                receiver.sent += 1
            except Exception as problem:                # pysnmp raises many kinds here
                self._failed(receiver, notification, f"{type(problem).__name__}: {problem}")
            return
        done = asyncio.get_running_loop().create_future()
        self._pending.add(done)
        done.add_done_callback(self._pending.discard)
        _Inform(self, receiver, notification, pdu, done).send()

    def _dispatch(self, receiver: Receiver, pdu, on_response=None) -> None:
        """Hand one message to the engine; an INFORM's on_response gets the answer or the timeout."""
        model, security_model, security_name, level = receiver.security
        engine = self._engine
        timeout_ticks = receiver.target.timeout_s / engine.transport_dispatcher.get_timer_resolution()
        # The engine's tables hold pyasn1 values; a str name would not match its keys.
        engine.message_dispatcher.send_pdu(
            engine, CLIENT_DOMAINS[receiver.family], receiver.address, model, security_model,
            rfc1902.OctetString(security_name), level, None, rfc1902.OctetString(b""), 1, pdu,
            on_response is not None, timeout_ticks, on_response, None)

    def _failed(self, receiver: Receiver, notification: Notification, problem: str) -> None:
        receiver.failed += 1
        self._problem(receiver, f"{name_of(notification.trap_oid)} not delivered: {problem}")

    def _problem(self, receiver: Receiver, problem: str) -> None:
        receiver.last_problem = problem
        self._log.warning("SNMP %s: %s", receiver, problem)


class _Inform:
    """One INFORM to one receiver, sent again on timeout (RFC 3413 3.3.6) and after
    SNMPv3 discovery reports, until answered or out of retries."""

    def __init__(self, notifier: Notifier, receiver: Receiver, notification: Notification, pdu, done):
        self.notifier, self.receiver, self.notification, self.pdu, self.done = (
            notifier, receiver, notification, pdu, done)
        self.retries = 0
        self.discoveries = 0

    def send(self) -> None:
        try:
            self.notifier._dispatch(self.receiver, self.pdu, self.answered)
        except Exception as problem:
            self.finish(f"{type(problem).__name__}: {problem}")

    def answered(self, engine, model, security_model, security_name, level, context_engine_id,
                 context_name, pdu_version, pdu, status_information, send_pdu_handle, context) -> None:
        if self.done.done():                    # cancelled by stop()
            return
        if status_information:
            indication = status_information["errorIndication"]
            if indication in (errind.notInTimeWindow, errind.unknownEngineID):
                self.discoveries += 1           # the engine learnt the receiver's ID or time: again
                if self.discoveries <= DISCOVERY_RETRIES:
                    return self.send()
            else:
                self.retries += 1
                if self.retries <= self.receiver.target.retries:
                    return self.send()
            return self.finish(str(indication))
        error_status = v2c.apiPDU.get_error_status(pdu)
        self.finish(f"error status {error_status.prettyPrint()}" if error_status else None)

    def finish(self, problem: str | None) -> None:
        if problem:
            self.notifier._failed(self.receiver, self.notification, problem)
        else:
            self.receiver.sent += 1
        if not self.done.done():
            self.done.set_result(None)


def name_of(oid: tuple[int, ...]) -> str:
    """The MIB name of a notification OID, for logs."""
    for prefix in ("hapacs", "vrrpv3"):
        for name, value in oids.named(prefix).items():
            if value == tuple(oid):
                return name
    return ".".join(map(str, oid))
