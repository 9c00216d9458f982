"""The control socket: a Unix stream socket, one JSON request and one JSON reply.

Request:  {"command": "status" | "takeover" | "release" | "maintenance" | "drain" | "reload", ...}\\n
Reply:    {"ok": true|false, "message": "...", ...}\\n

With "progress": true in the request, a command that takes time (takeover,
release) first answers {"pending": true, "wait_s": N}: its final reply
comes within N seconds, the deadline the election core set for it.

Only root, the agent's own user and members of `control.group` may talk
to it: the socket file is 0600 (0660 with a group) and every connection's
peer credentials (SO_PEERCRED) are checked again, so a permissive
directory or an inherited descriptor does not open it to other users.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import pwd
import socket
import struct
import time
from typing import Awaitable, Callable

from . import timing
from .logs import RateLimited

log = logging.getLogger("hapacs.control")

MAX_REQUEST_BYTES = 64 * 1024
MAX_NESTING = 4              # a request is one flat object; the json module recurses per level
DISCARD_MAX_BYTES = 16 << 20  # how much of an oversized request is read (and dropped) before replying
REQUEST_TIMEOUT_S = 5.0
COMMANDS = ("status", "takeover", "release", "maintenance", "drain", "reload")

Progress = Callable[[float], Awaitable[None]]
Handler = Callable[[dict, Progress], Awaitable[dict]]


class ControlError(Exception):
    """The agent cannot be reached over its control socket."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def allowed(uid: int, gid: int, group: str | None) -> bool:
    if uid in (0, os.geteuid()):
        return True
    if group is None:
        return False
    try:
        group_entry = grp.getgrnam(group)
    except KeyError:
        return False
    if gid == group_entry.gr_gid:
        return True
    try:
        user = pwd.getpwuid(uid).pw_name
        return group_entry.gr_gid in os.getgrouplist(user, gid)
    except KeyError:
        return False


class BadRequest(Exception):
    """A request that cannot be read at all: no complete line in time, too long, nested too
    deep, or not JSON; the message says which. (A JSON value that is not a well-formed request
    is refused by `validate`.)"""


