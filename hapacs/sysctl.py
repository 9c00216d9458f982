"""Reading the kernel's network settings, /proc/sys/net: the one place hapacs's host checks
(hapacs.directhost, hapacs.transparent) read them. It reads; it never sets one."""

from __future__ import annotations

ROOT = "/proc/sys/net"


def read(name: str) -> int | None:
    """The value of net.NAME, NAME as its path under /proc/sys/net ("ipv4/ip_forward",
    "ipv4/conf/eth0/arp_ignore"); None when it cannot be read as a number (no such interface,
    another network namespace's view, not a number)."""
    try:
        with open(f"{ROOT}/{name}", encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None
