"""Watch a lab machine's wire for VIP announcements: gratuitous ARP and unsolicited NA.

What it is for: tests and benchmarks of what the README promises about
announcements (a new MASTER announces its VIPs at once and four more times
over two seconds; a split brain's winner announces again). A workstation
that already heard one announcement cannot tell a second one from none, so
these frames are counted on the wire.

A thread inside the lab namespace reads an AF_PACKET socket bound to the
machine's interface, with kernel receive timestamps. It only listens, and
stops after `duration_s` or at `stop()`, whichever comes first.

What counts:
- a gratuitous ARP: sender and target protocol address equal (request or reply);
- an unsolicited NA: ICMPv6 type 136 without the Solicited flag (RFC 4861 7.2.6).
Solicited answers (an ARP reply to the workstation, an NA to its solicitation)
are not announcements and are left out.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from dataclasses import dataclass

from lab.netns import enter_netns

ETH_P_ALL = 0x0003
ETH_P_ARP, ETH_P_IPV6 = 0x0806, 0x86DD
ICMPV6, NEIGHBOR_ADVERTISEMENT = 58, 136
NA_SOLICITED = 0x40
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)   # Linux value; not exported by every Python
MAX_FRAMES = 100_000   # a bound on the reading loop besides its duration


@dataclass(frozen=True)
class Announcement:
    at: float      # time.monotonic() at which the kernel received the frame
    kind: str      # "arp-request", "arp-reply" or "na"
    mac: str       # the sender's Ethernet address, as `ip link` shows it
    address: str   # the announced IP address


def _mac(raw: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in raw)


def parse(frame: bytes) -> tuple[str, str, str] | None:
    """(kind, sender MAC, announced address) if the Ethernet frame is an announcement."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack("!H", frame[12:14])[0]
    sender = _mac(frame[6:12])
    if ethertype == ETH_P_ARP and len(frame) >= 42:
        op = struct.unpack("!H", frame[20:22])[0]
        sender_ip, target_ip = frame[28:32], frame[38:42]
        if sender_ip == target_ip and op in (1, 2):
            return ("arp-request" if op == 1 else "arp-reply"), sender, socket.inet_ntoa(sender_ip)
    elif ethertype == ETH_P_IPV6 and len(frame) >= 14 + 40 + 24:
        ip6 = frame[14:]
        icmp = ip6[40:]
        if ip6[6] == ICMPV6 and icmp[0] == NEIGHBOR_ADVERTISEMENT and not icmp[4] & NA_SOLICITED:
            return "na", sender, str(ipaddress.IPv6Address(icmp[8:24]))
    return None


class AnnouncementWatch:
    """Announcements seen on one lab machine's interface, from start() until stop()."""

    def __init__(self, lab, machine: str = "ws", duration_s: float = 30.0):
        self.node = lab.node(machine)
        self.duration_s = duration_s
        self._seen: list[Announcement] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name=f"announcements-{self.node.ns}", daemon=True)

    def start(self) -> "AnnouncementWatch":
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError(f"the announcement watch on {self.node.ns} did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __enter__(self) -> "AnnouncementWatch":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def seen(self, mac: str | None = None, address: str | None = None, kind: str | None = None,
             since: float = 0.0) -> list[Announcement]:
        """Announcements so far, oldest first, filtered by sender MAC, address, kind and time."""
        if self._error is not None:
            raise AssertionError(f"the announcement watch on {self.node.ns} failed: {self._error}")
        with self._lock:
            found = list(self._seen)
        return [a for a in found if (mac is None or a.mac == mac) and (kind is None or a.kind == kind)
                and (address is None or ipaddress.ip_address(a.address) == ipaddress.ip_address(address))
                and a.at >= since]

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((self.node.ifname, ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.settimeout(0.1)
        return sock

    def _read(self) -> None:
        try:
            enter_netns(self.node.ns)
            sock = self._open()
        except BaseException as error:   # handed to start()'s caller
            self._error = error
            self._ready.set()
            return
        # Kernel stamps are CLOCK_REALTIME; tests compare with time.monotonic().
        offset = time.time() - time.monotonic()
        deadline = time.monotonic() + self.duration_s
        self._ready.set()
        try:
            for _ in range(MAX_FRAMES):
                if self._stop.is_set() or time.monotonic() >= deadline:
                    break
                try:
                    frame, ancillary, _flags, _address = sock.recvmsg(2048, 64)
                except socket.timeout:
                    continue
                parsed = parse(frame)
                if parsed is None:
                    continue
                stamp = time.time()
                for level, kind, data in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                        seconds, nanoseconds = struct.unpack("qq", data[:16])
                        stamp = seconds + nanoseconds / 1e9
                with self._lock:
                    self._seen.append(Announcement(stamp - offset, *parsed))
        except OSError as error:
            self._error = error
        finally:
            sock.close()

