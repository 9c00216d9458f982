"""SNMP figures: how long a full walk takes, and what a burst of GETs does to heartbeats.

Two agents with SNMP in the lab; the workstation is the NMS.
1. Full walk of the MASTER's tree (HAPACS-MIB and VRRPV3-MIB) with net-snmp's
   snmpwalk and snmpbulkwalk, v2c and v3 authPriv (sha256/aes128), N times.
2. A burst of 1000 GETs sent at once (raw UDP, as fast as the socket takes
   them) at the MASTER: how many answered, the MASTER's heartbeat timer
   lateness, heartbeats its peer missed, and transitions (target: none).
3. A burst of 3000 random 100-byte datagrams at the MASTER's SNMP port (a
   scanner, a hostile host): how long until all are counted in
   `bad_requests.snmp`, the timer lateness, heartbeats, transitions, and how
   many log lines it cost (target: a few, not one per datagram).

Run as root: .venv/bin/python bench/snmp.py [--walks 10] [--burst 1000] [--garbage 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import not_root, write_json  # noqa: E402

from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402
from tests.snmp_helpers import MIB_DIRS, ROOT      # noqa: E402

SNMP = {"listen": ["0.0.0.0:161"], "community": "public",
        "users": [{"name": "nms", "auth_protocol": "sha256", "auth_key": "authpass123",
                   "priv_protocol": "aes128", "priv_key": "privpass123"}]}
V3 = ["-v3", "-l", "authPriv", "-u", "nms", "-a", "SHA-256", "-A", "authpass123", "-x", "AES", "-X", "privpass123"]
MIBS = ["-m", "HAPACS-MIB:VRRPV3-MIB", "-M", MIB_DIRS]
BURST_SCRIPT = r"""
import socket, sys, time
sys.path.insert(0, sys.argv[3])
from tests.snmp_helpers import raw_v2c_get, response_request_id
count, target = int(sys.argv[1]), (sys.argv[2], 161)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
oid = (1, 3, 6, 1, 4, 1, 32473, 1, 1, 2, 0)
start = time.monotonic()
for i in range(count):
    s.sendto(raw_v2c_get(i + 1, oid), target)
sent = time.monotonic()
s.settimeout(2.0)
seen = set()
try:
    while len(seen) < count:
        seen.add(response_request_id(s.recv(65536)))
except socket.timeout:
    pass
print(len(seen), round(sent - start, 4), round(time.monotonic() - start, 4))
"""
GARBAGE_SCRIPT = r"""
import random, socket, sys, time
count, target = int(sys.argv[1]), (sys.argv[2], 161)
rng = random.Random(161)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
for i in range(count):
    s.sendto(rng.randbytes(100), target)
