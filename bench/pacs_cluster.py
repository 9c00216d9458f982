"""How long the lab's PACS cluster takes to start, and what one DICOM operation costs on it.

Per trial, in a fresh lab: start the private PostgreSQL (initdb, start,
CREATE DATABASE), then the Orthanc members on it (ready = C-ECHO and REST
answer); then, from the workstation with lab.pacsclient (each a new Python
process, ~0.3 s of it is starting Python and importing pynetdicom), a C-STORE
of one study to member a, a C-FIND and a C-MOVE of it on member b.

Run as root: .venv/bin/python bench/pacs_cluster.py [--trials 5] [--members 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import not_root  # noqa: E402

from lab import Lab, unique_prefix  # noqa: E402
from lab.dicom import start_storescp  # noqa: E402
from lab.pacs import (  # noqa: E402
    PACS_AET,
    WORKSTATION_AET,
    WORKSTATION_STORE_PORT,
    scu,
    start_orthanc_cluster,
    stop_orthanc_cluster,
)
from lab.postgres import start_postgres  # noqa: E402

MEMBER_NAMES = ("a", "b", "c")


def timed(action):
    start = time.monotonic()
    result = action()
    return result, time.monotonic() - start


def trial(members: int) -> dict:
    hosts = MEMBER_NAMES[:members]
    with Lab(unique_prefix("pb"), hosts=(*hosts, "db")) as lab:
        database, postgres_s = timed(lambda: start_postgres(lab, "db"))
        cluster, orthancs_s = timed(lambda: start_orthanc_cluster(lab, hosts, database))
        try:
            start_storescp(lab, "ws", port=WORKSTATION_STORE_PORT, aet=WORKSTATION_AET)
            first, last = (lab.hosts[h].ipv4 for h in (hosts[0], hosts[-1]))
            stored, store_s = timed(lambda: scu(lab, "ws", first, 104, PACS_AET, "store"))
            found, find_s = timed(lambda: scu(lab, "ws", last, 104, PACS_AET, "find", "--study", stored["study"]))
            moved, move_s = timed(lambda: scu(lab, "ws", last, 104, PACS_AET, "move", "--study",
                                              stored["study"], "--destination", WORKSTATION_AET))
            if not (stored["ok"] and found["studies"] == [stored["study"]] and moved["completed"] == 1):
                raise RuntimeError(f"the cluster did not share the study: {stored} {found} {moved}")
        finally:
            stop_orthanc_cluster(lab, cluster)
    return {"postgres_s": postgres_s, "orthancs_s": orthancs_s, "store_s": store_s, "find_s": find_s,
            "move_s": move_s}


def main() -> int:
    parser = argparse.ArgumentParser(description="start-up time of the lab's PACS cluster")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--members", type=int, default=2, choices=(1, 2, 3))
    args = parser.parse_args()
    if not_root("bench/pacs_cluster.py"):
        return 1
    rows = []
    for number in range(1, args.trials + 1):
        row = trial(args.members)
        rows.append(row)
        print(f"  trial {number}: " + ", ".join(f"{key[:-2]} {value * 1000:5.0f} ms" for key, value in row.items()))
    print(f"{args.members} Orthanc members, {args.trials} trials, median (min-max):")
    for key in rows[0]:
        values = [row[key] for row in rows]
        print(f"  {key[:-2]:9s} {statistics.median(values) * 1000:5.0f} ms "
              f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
