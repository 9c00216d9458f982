"""The lab's wire and workstation readers, on hand-made input (no root, no namespaces).

lab.announcements must recognise exactly what the agent sends as announcements
(hapacs.announce builds the frames) and leave out the solicited answers a host
sends anyway; lab.outage.slowest must find what a workstation waited at worst.
A test that counted every ARP frame, or none, would prove nothing about the
README's "four more times over two seconds".
"""

from __future__ import annotations

import ipaddress
import struct

from hapacs.announce import garp_frames, unsolicited_na
from lab.announcements import parse
from lab.outage import slowest

MAC = bytes.fromhex("020000000012")
OTHER_MAC = bytes.fromhex("0200000000c8")


def ipv6_frame(source_mac: bytes, icmp: bytes, destination: str = "ff02::1") -> bytes:
    ethernet = bytes.fromhex("333300000001") + source_mac + struct.pack("!H", 0x86DD)
    header = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 255,
                         ipaddress.IPv6Address("fe80::12").packed, ipaddress.IPv6Address(destination).packed)
    return ethernet + header + icmp


def test_the_agents_gratuitous_arp_request_and_reply_are_announcements():
    request, reply = garp_frames(MAC, ipaddress.IPv4Address("192.0.2.100"))
    assert parse(request) == ("arp-request", "02:00:00:00:00:12", "192.0.2.100")
    assert parse(reply) == ("arp-reply", "02:00:00:00:00:12", "192.0.2.100")


def test_an_arp_answer_to_someone_is_not_an_announcement():
    # The kernel's reply to the workstation's request: sender the VIP, target the workstation.
    answer = (b"\xff" * 6 + MAC + struct.pack("!H", 0x0806)
              + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, MAC, bytes([192, 0, 2, 100]),
                            OTHER_MAC, bytes([192, 0, 2, 200])))
    assert parse(answer) is None


def test_the_agents_unsolicited_na_is_an_announcement_and_a_solicited_one_is_not():
    vip = ipaddress.IPv6Address("2001:db8::100")
    na = unsolicited_na(MAC, vip)
    assert parse(ipv6_frame(MAC, na)) == ("na", "02:00:00:00:00:12", "2001:db8::100")
    solicited = na[:4] + struct.pack("!I", struct.unpack("!I", na[4:8])[0] | 0x40000000) + na[8:]
    assert parse(ipv6_frame(MAC, solicited, "2001:db8::200")) is None
    solicitation = bytes([135]) + na[1:]
    assert parse(ipv6_frame(MAC, solicitation)) is None


def test_other_frames_and_short_frames_are_ignored():
    assert parse(b"") is None and parse(b"\x00" * 13) is None
    ipv4 = b"\xff" * 6 + MAC + struct.pack("!H", 0x0800) + b"\x45" + b"\x00" * 40
    assert parse(ipv4) is None
    request, _ = garp_frames(MAC, ipaddress.IPv4Address("192.0.2.100"))
    assert parse(request[:41]) is None


def test_slowest_is_the_longest_attempt_started_in_the_window_answered_or_not():
    def rec(t, took, ok=True, kind="echo"):
        return {"t": t, "end": t + took, "kind": kind, "ok": ok, "ms": took * 1000, "err": ""}

    records = [rec(0, 5.0), rec(1, 0.02), rec(2, 1.1, kind="store"), rec(3, 0.9, ok=False), rec(4, 0.01)]
    assert slowest(records, since=0.5) == records[2]
    assert slowest(records, since=0.5, kind="echo") == records[3]
    assert slowest(records, since=0.5, until=2) == records[1]
    assert slowest(records, since=10) is None
