"""Drain DICOM associations before a planned handover.

A MASTER that hands over (release, takeover, preempt, stop) first waits
until no association is established to a VIP's DICOM ports, so that no
transfer is cut. What it drains is a list of (VIP, port) pairs
(Config.drain_targets): services balanced by direct routing are left out,
since their associations carry on through the next VIP holder. While it
waits, new connections to those pairs are held back: an nftables rule
drops their first packet (SYN), the workstation's
TCP sends it again one second later, and by then the VIP lives on the new
MASTER. Without the hold, a workstation whose association started in the
last milliseconds before the move would have it cut.

Counting uses psutil (from a thread: reading the kernel's connection table
takes ~10 ms); the rule is added and removed with the `nft` command, run
as a subprocess (hapacs.nftcommand). Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
from dataclasses import dataclass

import psutil

from . import nftcommand
from .nftcommand import NftError

log = logging.getLogger("hapacs.drain")

TABLE = "hapacs_drain"
POLL_S = 0.05
QUIET_WAIT_S = 0.5      # how long to hope for a moment with no association before holding new ones
NFT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class DrainResult:
    open_at_start: int
    cut: int            # still established when the timeout ended the wait
    waited_s: float
    held: bool          # new connections were held back


Target = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]     # (VIP, port)


def local_endpoints(status: str) -> list[tuple[str, int]]:
    """(address, port) of this host's TCP sockets in `status` (psutil.CONN_ESTABLISHED, CONN_LISTEN...),
    an IPv4-mapped IPv6 address written as IPv4."""
    return [(conn.laddr.ip.removeprefix("::ffff:"), conn.laddr.port) for conn in psutil.net_connections(kind="tcp")
            if conn.status == status and conn.laddr]


def established(targets: set[tuple[str, int]]) -> int:
    """Associations (TCP connections) established to a drained (VIP, port)."""
    return sum(1 for endpoint in local_endpoints(psutil.CONN_ESTABLISHED) if endpoint in targets)


def hold_ruleset(targets: tuple[Target, ...]) -> str:
    """An nftables table that drops new connections (SYN without ACK) to the drained (VIP, port)s."""
    ports: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, set[int]] = {}
    for vip, port in targets:
        ports.setdefault(vip, set()).add(port)
    rules = []
    for vip in sorted(ports, key=str):      # one rule per VIP, with that VIP's own ports
        family = "ip" if vip.version == 4 else "ip6"
        port_set = ", ".join(str(p) for p in sorted(ports[vip]))
        rules.append(f"    {family} daddr {vip} tcp dport {{ {port_set} }} "
                     "tcp flags & (fin | syn | rst | ack) == syn drop")
    return (f"table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority -150; policy accept;\n"
            + "\n".join(rules) + "\n  }\n}\n")


class Drainer:
    def __init__(self, targets: tuple[Target, ...], hold_new_connections: bool):
        self.reconfigure(targets, hold_new_connections)
        self.nft = shutil.which(nftcommand.NFT)
        self.holding = False
        self._hold_lock = asyncio.Lock()
        if self.hold_wanted and self.nft is None:
            log.warning("the nft command is missing (Debian package nftables): during a handover new "
                        "associations are not held back, and one that starts in the last moment is cut")

    def reconfigure(self, targets: tuple[Target, ...], hold_new_connections: bool) -> None:
        """What to count and hold from now on (a reload). The same drainer stays, so a hold it
        placed, even during the reload, is still removed by its `release_hold()`."""
        self.targets = targets
        self.hold_wanted = hold_new_connections and bool(targets)

    async def _nft(self, *args: str, stdin: str | None = None) -> tuple[int, str]:
        """nft's exit code and error text; -1 when it cannot run or does not answer in time."""
        try:
            return await nftcommand.run(list(args), stdin, NFT_TIMEOUT_S)
        except NftError as err:
            return -1, str(err)

    async def clear_stale(self) -> None:
        """Remove a hold left by an agent that died during a handover."""
        if self.nft is not None:
            code, _ = await self._nft("delete", "table", "inet", TABLE)
            if code == 0:
                log.warning("removed a connection hold left by an earlier agent")

    async def hold(self) -> bool:
        async with self._hold_lock:
            if not self.hold_wanted or self.nft is None or self.holding:
                return self.holding
            code, err = await self._nft("-f", "-", stdin=hold_ruleset(self.targets))
            if code != 0:
                log.warning("cannot hold new associations during the handover (nft: %s)", err)
                return False
            self.holding = True
            log.info("holding new connections to %s until the handover is done (nftables table inet %s)",
                     ", ".join(f"{v}:{p}" if v.version == 4 else f"[{v}]:{p}" for v, p in self.targets), TABLE)
            return True

    async def release_hold(self, retry_later: bool = False) -> None:
        """Remove the hold, if this drainer holds one; the only way a hold ends.

        Called from several places (the handover done, an abandoned drain, before taking
        the VIPs, the agent's exit), possibly at the same moment: one at a time, so the
        table is deleted once, and a call that finds it gone says nothing. If it cannot
        be removed: an ERROR, unless `retry_later` (a later call will try again: one
        comes before this node takes the VIPs, where a hold would matter, and one at exit).
        """
        async with self._hold_lock:
            if not self.holding:
                return
            code, err = await self._nft("delete", "table", "inet", TABLE)
            if code != 0:
                listed, _ = await self._nft("list", "table", "inet", TABLE)
                if listed in (0, -1):     # still there, or nft cannot even tell
                    if retry_later:
                        log.warning("cannot remove the connection hold yet (nft: %s); trying again before "
                                    "this node takes the VIPs, and when the agent stops", err)
                    else:
                        log.error("cannot remove the connection hold (nft: %s): new DICOM associations to "
                                  "the VIPs may still be refused; remove it with: nft delete table inet %s",
                                  err, TABLE)
                    return
                log.info("the connection hold was already gone (nft: %s)", err)
            self.holding = False

    async def _count(self) -> int:
        try:
            return await asyncio.to_thread(established, {(str(v), p) for v, p in self.targets})
        except (psutil.Error, OSError) as error:
            log.warning("cannot count DICOM associations: %s", error)
            return 0

    async def drain(self, timeout_s: float) -> DrainResult:
        """Wait until no association is open (at most timeout_s), holding new ones back.

        First a short wait for a quiet moment without holding anything; then the hold,
        and a count again (one may have started just before it), and the wait for the
        rest. The hold stays until `release_hold()`, after the handover.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        if not self.targets:
            return DrainResult(0, 0, 0.0, False)
        first = count = await self._count()
        while count and loop.time() - start < min(timeout_s, QUIET_WAIT_S):
            await asyncio.sleep(POLL_S)
            count = await self._count()
        held = await self.hold()
        count = await self._count()
        while count and loop.time() - start < timeout_s:
            await asyncio.sleep(POLL_S)
            count = await self._count()
        return DrainResult(first, count, loop.time() - start, held)
