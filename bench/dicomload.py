"""A fast DICOM load client for bench/throughput.py, run inside the workstation's namespace.

    python bench/dicomload.py echo HOST[,HOST...] PORT CALLED_AE --count N --seconds S [--parallel P]

opens sequential associations, each A-ASSOCIATE-RQ (Verification), one C-ECHO, A-RELEASE,
over plain blocking sockets (pynetdicom would measure its own Python, not the path), and
prints one JSON object: associations done, failed, seconds, per second. It stops after N
associations or S seconds, whichever comes first; every socket wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hapacs.haproxy import A_RELEASE_RP, A_RELEASE_RQ, VERIFICATION, associate_rq   # noqa: E402

TIMEOUT_S = 2.0


def _element(group: int, element: int, value: bytes) -> bytes:
    """One data element in Implicit VR Little Endian (PS3.5 7.1.3)."""
    return struct.pack("<HHI", group, element, len(value)) + value


def echo_rq(message_id: int) -> bytes:
    """A P-DATA-TF PDU carrying a C-ECHO-RQ command set on presentation context 1 (PS3.7 9.3.5)."""
    uid = VERIFICATION.encode() + (b"\0" if len(VERIFICATION) % 2 else b"")
    body = (_element(0x0000, 0x0002, uid) + _element(0x0000, 0x0100, struct.pack("<H", 0x0030))
            + _element(0x0000, 0x0110, struct.pack("<H", message_id))
            + _element(0x0000, 0x0800, struct.pack("<H", 0x0101)))       # no data set
    command = _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body
    pdv = struct.pack("!IBB", len(command) + 2, 1, 0x03) + command         # command, last fragment
    return struct.pack("!BxI", 0x04, len(pdv)) + pdv


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = _read_exactly(sock, 6)
    kind, length = struct.unpack("!BxI", head)
    return kind, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by the peer")
        data += chunk
    return data


def one_echo(host: str, port: int, request: bytes, message_id: int) -> None:
    """One association with one C-ECHO; raises on anything but success."""
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        kind, _ = _read_pdu(sock)
        if kind != 0x02:
            raise ConnectionError(f"association not accepted (PDU type {kind:#x})")
        sock.sendall(echo_rq(message_id))
        kind, body = _read_pdu(sock)
        # Status (0000,0900) = 0x0000: success.
        if kind != 0x04 or b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00" not in body:
            raise ConnectionError("no successful C-ECHO-RSP")
        sock.sendall(A_RELEASE_RQ)
        if _read_exactly(sock, len(A_RELEASE_RP)) != A_RELEASE_RP:
            raise ConnectionError("no A-RELEASE-RP")


def echo_loop(host: str, port: int, called_ae: str, count: int, seconds: float) -> dict:
    """`host` may name several, comma-separated: the associations go to each in turn."""
    hosts = host.split(",")
    request = associate_rq(called_ae, "BENCH")
    done = failed = 0
    started, cpu_started = time.monotonic(), time.process_time()
    while done + failed < count and time.monotonic() - started < seconds:
        try:
            one_echo(hosts[(done + failed) % len(hosts)], port, request, done + failed + 1)
            done += 1
        except OSError:
            failed += 1
    elapsed = time.monotonic() - started
    return {"associations": done, "failed": failed, "seconds": round(elapsed, 3),
            "per_second": round(done / elapsed, 1) if elapsed else 0.0,
            "cpu_s": round(time.process_time() - cpu_started, 3)}     # this client's own user + system time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("operation", choices=["echo"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("called_ae")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--parallel", type=int, default=1, help="this many clients at once (threads)")
    args = parser.parse_args()
    count, seconds = min(args.count, 100_000), min(args.seconds, 60.0)
    if args.parallel <= 1:
        print(json.dumps(echo_loop(args.host, args.port, args.called_ae, count, seconds)))
        return
    cpu_started = time.process_time()
    with ThreadPoolExecutor(min(args.parallel, 64)) as pool:
        done = list(pool.map(lambda _: echo_loop(args.host, args.port, args.called_ae, count, seconds),
                             range(min(args.parallel, 64))))
    associations, elapsed = sum(d["associations"] for d in done), max(d["seconds"] for d in done)
    print(json.dumps({"associations": associations, "failed": sum(d["failed"] for d in done),
                      "seconds": elapsed, "clients": len(done),
                      "per_second": round(associations / elapsed, 1) if elapsed else 0.0,
                      "cpu_s": round(time.process_time() - cpu_started, 3)}))   # all the threads


if __name__ == "__main__":
    main()