def nesting_depth(line: bytes) -> int:
    """How deep brackets nest in a JSON text, strings skipped; counted before parsing, because
    the json module recurses once per level and a deep enough request ends in RecursionError."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:        # backslash
                escaped = True
            elif byte == 0x22:        # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):    # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):    # ] }
            depth -= 1
    return deepest


def parse_request(line: bytes) -> object:
    """The JSON value of one request line, or BadRequest saying why there is none."""
    brackets = line.count(b"[") + line.count(b"{")
    if brackets > MAX_NESTING and nesting_depth(line) > MAX_NESTING:
        raise BadRequest(f"nested deeper than {MAX_NESTING} levels; a request is one flat JSON object")
    try:
        return json.loads(line)
    except RecursionError:       # cannot happen after the depth check; never a traceback anyway
        raise BadRequest("nested too deeply") from None
    except ValueError as err:
        raise BadRequest(f"not JSON ({str(err).splitlines()[0][:100]})") from None


def validate(request: object) -> str | None:
    """Why a request is refused, or None if it is well formed."""
    if not isinstance(request, dict):
        return "the request must be a JSON object"
    command = request.get("command")
    if command not in COMMANDS:
        return f"unknown command {command!r}; allowed: {', '.join(COMMANDS)}"
    if command in ("maintenance", "drain") and request.get("on") not in (True, False):
        return f"{command} needs \"on\": true or false"
    if command == "reload" and "config" in request:
        path = request["config"]
        if not isinstance(path, str) or not path.startswith("/") or len(path) > 4096:
            return "config must be the absolute path of a configuration file"
    if command == "release":
        drain = request.get("drain_timeout_s", timing.DEFAULT_DRAIN_TIMEOUT_S)
        if isinstance(drain, bool) or not isinstance(drain, (int, float)) \
                or not 0 <= drain <= timing.MAX_DRAIN_TIMEOUT_S:
            return f"drain_timeout_s must be a number of seconds from 0 to {timing.MAX_DRAIN_TIMEOUT_S:g}"
    return None


class ControlServer:
    def __init__(self, path: str, group: str | None, handler: Handler):
        self.path, self.group, self.handler = path, group, handler
        self._server: asyncio.base_events.Server | None = None
        self._created = False
        self.bad_requests = 0       # requests refused as unreadable (not JSON, too long, too deep)
        self._limited = RateLimited(log)

    def check_free(self) -> None:
        """Refuse early, before touching anything, if another agent answers on our socket."""
        if os.path.exists(self.path) and _answers(self.path):
            raise ControlError(f"another agent already answers on {self.path}; stop it first")

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            if _answers(self.path):
                raise ControlError(f"another agent already answers on {self.path}; stop it first")
            os.unlink(self.path)   # left behind by an agent that was killed
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path,
                                                           limit=MAX_REQUEST_BYTES)
            self._created = True
        finally:
            os.umask(old_umask)
        if self.group is not None:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if not self._created:
            return   # never ours: another agent's socket must stay
        self._created = False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, gid = peer_credentials(sock)
            if not allowed(uid, gid, self.group):
                # Read the request first: closing with it unread would reset the connection,
                # and the client would see "Broken pipe" instead of this refusal.
                try:
                    await self._read_request(reader)
                except BadRequest:
                    pass
                self._limited.warning("refused", time.monotonic(), "control socket: refused uid %d (pid %d): "
                                      "not root%s", uid, pid, f" nor in group {self.group}" if self.group else "")
                await self._reply(writer, {"ok": False, "message": "permission denied: only root"
                                           + (f" and members of group {self.group}" if self.group else "")
                                           + " may control this agent"})
                return
            try:
                line = await self._read_request(reader)
                if not line:
                    return     # connected and closed without a word: another agent checking we run
                request = parse_request(line)
            except BadRequest as err:
                self._bad_request(pid, uid, str(err))
                await self._reply(writer, {"ok": False, "message": f"bad request: {err}; "
                                           "send one JSON object on one line"})
                return
            problem = validate(request)
            if problem is not None:
                await self._reply(writer, {"ok": False, "message": problem})
                return
            await self._reply(writer, await self.handler(request, self._progress(writer, request)))
        except (ConnectionError, OSError) as err:
            log.debug("control client went away: %s", err)
        except Exception:
            log.exception("control request failed")
            try:
                await self._reply(writer, {"ok": False, "message": "internal error; see the agent's log"})
            except Exception:
                pass
        finally:
            writer.close()

    def _progress(self, writer: asyncio.StreamWriter, request: dict) -> Progress:
        """Tells a client that asked for it ("progress": true) that a command is under way."""
        async def progress(wait_s: float) -> None:
            if request.get("progress") is True:
                await self._reply(writer, {"pending": True, "wait_s": round(max(0.0, wait_s), 3)})
        return progress

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> bytes:
        """One line of at most MAX_REQUEST_BYTES. A longer one is read on to its end (at most
        DISCARD_MAX_BYTES) and refused: replying with it unread would reset the connection,
        and the client would see "Connection reset" instead of the refusal."""
        deadline = asyncio.get_running_loop().time() + REQUEST_TIMEOUT_S
        line = bytearray()
        received = 0
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                chunk = await asyncio.wait_for(reader.read(MAX_REQUEST_BYTES), max(remaining, 0))
            except asyncio.TimeoutError:
                if received > MAX_REQUEST_BYTES:
                    break
                raise BadRequest(f"no complete line within {REQUEST_TIMEOUT_S:g} s") from None
            end = chunk.find(b"\n")
            received += len(chunk) if end < 0 else end + 1
            if received <= MAX_REQUEST_BYTES:
                line += chunk if end < 0 else chunk[:end + 1]
            if not chunk or end >= 0 or received > DISCARD_MAX_BYTES:
                break
        if received > MAX_REQUEST_BYTES:
            raise BadRequest(f"longer than {MAX_REQUEST_BYTES} bytes")
        return bytes(line)

    def _bad_request(self, pid: int, uid: int, why: str) -> None:
        self.bad_requests += 1
        self._limited.warning("bad-request", time.monotonic(), "control socket: bad request from pid %d "
                              "(uid %d): %s", pid, uid, why)

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
            return True
        except OSError:
            return False


# After a "pending" line, the client waits the agent's own deadline plus this margin.
PENDING_MARGIN_S = 5.0
MAX_REPLY_BYTES = 4 << 20


def request(path: str, message: dict, timeout_s: float = 10.0) -> dict:
    """Send one request to the agent and return its final reply (blocking; for the CLI).

    A request with "progress": true may first get {"pending": true, "wait_s": N}: the command
    is under way and its answer comes within N seconds (the core's deadline). The client then
    waits that long, so it never gives up while the agent is still handing over."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(path)
            sock.sendall(json.dumps(message).encode() + b"\n")
            with sock.makefile("rb") as lines:
                while True:
                    reply = _parse_reply(lines.readline(MAX_REPLY_BYTES), path)
                    if reply.get("pending") is not True:
                        return reply
                    wait_s = reply.get("wait_s")
                    if isinstance(wait_s, (int, float)) and not isinstance(wait_s, bool) and 0 <= wait_s <= 86400:
                        timeout_s = wait_s + PENDING_MARGIN_S
                        sock.settimeout(timeout_s)
    except FileNotFoundError:
        raise ControlError(f"no agent socket at {path}: is hapacs running?") from None
    except ConnectionRefusedError:
        raise ControlError(f"no agent answers at {path} (the socket was left by an agent that died): "
                           "is hapacs running?") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}: run as root or as a member of control.group") from None
    except socket.timeout:
        raise ControlError(f"the agent at {path} did not answer within {timeout_s:g} s") from None
    except OSError as err:
        raise ControlError(f"cannot reach the agent at {path}: {err.strerror or err}") from None


def _parse_reply(data: bytes, path: str) -> dict:
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the agent at {path} closed the connection without a valid reply") from None
    if not isinstance(reply, dict):
        raise ControlError(f"the agent at {path} answered {type(reply).__name__}, not a JSON object")
    return reply
