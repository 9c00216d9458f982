"""The HAProxy adapter: the `balance:` configuration in HAProxy's language, HAProxy
as a child process, and its runtime statistics back.

HAProxy runs on every node (master-worker mode, `-W -db`, a child of the
agent, killed by its pid). Its frontends bind the VIPs with `transparent`,
so it starts on a node that does not hold a VIP and serves the moment the
address arrives, with no reload. Each member is checked by HAProxy itself
with a real DICOM association (A-ASSOCIATE-RQ for Verification, expect an
A-ASSOCIATE-AC accepting it, then A-RELEASE-RQ/RP: never an A-ABORT, which
fills PACS audit logs) and asks each member's agent (agent-check) whether
its PACS should get new associations. The PROXY protocol is never used:
neither dcmtk nor Orthanc speak it.

What it must never do: decide anything about the cluster. It only writes
files, runs HAProxy and reads its statistics.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import ctypes
import io
import ipaddress
import logging
import os
import shutil
import signal
import struct
from dataclasses import dataclass

from .balanceconfig import BalanceConfig, ServiceConfig

HAPROXY = "haproxy"
START_TIMEOUT_S = 10.0
CHECK_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
STATS_TIMEOUT_S = 2.0
LOG_LINES_KEPT = 20
AGENT_INTER_MS = 200   # `hapacs drain on` reaches the VIP holder's HAProxy within this (the goal: 1 s)
RETRIES = 2
WEIGHT = 100          # the agent's NN% answers are relative to it: with HAProxy's default of 1, 50% is 0
CLIENT_TIMEOUT = "1h"  # a viewer may hold an association idle for a long while

# DICOM upper layer (PS3.8 9.3): the PDUs of a health check that opens and closes an association cleanly.
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.3811.3.0.4"   # pynetdicom's, as the agent's own checks send
MAX_PDU = 16384
A_RELEASE_RQ = bytes.fromhex("05000000000400000000")
A_RELEASE_RP = bytes.fromhex("06000000000400000000")


class HAProxyError(Exception):
    """HAProxy is missing, refuses its configuration or does not start; the message says which."""


def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack("!BxH", kind, len(payload)) + payload


def associate_rq(called_ae: str, calling_ae: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing Verification with Implicit VR Little Endian."""
    context = struct.pack("!Bxxx", 1) + _item(0x30, VERIFICATION.encode()) + _item(0x40, IMPLICIT_VR_LE.encode())
    user = _item(0x51, struct.pack("!I", MAX_PDU)) + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
    body = (struct.pack("!Hxx", 1) + called_ae.encode("ascii").ljust(16) + calling_ae.encode("ascii").ljust(16)
            + bytes(32) + _item(0x10, APPLICATION_CONTEXT.encode()) + _item(0x20, context) + _item(0x50, user))
    return struct.pack("!BxI", 0x01, len(body)) + body


def accepted_context_item() -> bytes:
    """The start of the A-ASSOCIATE-AC's presentation context item: context 1, result 0 (acceptance),
    with the one transfer syntax proposed (PS3.8 9.3.3.2)."""
    length = 4 + 4 + len(IMPLICIT_VR_LE)
    return struct.pack("!BxHBxBx", 0x21, length, 1, 0)


@dataclass(frozen=True)
class Member:
    server: str          # HAProxy's server name: the address, stable across reloads
    name: str | None     # the configured or this node's name; None: the name heard at this address
    address: ipaddress.IPv4Address | ipaddress.IPv6Address


def _endpoint(address, port: int) -> str:
    return f"ipv{address.version}@{address}:{port}"


def backend_name(service: ServiceConfig) -> str:
    return f"be_{service.name}"


def _check_lines(service: ServiceConfig) -> list[str]:
    """A TCP connect, and with called_ae a whole DICOM association (opened and released)."""
    connect = ["    option tcp-check", "    tcp-check connect"]
    if service.called_ae is None:
        return connect
    return connect + [
        f"    tcp-check send-binary {associate_rq(service.called_ae, service.calling_ae).hex()}",
        "    tcp-check expect rbinary ^0200",                      # A-ASSOCIATE-AC (0x03 is -RJ)
        f"    tcp-check expect rbinary {accepted_context_item().hex()}",
        f"    tcp-check send-binary {A_RELEASE_RQ.hex()}",
        f"    tcp-check expect binary {A_RELEASE_RP.hex()}",
    ]


