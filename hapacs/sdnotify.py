"""systemd's notify protocol (Type=notify): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

The whole protocol is a datagram to the Unix socket named in NOTIFY_SOCKET,
so this needs no library. Outside systemd (no NOTIFY_SOCKET)
every call does nothing and returns False.

What it must never do: block the event loop. The socket is non-blocking; a
message systemd cannot take at once is dropped, and the next ping or STATUS
line tries again. The watchdog pings come from a task on the agent's own
event loop, so a hung loop stops them and systemd restarts the agent
(WatchdogSec= in systemd/hapacs.service).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
from typing import Callable

from .effects import AcquireVips, ReleaseVips, Transition

log = logging.getLogger("hapacs.systemd")


def notify(message: str) -> bool:
    """Send one notify message ("READY=1", "WATCHDOG=1", ...); True if it was sent.

    NOTIFY_SOCKET is a path, or "@name" for a socket in the abstract namespace.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_period_s() -> float | None:
    """How often to send WATCHDOG=1: half of WATCHDOG_USEC, or None when no watchdog is asked for.

    systemd sets WATCHDOG_PID to the main process; a child that inherited the
    variables (a notify script, a check script) must not ping for us.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        period = int(usec) / 2 / 1_000_000
    except ValueError:
        return None
    return period if period > 0 else None


def status_line(status) -> str:
    """One line for `systemctl status` (STATUS=), from a hapacs.status.Status."""
    since = datetime.datetime.now() - datetime.timedelta(seconds=status.since_s)
    line = f"{status.state} since {since:%H:%M:%S}"
    held = sum(1 for vip in status.vips if vip.held)
    if status.state == "MASTER":
        line += ", VIPs held" if held == len(status.vips) else f", {held} of {len(status.vips)} VIPs held"
    elif status.state == "BACKUP":
        line += f", MASTER is {status.master}" if status.master else ", no MASTER heard"
    elif status.state == "FAULT" and status.faults:
        line += ": " + "; ".join(status.faults)
    if status.state != "MASTER" and held:
        line += f", still holding {held} VIP(s)"
    if status.maintenance:
        line += ", maintenance on"
    return line


class SystemdNotifier:
    """The agent's side of Type=notify.

    `status_fn` returns the agent's current hapacs.status.Status; STATUS=
    lines are rendered from it, so systemctl shows what `hapacs status` shows.
    """

    def __init__(self, status_fn: Callable[[], object]):
        self.status_fn = status_fn
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status = ""
        self._warned = False

    def ready(self) -> None:
        """Call once the agent serves: its sockets are bound and the control socket answers."""
        self._send("READY=1\n" + self._status_field())

    def listener(self, effect) -> None:
        """An Agent listener: a new STATUS= line on each transition and VIP change."""
        if self.enabled and isinstance(effect, (Transition, AcquireVips, ReleaseVips)):
            field = self._status_field(effect)
            if field != self._last_status:
                self._send(field)

    async def watchdog_loop(self) -> None:
        """Send WATCHDOG=1 every half WATCHDOG_USEC from this loop; returns at once without a watchdog."""
        period = watchdog_period_s()
        if not self.enabled or period is None:
            return
        log.info("systemd watchdog: pinging every %g s", period)
        while True:
            self._send("WATCHDOG=1")
            await asyncio.sleep(period)

    def stopping(self) -> None:
        """Call when a stop begins; systemd then shows the unit as deactivating."""
        self._send("STOPPING=1\nSTATUS=stopping: leaving the cluster")

    def _status_field(self, effect=None) -> str:
        try:
            line = status_line(self.status_fn())
        except Exception:
            # A status that cannot be built is a bug elsewhere; the transition itself still says enough.
            line = f"{effect.new.name}: {effect.reason.text}" if isinstance(effect, Transition) else "running"
        return f"STATUS={line}"

    def _send(self, message: str) -> None:
        if not self.enabled:
            return
        if notify(message):
            if message.startswith("STATUS=") or "\nSTATUS=" in message:
                self._last_status = message[message.index("STATUS="):]
            self._warned = False
        elif not self._warned:
            self._warned = True   # once per run of failures, not once per ping
            log.warning("cannot send %r to systemd at NOTIFY_SOCKET=%s", message.split("\n")[0],
                        os.environ.get("NOTIFY_SOCKET"))
