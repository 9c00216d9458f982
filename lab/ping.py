"""One ICMP echo (IPv4 or IPv6) from the network namespace this process runs in.

The lab runs it inside a namespace (`Lab.ping`) because this machine has no
`ping` binary and CI may not either. Standard library only, so it can be run
by file path without the repository on sys.path.

It sends exactly one echo request and waits at most `--timeout` seconds for
the matching reply: exit 0 on a reply, 1 otherwise. Never more than one packet.
"""

import argparse
import os
import socket
import struct
import sys
import time

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
PAYLOAD = b"hapacs-lab-ping"


def _checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum (IPv4 ICMP; the kernel fills it for ICMPv6)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(destination: str, timeout_s: float = 1.0) -> bool:
    """Send one echo request to `destination`; True if its reply came in time."""
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    v6 = family == socket.AF_INET6
    wanted = socket.inet_pton(family, destination)
    ident, seq = os.getpid() & 0xFFFF, 1
    request_type = ICMPV6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
    reply_type = ICMPV6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY
    header = struct.pack("!BBHHH", request_type, 0, 0, ident, seq)
    if not v6:
        header = struct.pack("!BBHHH", request_type, 0, _checksum(header + PAYLOAD), ident, seq)
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    deadline = time.monotonic() + timeout_s
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        try:
            sock.sendto(header + PAYLOAD, (destination, 0))
        except OSError:  # e.g. ENETUNREACH: no route in this namespace
            return False
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                data, source = sock.recvfrom(2048)
            except (socket.timeout, InterruptedError):
                return False
            if not v6:  # IPv4 raw sockets deliver the IP header too
                data = data[(data[0] & 0x0F) * 4:]
            if len(data) < 8 or socket.inet_pton(family, source[0]) != wanted:
                continue
            kind, _code, _sum, reply_ident, reply_seq = struct.unpack("!BBHHH", data[:8])
            if (kind, reply_ident, reply_seq) == (reply_type, ident, seq):
                return True
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("destination")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for the reply")
    args = parser.parse_args(argv)
    return 0 if ping(args.destination, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
