"""Planned moves: release, takeover, agent restart on the MASTER.

A workstation starts a C-ECHO every 20 ms (echoes overlap, 3 s client
timeout) and runs a C-STORE loop, against storescp serving associations
concurrently. Per move: failed C-ECHOs and C-STOREs (target: zero), the
time from the end of the old MASTER's drain to the new MASTER's takeover
(target: under 0.3 s), and the slowest answer of each kind from the command
on (a held SYN is sent again after 1 s: target about 1 s, never a second
retransmission, 2 s after the first SYN on Linux 6.5 and later).

Run as root: .venv/bin/python bench/operations.py [--trials 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import not_root, write_json  # noqa: E402

from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402
from lab.dicom import start_storescp            # noqa: E402
from lab.outage import load, slowest            # noqa: E402
from lab.probe import start_probe               # noqa: E402

VIP = "192.0.2.100"
ECHO = {"name": "pacs-dicom", "type": "dicom-echo", "port": 104, "called_ae": "PACS"}


def took_over_at(cluster, host: str) -> float:
    return [t for t in cluster.transitions(host) if t["to"] == "MASTER"][-1]["monotonic"]


def trial(kind: str, number: int) -> dict:
    with Lab(unique_prefix("bo")) as lab:
        for host in ("a", "b"):
            start_storescp(lab, lab.ns(host), port=104, aet="PACS", fork=True)
        cluster = AgentCluster(lab, checks={"a": [ECHO], "b": [ECHO]}, preempt_delay=1.0)
        cluster.add("a", 150)
        cluster.add("b", 100)
        cluster.start_all()
        lab.wait_for(lambda: cluster.masters() == ["a"] and cluster.state("b") == "BACKUP", 20, what="a MASTER")
        path = os.path.join(lab.tmpdir, "ws.jsonl")
        probe = start_probe(lab, path, VIP, port=104, called_ae="PACS", interval=0.02, duration=60,
                            store=True, timeout=3.0, overlap=50)

        def served(since: float) -> bool:
            records = load(path) if os.path.exists(path) else []
            return (sum(1 for r in records if r["ok"] and r["kind"] == "echo" and r["t"] > since) >= 20
                    and sum(1 for r in records if r["ok"] and r["kind"] == "store" and r["t"] > since) >= 3)

        lab.wait_for(lambda: served(0.0), 20, what="workstation served")
        commanded = time.monotonic()
        moves = []
        if kind == "release":
            assert cluster.cli("a", "release").returncode == 0
            lab.wait_for(lambda: cluster.masters() == ["b"], 10, what="b MASTER")
            moves.append(took_over_at(cluster, "b") - cluster.status("a")["last_drain"]["ended_monotonic"])
        elif kind == "takeover":
            assert cluster.cli("b", "takeover").returncode == 0
            lab.wait_for(lambda: cluster.masters() == ["b"], 40, what="b MASTER")
            moves.append(took_over_at(cluster, "b") - cluster.status("a")["last_drain"]["ended_monotonic"])
        else:   # restart: SIGTERM hands over (a's status is gone with it), start again, preempt back
            cluster.kill("a", signal.SIGTERM)
            lab.wait_for(lambda: cluster.state("b") == "MASTER", 10, what="b MASTER")
            since = time.monotonic()
            lab.wait_for(lambda: served(since), 20, what="served by b")
            cluster.start("a")
            lab.wait_for(lambda: cluster.masters() == ["a"], 30, what="a MASTER again")
            moves.append(took_over_at(cluster, "a") - cluster.status("b")["last_drain"]["ended_monotonic"])
        since = time.monotonic()
        lab.wait_for(lambda: served(since), 20, what="served after the move")
        lab.stop(probe, timeout=5)
        records = load(path)
        row = {"kind": kind, "trial": number, "move_after_drain_s": moves[-1],
               "echoes": sum(1 for r in records if r["kind"] == "echo"),
               "stores": sum(1 for r in records if r["kind"] == "store"),
               "failed_echoes": sum(1 for r in records if r["kind"] == "echo" and not r["ok"]),
               "failed_stores": sum(1 for r in records if r["kind"] == "store" and not r["ok"]),
               "holders": lab.holders(VIP)}
        for what in ("echo", "store"):
            worst = slowest(records, commanded, kind=what)
            row[f"slowest_{what}_s"] = worst["end"] - worst["t"] if worst else None
        print(f"  {kind:8s} {number}: VIP moved {row['move_after_drain_s'] * 1000:5.1f} ms after the drain; "
              f"{row['failed_echoes']} of {row['echoes']} echoes and {row['failed_stores']} of {row['stores']} "
              f"stores failed; slowest echo {row['slowest_echo_s']:.2f} s, store {row['slowest_store_s']:.2f} s; "
              f"holders {row['holders']}", flush=True)
        return row


def main() -> int:
    parser = argparse.ArgumentParser(description="hapacs planned-move figures")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not_root("bench/operations.py"):
        return 1
    results = {}
    for kind in ("release", "takeover", "restart"):
        rows = [trial(kind, i + 1) for i in range(args.trials)]
        moves = [r["move_after_drain_s"] for r in rows]
        results[kind] = {"rows": rows, "move_median_ms": round(statistics.median(moves) * 1000, 1),
                         "move_max_ms": round(max(moves) * 1000, 1),
                         "failed_echoes": sum(r["failed_echoes"] for r in rows),
                         "failed_stores": sum(r["failed_stores"] for r in rows),
                         "slowest_echo_s": max(r["slowest_echo_s"] for r in rows),
                         "slowest_store_s": max(r["slowest_store_s"] for r in rows)}
        print(f"{kind}: VIP moved after the drain in median {results[kind]['move_median_ms']} ms, max "
              f"{results[kind]['move_max_ms']} ms; failures: {results[kind]['failed_echoes']} echoes, "
              f"{results[kind]['failed_stores']} stores; slowest answer: echo "
              f"{results[kind]['slowest_echo_s']:.2f} s, store {results[kind]['slowest_store_s']:.2f} s", flush=True)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
