"""The control socket: a Unix stream socket, one JSON request and one JSON reply.

Request:  {"command": "status" | "takeover" | "release" | "maintenance" | "reload", ...}\\n
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
from typing import Awaitable, Callable

from . import timing

log = logging.getLogger("hapacs.control")

MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 5.0
COMMANDS = ("status", "takeover", "release", "maintenance", "reload")

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


def validate(request: object) -> str | None:
    """Why a request is refused, or None if it is well formed."""
    if not isinstance(request, dict):
        return "the request must be a JSON object"
    command = request.get("command")
    if command not in COMMANDS:
        return f"unknown command {command!r}; allowed: {', '.join(COMMANDS)}"
    if command == "maintenance" and request.get("on") not in (True, False):
        return "maintenance needs \"on\": true or false"
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
                    await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
                except (ValueError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                    pass
                log.warning("control socket: refused uid %d (pid %d): not root%s", uid, pid,
                            f" nor in group {self.group}" if self.group else "")
                await self._reply(writer, {"ok": False, "message": "permission denied: only root"
                                           + (f" and members of group {self.group}" if self.group else "")
                                           + " may control this agent"})
                return
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
                request = json.loads(line)
            except (ValueError, asyncio.LimitOverrunError, asyncio.TimeoutError) as err:
                await self._reply(writer, {"ok": False, "message": f"bad request: {type(err).__name__}; "
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
