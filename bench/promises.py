"""The README's timing promises about a takeover, seen on the wire.

Per trial, a two-node cluster at the lab timers (advert 0.1 s, dead_after 3,
VIPs 192.0.2.100/24 and 2001:db8::100/64); the MASTER's agent is killed with
kill -9, and:

- lease: the time from the kill until the dead agent's IPv4 VIP is gone from
  its host (polled every 20 ms with `ip` in its namespace). README: "the
  standby ... is the only host answering for the VIP about two seconds later".
- announcements, counted on the workstation's wire (lab.announcements, kernel
  receive stamps): per kind (gratuitous ARP request, reply, unsolicited NA)
  how many came from the new MASTER, the first one's delay after its
  transition to MASTER, and the span from the first to the last. README: "at
  once ... repeated four more times over two seconds".

Run as root: .venv/bin/python bench/promises.py [--trials 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import not_root, write_json  # noqa: E402

from lab import Lab, unique_prefix                      # noqa: E402
from lab.announcements import AnnouncementWatch         # noqa: E402
from lab.cluster import AgentCluster                    # noqa: E402

VIP, VIP6 = "192.0.2.100", "2001:db8::100"
KINDS = ((VIP, "arp-request"), (VIP, "arp-reply"), (VIP6, "na"))
QUIET_AFTER_S = 1.5    # how long after the expected last announcement to keep counting


def mac_of(lab, host: str) -> str:
    node = lab.node(host)
    return json.loads(lab.exec(host, ["ip", "-j", "link", "show", node.ifname]).stdout)[0]["address"]


def trial(number: int) -> dict:
    with Lab(unique_prefix("pr")) as lab:
        cluster = AgentCluster(lab, vips=(f"{VIP}/24", f"{VIP6}/64"))
        cluster.add("a", 150)
        cluster.add("b", 100)
        cluster.start_all()
        lab.wait_for(lambda: cluster.masters() == ["a"] and cluster.state("b") == "BACKUP"
                     and lab.holders(VIP) == ["a"], 15, what="a MASTER")
        mac_b = mac_of(lab, "b")
        with AnnouncementWatch(lab, "ws") as watch, ThreadPoolExecutor(1) as pool:
            killed = time.monotonic()
            cluster.kill("a", signal.SIGKILL)
            expired = pool.submit(lab.wait_for, lambda: f"{VIP}/24" not in lab.addresses("a") and time.monotonic(),
                                  10, 0.02, "a's lease expired")
            lab.wait_for(lambda: cluster.state("b") == "MASTER", 5, what="b MASTER")
            became = max(t["monotonic"] for t in cluster.transitions("b") if t["to"] == "MASTER")
            lab.wait_for(lambda: time.monotonic() > became + 2.0 + QUIET_AFTER_S, 10, what="quiet")
            lease_s = expired.result() - killed
        row = {"trial": number, "takeover_s": became - killed, "lease_expired_after_kill_s": lease_s}
        for address, kind in KINDS:
            found = watch.seen(mac_b, address, kind)
            row[kind] = {"count": len(found),
                         "first_after_master_s": found[0].at - became if found else None,
                         "span_s": found[-1].at - found[0].at if found else None,
                         "offsets_s": [round(a.at - found[0].at, 4) for a in found]}
        print(f"  trial {number}: lease gone {lease_s:.2f} s after the kill; "
              + "; ".join(f"{kind} x{row[kind]['count']}, first +{row[kind]['first_after_master_s'] * 1000:.1f} ms, "
                          f"span {row[kind]['span_s']:.3f} s" for _, kind in KINDS if row[kind]["count"]),
              flush=True)
        return row


def main() -> int:
    parser = argparse.ArgumentParser(description="hapacs takeover promises on the wire")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not_root("bench/promises.py"):
        return 1
    rows = [trial(i + 1) for i in range(args.trials)]
    leases = [r["lease_expired_after_kill_s"] for r in rows]
    print(f"lease gone after kill -9: median {statistics.median(leases):.2f} s, min {min(leases):.2f} s, "
          f"max {max(leases):.2f} s ({len(rows)} trials)")
    for _, kind in KINDS:
        counts = sorted({r[kind]["count"] for r in rows})
        firsts = [r[kind]["first_after_master_s"] for r in rows if r[kind]["count"]]
        spans = [r[kind]["span_s"] for r in rows if r[kind]["count"]]
        print(f"{kind}: counts {counts}; first after the transition to MASTER: median "
              f"{statistics.median(firsts) * 1000:.1f} ms, max {max(firsts) * 1000:.1f} ms; span median "
              f"{statistics.median(spans):.3f} s, min {min(spans):.3f} s, max {max(spans):.3f} s")
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