def _source_lines(balance: BalanceConfig) -> list[str]:
    """client_address: transparent: connect to the members from the workstation's own address.
    HAProxy must run as root for it (Debian's `user haproxy` refuses usesrc clientip at start): hapacs
    starts it as the agent's user, root, with no `user` line; hapacs.transparent routes the answers."""
    return ["    source 0.0.0.0 usesrc clientip"] if balance.transparent else []


def render(balance: BalanceConfig, members: tuple[Member, ...], state_dir: str) -> str:
    """haproxy.cfg for this node: one frontend and one backend per service."""
    interval_ms = int(balance.check_interval_s * 1000)
    lines = [
        "# Written by hapacs from its balance: section; edits here are overwritten.",
        "global",
        f"    stats socket {stats_socket(state_dir)} mode 600 level admin",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode tcp",
        # A member on the LAN accepts in well under a millisecond. HAProxy also waits min(this, 1 s)
        # before it retries a refused connection elsewhere: the first association to meet a PACS that
        # just died opened 1.02 s late at 2 s here, 0.52-0.53 s at 500 ms (bench/proxy.py, member).
        "    timeout connect 500ms",
        f"    timeout client {CLIENT_TIMEOUT}",
        f"    timeout server {CLIENT_TIMEOUT}",
        "    timeout check 2s",
        # A member that refuses or dies before answering: try again, then on another member.
        "    option redispatch 1",
        f"    retries {RETRIES}",
    ]
    for service in balance.services:
        lines += ["", f"frontend fe_{service.name}",
                  f"    bind {_endpoint(service.address, service.port)} transparent",
                  f"    default_backend {backend_name(service)}",
                  "", f"backend {backend_name(service)}",
                  f"    balance {service.schedule}", *_source_lines(balance), *_check_lines(service)]
        for member in members:
            lines.append(
                f"    server {member.server} {_endpoint(member.address, service.target_port)} weight {WEIGHT} "
                f"check inter {interval_ms} fastinter 200 downinter 1000 fall 2 rise 2 "
                f"observe layer4 error-limit 3 on-error mark-down "
                f"agent-check agent-addr {member.address} agent-port {balance.agent_port} "
                f"agent-inter {AGENT_INTER_MS} agent-send \"{service.name}\\n\"")
    return "\n".join(lines) + "\n"


def directory(state_dir: str) -> str:
    return os.path.join(state_dir, "haproxy")


def stats_socket(state_dir: str) -> str:
    return os.path.join(directory(state_dir), "admin.sock")


