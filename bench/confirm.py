"""The fast confirming probe: how soon a first failure of a DICOM check is confirmed.

1. probe: one dicom-echo probe of a port nothing listens on (a dead PACS),
   plain and confirming (a plain TCP connect first), latency per run.
2. runner: storescp is killed under a running CheckRunner (interval 1 s,
   fall 2, timeout 0.5 s); per trial, the time from the end of the first
   failed probe to the start of the confirming one, from that first failure
   to "down", and from the kill to "down".

tests/test_checks_probes.py and tests/test_checks_runner.py assert these
with the README's figure plus a noise allowance; this script gives the
figures behind those bounds.

Run as root: .venv/bin/python bench/confirm.py [--trials 10] [--probes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import not_root  # noqa: E402

from hapacs.checks import CheckRunner, Verdict, run_probe   # noqa: E402
from hapacs.config import CheckConfig                       # noqa: E402
from lab import Lab, unique_prefix                          # noqa: E402
from lab.dicom import start_storescp                        # noqa: E402
from tests.checks_netns import in_netns                     # noqa: E402

SCP_PORT, CLOSED_PORT = 11112, 18081
QUIET = logging.getLogger("bench.confirm")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False
CHECK = CheckConfig(name="pacs-dicom", type="dicom-echo", interval_s=1.0, timeout_s=0.5, fall=2, rise=2,
                    weight=0, host="127.0.0.1", port=SCP_PORT, called_ae="PACS")


def probe_latencies(count: int) -> dict[str, list[float]]:
    dead = dataclasses.replace(CHECK, port=CLOSED_PORT)
    run_probe(dead)   # pynetdicom imported once, outside the figures
    return {kind: [run_probe(dead, confirming).latency_ms for _ in range(count)]
            for kind, confirming in (("plain", False), ("confirming", True))}


def runner_trial(lab) -> dict[str, float]:
    scp = start_storescp(lab, "a", port=SCP_PORT, aet="PACS")
    runs: list[tuple[float, float, bool, bool]] = []
    downs: list[float] = []

    def probe(check, confirming=False):
        started = time.monotonic()
        result = run_probe(check, confirming)
        runs.append((started, time.monotonic(), confirming, result.ok))
        return result

    def on_change(verdict, changes):
        downs.extend(change.at for change in changes if not change.up)

    async def scenario():
        loop = asyncio.get_running_loop()
        runner = CheckRunner((CHECK,), on_change, QUIET, probe=probe)
        runner.start()
        while runner.verdict != Verdict():
            await asyncio.sleep(0.01)
        await asyncio.sleep(CHECK.interval_s * (time.monotonic() % 1.0))   # kill at a random phase
        killed_at = loop.time()
        lab.kill(scp, signal.SIGKILL)
        while runner.verdict.fault is None:
            await asyncio.sleep(0.01)
        await runner.stop()
        return killed_at

    killed_at = in_netns(lab.ns("a"), lambda: asyncio.run(scenario()))
    scp.wait(5)
    (_, first_end, _, _), (second_start, _, _, _) = [r for r in runs if not r[3]][:2]
    return {"confirm_after_s": second_start - first_end, "down_after_first_s": downs[0] - first_end,
            "down_after_kill_s": downs[0] - killed_at}


def summary(values: list[float], unit: float, label: str) -> str:
    return (f"{label}: median {statistics.median(values) * unit:.2f}, min {min(values) * unit:.2f}, "
            f"max {max(values) * unit:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description="figures of the fast confirming probe")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--probes", type=int, default=50)
    args = parser.parse_args()
    if not_root("bench/confirm.py"):
        return 1
    with Lab(unique_prefix("bf"), hosts=("a",), workstation=False) as lab:
        latencies = in_netns(lab.ns("a"), probe_latencies, args.probes)
        print(f"dicom-echo probe of a dead PACS, {args.probes} runs each (ms)")
        for kind, values in latencies.items():
            print("  " + summary(values, 1.0, kind))
        rows = [runner_trial(lab) for _ in range(args.trials)]
    print(f"runner, interval {CHECK.interval_s} s, fall {CHECK.fall}: storescp killed, {args.trials} trials (ms)")
    for key in ("confirm_after_s", "down_after_first_s", "down_after_kill_s"):
        print("  " + summary([row[key] for row in rows], 1000.0, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
