"""Health-check figures: a PACS that dies or hangs behind a live host.

1. killed: storescp on the MASTER is killed; the time until the workstation
   reaches the VIP on the BACKUP (first answered C-ECHO), per trial. The
   target is interval x fall + timeout + 0.5 s.
2. hung: storescp on the MASTER gets SIGSTOP; the same time, and how late
   the MASTER's heartbeat timer ran while its check was stuck (target: at
   most 20 ms late).

Run as root: .venv/bin/python bench/checks.py [--trials 10] [--interval 0.2 --fall 2 --timeout 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import not_root  # noqa: E402

from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402
from lab.dicom import start_storescp            # noqa: E402
from lab.outage import answered, load, outage   # noqa: E402
from lab.probe import start_probe               # noqa: E402

from core import percentile                     # noqa: E402

VIP = "192.0.2.100"


def trial(kind: str, number: int, check: dict, realtime: bool) -> dict:
    with Lab(unique_prefix("bk")) as lab:
        scp = {h: start_storescp(lab, lab.ns(h), port=104, aet="PACS") for h in ("a", "b")}
        cluster = AgentCluster(lab, checks={"a": [check], "b": [check]}, realtime=realtime)
        cluster.add("a", 150)
        cluster.add("b", 100)
        cluster.start_all()
        lab.wait_for(lambda: cluster.masters() == ["a"] and cluster.state("b") == "BACKUP", 15, what="a MASTER")
        path = os.path.join(lab.tmpdir, "ws.jsonl")
        probe = start_probe(lab, path, VIP, port=104, called_ae="PACS", interval=0.02, duration=30, timeout=0.2)
        lab.wait_for(lambda: answered(path) >= 20, 10, what="probe running")
        fault_t = time.monotonic()
        if kind == "killed":
            scp["a"].send_signal(signal.SIGKILL)
        else:
            scp["a"].send_signal(signal.SIGSTOP)
        lab.wait_for(lambda: answered(path, since=fault_t) >= 10, 10, what="served by b")
        # The MASTER's timer (heartbeats included) from the fault until it was served elsewhere.
        late_during = max([ms for t, ms in cluster.status("a")["timer_late_ms"]["recent"] if t >= fault_t],
                          default=0.0)
        if kind == "hung":
            scp["a"].send_signal(signal.SIGCONT)
        lab.stop(probe)
        result = outage(load(path), fault_t)
        fault = [t for t in cluster.transitions("a") if t["to"] == "FAULT"]
        row = {"trial": number, "kind": kind, "served_s": result["recovery_s"], "outage_s": result["outage_s"],
               "fault_s": fault[-1]["monotonic"] - fault_t if fault else None,
               "timer_late_ms_max": late_during}
        print(f"  {kind} {number:2d}: served by pacs-b after {row['served_s'] * 1000:6.0f} ms "
              f"(pacs-a FAULT after {row['fault_s'] * 1000:6.0f} ms), pacs-a timer meanwhile "
              f"{_late(row['timer_late_ms_max'])}", flush=True)
        return row


def _late(ms: float) -> str:
    # The agent keeps only firings more than 5 ms late (hapacs.lateness.LatenessMeter).
    return f"{ms:.1f} ms late" if ms else "never more than 5 ms late"



def main() -> int:
    parser = argparse.ArgumentParser(description="hapacs health-check failover figures")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--fall", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--json")
    parser.add_argument("--no-realtime", action="store_true",
                        help="run the agents with normal scheduling (default: SCHED_RR, as systemd/hapacs.service)")
    args = parser.parse_args()
    if not_root("bench/checks.py"):
        return 1
    check = {"name": "pacs-dicom", "type": "dicom-echo", "port": 104, "called_ae": "PACS",
             "interval": args.interval, "timeout": args.timeout, "fall": args.fall, "rise": 2}
    bound = args.interval * args.fall + args.timeout + 0.5
    print(f"dicom-echo check: interval {args.interval} s, fall {args.fall}, timeout {args.timeout} s "
          f"(target: served within {bound:.2f} s)", flush=True)
    figures = {}
    for kind in ("killed", "hung"):
        rows = [trial(kind, i + 1, check, not args.no_realtime) for i in range(args.trials)]
        served = [r["served_s"] for r in rows]
        figures[kind] = {"rows": rows, "median_s": statistics.median(served), "p95_s": percentile(served, 0.95),
                         "max_s": max(served), "timer_late_ms_max": max(r["timer_late_ms_max"] for r in rows)}
        print(f"  {kind}: served by the BACKUP after median {figures[kind]['median_s'] * 1000:.0f} ms, "
              f"p95 {figures[kind]['p95_s'] * 1000:.0f} ms, max {figures[kind]['max_s'] * 1000:.0f} ms; "
              f"heartbeat timer {_late(figures[kind]['timer_late_ms_max'])}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"check": check, "bound_s": bound, **figures}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