print(round(time.monotonic() - start, 4))
"""


def walk_times(lab, tool: str, auth: list[str], walks: int) -> list[float]:
    env_dir = lab.mkdtemp("snmp")
    times = []
    for _ in range(walks):
        started = time.monotonic()
        result = lab.exec("ws", ["env", f"SNMP_PERSISTENT_DIR={env_dir}", tool, *auth, *MIBS, "-t", "2",
                                 "-r", "0", "192.0.2.11", ".1.3.6.1"], timeout=30)
        times.append(time.monotonic() - started)
        assert result.returncode == 0, result.stderr
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description="hapacs SNMP figures")
    parser.add_argument("--walks", type=int, default=10)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--garbage", type=int, default=3000)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not_root("bench/snmp.py"):
        return 1
    figures: dict = {}
    with Lab(unique_prefix("bs")) as lab:
        cluster = AgentCluster(lab)
        cluster.add("a", 150, snmp=SNMP)
        cluster.add("b", 100, snmp=SNMP)
        cluster.start_all()
        lab.wait_for(lambda: cluster.masters() == ["a"] and cluster.state("b") == "BACKUP", 15, what="a MASTER")
        objects = lab.exec("ws", ["snmpwalk", "-v2c", "-c", "public", *MIBS, "192.0.2.11",
                                  ".1.3.6.1"]).stdout.count("\n")
        print(f"Full walk of the agent (system, SNMP engine, VRRPV3-MIB, HAPACS-MIB: {objects} objects), {args.walks} times each "
              "(the time includes starting the net-snmp process):", flush=True)
        for tool, label, auth in (("snmpwalk", "v2c", ["-v2c", "-c", "public"]), ("snmpbulkwalk", "v2c",
                                  ["-v2c", "-c", "public"]), ("snmpwalk", "v3", V3), ("snmpbulkwalk", "v3", V3)):
            times = walk_times(lab, tool, auth, args.walks)
            key = f"{tool} {label}"
            figures[key] = {"median_ms": round(statistics.median(times) * 1000, 1),
                            "max_ms": round(max(times) * 1000, 1)}
            print(f"  {key:18s} median {figures[key]['median_ms']:6.1f} ms, max {figures[key]['max_ms']:6.1f} ms",
                  flush=True)

        before_a, before_b = cluster.status("a"), cluster.status("b")
        started = time.monotonic()
        out = lab.exec("ws", [sys.executable, "-c", BURST_SCRIPT, str(args.burst), "192.0.2.11", str(ROOT)],
                       timeout=60).stdout.split()
        lab.wait_for(lambda: time.monotonic() - started > 3, 5, what="three more seconds of heartbeats")
        after_a, after_b = cluster.status("a"), cluster.status("b")
        window = time.monotonic() - started
        expected = window / 0.1
        received = after_b["counters"]["adverts_received"] - before_b["counters"]["adverts_received"]
        burst = {"sent": args.burst, "answered": int(out[0]), "send_s": float(out[1]), "all_answered_s": float(out[2]),
                 "timer_late_ms_max_during": after_a["timer_late_ms"]["last_minute"],
                 "heartbeats_expected_at_b": round(expected), "heartbeats_received_at_b": received,
                 "transitions": (len(after_a["transitions"]) - len(before_a["transitions"]))
                 + (len(after_b["transitions"]) - len(before_b["transitions"])),
                 "peers_lost": after_b["counters"]["peers_lost"] - before_b["counters"]["peers_lost"]}
        figures["burst"] = burst
        print(f"Burst of {args.burst} GETs at the MASTER: {burst['answered']} answered in "
              f"{burst['all_answered_s']:.2f} s; MASTER's timer at most {burst['timer_late_ms_max_during']:.1f} ms "
              f"late (last minute); pacs-b received {received} of ~{round(expected)} heartbeats; "
              f"{burst['transitions']} transitions, {burst['peers_lost']} peers lost", flush=True)

        with open(cluster.log_path("a")) as handle:
            lines_before = len(handle.readlines())
        before_a, before_b = cluster.status("a"), cluster.status("b")
        counted_before = before_a["bad_requests"]["snmp"]
        started = time.monotonic()
        send_s = float(lab.exec("ws", [sys.executable, "-c", GARBAGE_SCRIPT, str(args.garbage), "192.0.2.11"],
                                timeout=60).stdout)
        lab.wait_for(lambda: cluster.status("a")["bad_requests"]["snmp"] - counted_before >= args.garbage, 30,
                     interval=0.005, what="every garbage datagram counted")
        counted_s = time.monotonic() - started
        lab.wait_for(lambda: time.monotonic() - started > 3, 5, what="three more seconds of heartbeats")
        after_a, after_b = cluster.status("a"), cluster.status("b")
        window = time.monotonic() - started
        with open(cluster.log_path("a")) as handle:
            lines_added = len(handle.readlines()) - lines_before
        received = after_b["counters"]["adverts_received"] - before_b["counters"]["adverts_received"]
        garbage = {"sent": args.garbage, "send_s": send_s, "all_counted_s": round(counted_s, 3),
                   "counted": after_a["bad_requests"]["snmp"] - counted_before, "log_lines": lines_added,
                   "timer_late_ms_max_during": after_a["timer_late_ms"]["last_minute"],
                   "heartbeats_expected_at_b": round(window / 0.1), "heartbeats_received_at_b": received,
                   "transitions": (len(after_a["transitions"]) - len(before_a["transitions"]))
                   + (len(after_b["transitions"]) - len(before_b["transitions"]))}
        figures["garbage"] = garbage
        print(f"Burst of {args.garbage} random 100-byte datagrams at the MASTER's SNMP port: {garbage['counted']} "
              f"counted as bad requests within {garbage['all_counted_s']:.2f} s (sent in {send_s:.2f} s); "
              f"{lines_added} log line(s); MASTER's timer at most {garbage['timer_late_ms_max_during']:.1f} ms late "
              f"(last minute); pacs-b received {received} of ~{round(window / 0.1)} heartbeats; "
              f"{garbage['transitions']} transitions", flush=True)
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