def _die_with_parent() -> None:
    """In the child before exec: HAProxy gets SIGTERM when the agent dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def exit_text(code: int | None) -> str:
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


@dataclass(frozen=True)
class ServerStat:
    backend: str
    server: str
    status: str          # HAProxy's: UP, DOWN, DRAIN, MAINT, NOLB, "UP 1/2", "no check"...
    current: int         # scur: associations open now
    total: int           # stot: associations since HAProxy started


def parse_stat(text: str) -> list[ServerStat]:
    """`show stat` CSV: one row per frontend, server and backend; the servers only."""
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    found = []
    for row in rows:
        if row.get("svname") in (None, "FRONTEND", "BACKEND"):
            continue
        found.append(ServerStat(row["pxname"], row["svname"], row.get("status") or "",
                                int(row.get("scur") or 0), int(row.get("stot") or 0)))
    return found


class HAProxy:
    """One HAProxy master process, a child of the agent."""

    def __init__(self, state_dir: str, binary: str = HAPROXY):
        self.dir = directory(state_dir)
        self.config_path = os.path.join(self.dir, "haproxy.cfg")
        self.pid_path = os.path.join(self.dir, "haproxy.pid")
        self.socket_path = stats_socket(state_dir)
        self.binary = binary
        self.process: asyncio.subprocess.Process | None = None
        self.log = logging.getLogger("hapacs.haproxy")
        self.recent: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self._reader: asyncio.Task | None = None

    async def check(self, text: str, install: bool = True) -> None:
        """Write `text` as the configuration (with `install`), after `haproxy -c` accepts it;
        raise HAProxyError if not. Without `install` the running configuration stays as it is."""
        if shutil.which(self.binary) is None:
            raise HAProxyError(f"{self.binary} is not installed (balance: needs HAProxy 2.6 or newer; "
                               "Debian: apt install haproxy)")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        candidate = self.config_path + ".new"
        with open(candidate, "w", encoding="utf-8") as handle:
            handle.write(text)
        try:
            checked = await asyncio.create_subprocess_exec(
                self.binary, "-c", "-f", candidate, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as err:
            raise HAProxyError(f"cannot run {self.binary} -c: {err.strerror or err}") from None
        try:
            # Bounded: a start or a reload must not wait for ever on a check that hangs
            # (a resolver in the configuration, a stuck file system); it is killed and reaped.
            output, _ = await asyncio.wait_for(checked.communicate(), CHECK_TIMEOUT_S)
        except asyncio.TimeoutError:
            checked.kill()
            await checked.wait()
            raise HAProxyError(f"{self.binary} -c did not answer within {CHECK_TIMEOUT_S:g} s "
                               f"on the configuration written from balance: ({candidate})") from None
        if checked.returncode != 0:
            lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
            raise HAProxyError(f"HAProxy refuses the configuration written from balance: ({candidate}): "
                               + " | ".join(lines[-5:]))
        if install:
            os.replace(candidate, self.config_path)
        else:
            os.unlink(candidate)

    async def start(self, text: str) -> None:
        """Check and write the configuration, start HAProxy, wait until its stats socket answers."""
        await self.check(text)
        self.kill_stale()
        self.process = await asyncio.create_subprocess_exec(
            self.binary, "-W", "-db", "-f", self.config_path, "-p", self.pid_path,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent)
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read_log(self.process.stdout))
        deadline = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline:
            if self.process.returncode is not None:
                await asyncio.wait({self._reader}, timeout=1.0)   # its last words, unless a worker holds the pipe
                raise HAProxyError(f"HAProxy exited at start ({exit_text(self.process.returncode)}): "
                                   f"{self.log_tail()}")
            try:
                await self.command("show info")
                return
            except OSError:
                await asyncio.sleep(0.05)
        await self.stop()
        raise HAProxyError(f"HAProxy did not answer on {self.socket_path} within {START_TIMEOUT_S:g} s: "
                           f"{self.log_tail()}")

    async def reload(self, text: str) -> None:
        """A new configuration, checked first; the master starts new workers, old associations finish."""
        await self.check(text)
        if self.running:
            os.kill(self.process.pid, signal.SIGUSR2)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait(self) -> int:
        return await self.process.wait()

    async def _read_log(self, stream: asyncio.StreamReader) -> None:
        """HAProxy's warnings and alerts on stderr (members up and down, what stops it; no traffic log),
        one per line, into the agent's log; the last few kept for errors."""
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue      # an overlong line: dropped
            if not line:
                return
            text = line.decode(errors="replace").strip()
            if text:
                self.recent.append(text)
                self.log.info("%s", text)

    async def stop(self) -> None:
        if not self.running:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            os.kill(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()

    def kill_stale(self) -> None:
        """An HAProxy left by an agent that was killed would keep the VIP's port and the socket."""
        try:
            with open(self.pid_path, encoding="ascii") as handle:
                pid = int(handle.read().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            return
        if any(arg.endswith(b"haproxy") for arg in argv[:1]) and self.config_path.encode() in argv:
            os.kill(pid, signal.SIGTERM)

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(list(self.recent)[-lines:]) or "(nothing in its log)"

    async def command(self, text: str) -> str:
        """One runtime API command over the stats socket; its answer."""
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.socket_path), STATS_TIMEOUT_S)
        try:
            writer.write(text.encode() + b"\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.read(), STATS_TIMEOUT_S)).decode(errors="replace")
        finally:
            writer.close()

    async def stats(self) -> list[ServerStat]:
        return parse_stat(await self.command("show stat"))
