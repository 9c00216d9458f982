"""Core figures: failover as a workstation sees it, and an idle agent's footprint.

1. Host loss, N trials: pacs-a (MASTER) loses power (switch port silent,
   agent and storescp killed). A workstation starts a C-ECHO to the VIP
   every 20 ms, whether or not earlier ones have ended (at most 50 in
   flight, each giving up after --probe-timeout); the outage is from the
   start of its last answered C-ECHO before the fault to the start of its
   first answered one after. Reported:
   median, p95, max, and the time to takeover.
2. Idle agent (no checks, no SNMP): CPU share of one core and RSS, over
   a measured window, at the default advert_interval of 0.1 s.

Run as root: .venv/bin/python bench/core.py [--trials 10] [--json FILE]
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

import psutil                                   # noqa: E402

from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402
from lab.dicom import start_storescp            # noqa: E402
from lab.outage import answered, load, outage   # noqa: E402
from lab.probe import start_probe               # noqa: E402

VIP = "192.0.2.100"
PROBE_OVERLAP = 50   # echoes start every 20 ms whether or not earlier ones ended (see lab/probe.py)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[index]


def host_loss_trial(number: int, interval: float, dead_after: int, probe_timeout: float) -> dict:
    with Lab(unique_prefix("bc")) as lab:
        pacs = {h: start_storescp(lab, lab.ns(h), port=104, aet="PACS") for h in ("a", "b")}
        cluster = AgentCluster(lab, advert_interval=interval, dead_after=dead_after)
        cluster.add("a", 150)
        cluster.add("b", 100)
        cluster.start_all()
        lab.wait_for(lambda: cluster.masters() == ["a"] and cluster.state("b") == "BACKUP", 10,
                     what="a MASTER")
        path = os.path.join(lab.tmpdir, "ws.jsonl")
        probe = start_probe(lab, path, VIP, port=104, called_ae="PACS", interval=0.02, duration=20,
                            timeout=probe_timeout, overlap=PROBE_OVERLAP)
        lab.wait_for(lambda: answered(path) >= 20, 10, what="probe running")
        lab.partition("a")
        fault_t = time.monotonic()   # the port is silent from here (nft takes ~10 ms to apply)
        cluster.kill("a", signal.SIGKILL)
        lab.stop(pacs["a"], timeout=1.0)
        lab.wait_for(lambda: answered(path, since=fault_t) >= 10, 10, what="workstation served again")
        lab.stop(probe)
        result = outage(load(path), fault_t)
        took = [t for t in cluster.transitions("b") if t["to"] == "MASTER"][-1]["monotonic"] - fault_t
        row = {"trial": number, "outage_s": result["outage_s"], "recovery_s": result["recovery_s"],
               "takeover_s": took, "failed_echoes": result["failures"]}
        print(f"  trial {number:2d}: outage {row['outage_s'] * 1000:6.1f} ms (served again "
              f"{row['recovery_s'] * 1000:6.1f} ms after the fault), takeover after {took * 1000:6.1f} ms, "
              f"failed C-ECHOs {row['failed_echoes']}", flush=True)
        return row


def idle_footprint(interval: float, window_s: float) -> dict:
    with Lab(unique_prefix("bi"), workstation=False) as lab:
        cluster = AgentCluster(lab, advert_interval=interval)
        cluster.add("a", 150)
        cluster.add("b", 100)
        cluster.start_all()
        lab.wait_for(lambda: cluster.masters() == ["a"] and cluster.state("b") == "BACKUP", 10,
                     what="cluster settled")
        figures = {}
        procs = {h: psutil.Process(cluster.procs[h].pid) for h in ("a", "b")}
        before = {h: p.cpu_times() for h, p in procs.items()}
        start = time.monotonic()
        time.sleep(window_s)   # the measurement window itself: nothing to wait for
        elapsed = time.monotonic() - start
        for host, proc in procs.items():
            after = proc.cpu_times()
            used = (after.user + after.system) - (before[host].user + before[host].system)
            figures[host] = {"cpu_percent_of_one_core": round(100 * used / elapsed, 2),
                             "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                             "threads": proc.num_threads(), "fds": proc.num_fds()}
        figures["window_s"] = round(elapsed, 1)
        return figures



def main() -> int:
    parser = argparse.ArgumentParser(description="hapacs core failover and footprint figures")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--advert-interval", type=float, default=0.1)
    parser.add_argument("--dead-after", type=int, default=3)
    parser.add_argument("--idle-window", type=float, default=30.0)
    parser.add_argument("--probe-timeout", type=float, default=1.0,
                        help="the workstation gives up a C-ECHO after this long; echoes overlap, so a stuck "
                             "one does not hold back the next")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/core.py: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    print(f"Host loss, {args.trials} trials, advert_interval {args.advert_interval} s, "
          f"dead_after {args.dead_after}:", flush=True)
    rows = [host_loss_trial(i + 1, args.advert_interval, args.dead_after, args.probe_timeout)
            for i in range(args.trials)]
    outages = [r["outage_s"] for r in rows]
    recoveries = [r["recovery_s"] for r in rows]
    summary = {"median_s": statistics.median(outages), "p95_s": percentile(outages, 0.95),
               "max_s": max(outages), "recovery_p95_s": percentile(recoveries, 0.95),
               "takeover_p95_s": percentile([r["takeover_s"] for r in rows], 0.95),
               "failed_echoes_total": sum(r["failed_echoes"] for r in rows)}
    print(f"  outage median {summary['median_s'] * 1000:.0f} ms, p95 {summary['p95_s'] * 1000:.0f} ms, "
          f"max {summary['max_s'] * 1000:.0f} ms; served again after the fault: p95 "
          f"{summary['recovery_p95_s'] * 1000:.0f} ms; takeover p95 {summary['takeover_p95_s'] * 1000:.0f} ms",
          flush=True)
    print(f"Idle agents for {args.idle_window:g} s:", flush=True)
    idle = idle_footprint(args.advert_interval, args.idle_window)
    for host in ("a", "b"):
        print(f"  pacs-{host}: {idle[host]['cpu_percent_of_one_core']}% of one core, "
              f"RSS {idle[host]['rss_mb']} MB, {idle[host]['threads']} threads", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"host_loss": {"trials": rows, **summary}, "idle": idle,
                       "advert_interval_s": args.advert_interval, "dead_after": args.dead_after}, handle,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
