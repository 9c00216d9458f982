"""A burst of SNMPv2c GETs from one UDP socket: the load for bench/failover's footprint figures.

Run inside the workstation namespace:

    python3 bench/snmp_burst.py --host 192.0.2.11 --oid 1.3.6.1.4.1.32473.1.1.2.0 --count 1000

It keeps at most --window requests outstanding, gives each --timeout seconds,
never retries, stops at --deadline, and prints one JSON line: sent,
answered, seconds. The GET is encoded by hand (BER, RFC 3416), so the client
costs next to nothing and loads no SNMP library.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import time


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _length(len(body)) + body


def _integer(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def _oid(text: str) -> bytes:
    arcs = [int(part) for part in text.strip(".").split(".")]
    body = bytes([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, body)


def get_request(community: str, request_id: int, oid: str) -> bytes:
    varbind = _tlv(0x30, _oid(oid) + b"\x05\x00")                  # value NULL
    pdu = _tlv(0xA0, _integer(request_id) + _integer(0) + _integer(0) + _tlv(0x30, varbind))
    return _tlv(0x30, _integer(1) + _tlv(0x04, community.encode()) + pdu)   # version 1 = v2c


def response_id(datagram: bytes) -> int | None:
    """The request-id of a GetResponse, or None if it does not parse as one."""
    def read(offset):
        tag, length = datagram[offset], datagram[offset + 1]
        offset += 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(datagram[offset:offset + count], "big")
            offset += count
        return tag, offset, length

    try:
        _, offset, _ = read(0)                      # message SEQUENCE
        _, offset, length = read(offset)            # version
        offset += length
        _, offset, length = read(offset)            # community
        offset += length
        tag, offset, _ = read(offset)               # PDU
        if tag != 0xA2:
            return None
        _, offset, length = read(offset)            # request-id
        return int.from_bytes(datagram[offset:offset + length], "big", signed=True)
    except IndexError:
        return None


def burst(host: str, port: int, community: str, oid: str, count: int, window: int, timeout_s: float,
          deadline_s: float) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    outstanding: dict[int, float] = {}
    sent = answered = 0
    start = time.monotonic()
    end = start + deadline_s
    while (sent < count or outstanding) and time.monotonic() < end:
        while sent < count and len(outstanding) < window:
            sent += 1
            sock.sendto(get_request(community, sent, oid), (host, port))
            outstanding[sent] = time.monotonic() + timeout_s
        ready, _, _ = select.select([sock], [], [], 0.05)
        while ready:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                break
            if outstanding.pop(response_id(data), None) is not None:
                answered += 1
        now = time.monotonic()
        for request, expires in list(outstanding.items()):
            if expires < now:
                del outstanding[request]
    sock.close()
    return {"sent": sent, "answered": answered, "seconds": round(time.monotonic() - start, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description="a burst of SNMPv2c GETs")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=161)
    parser.add_argument("--community", default="public")
    parser.add_argument("--oid", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=60.0)
    args = parser.parse_args()
    print(json.dumps(burst(args.host, args.port, args.community, args.oid, min(args.count, 100000),
                           args.window, args.timeout, args.deadline)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
