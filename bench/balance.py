"""Load-balancing figures (balance: mode proxy, HAProxy on both nodes, forking storescp members).

1. spread: N associations held open through the VIP; how they lie on the two PACS.
2. killed: pacs-b's PACS (listener and children) is killed while the workstation runs
   C-ECHOes through the VIP back to back; per trial, the time until pacs-a's status
   shows pacs-b down, and how many of the C-ECHOes in the 3 s after the kill failed.
3. drain: `hapacs drain on` on pacs-b; the time until pacs-a's status shows it draining
   (the status reads HAProxy every 0.5 s: the figure includes up to that much).
4. slow (--slow-ms, before the kills): pacs-b's PACS replaced by one that answers each C-ECHO
   --slow-ms late (pynetdicom, SLOW_SCP below; this kernel has no netem to delay its card), then
   --parallel clients open associations back to back through the VIP for 4 s (each
   A-ASSOCIATE, C-ECHO, A-RELEASE): how many each member got (HAProxy's totals), against the
   same load with both storescp.

Run as root: .venv/bin/python bench/balance.py [--trials 5] [--held 32] [--check-interval 2] [--slow-ms 20]
    [--parallel 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import load_average  # noqa: E402

from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402
from lab.dicom import HOLD_ASSOCIATIONS_SCRIPT as HOLDER, echo, kill_with_children, start_storescp  # noqa: E402

VIP = "192.0.2.100"
PORT = 11112


def member_states(cluster) -> dict[str, tuple[str, int]]:
    status = cluster.status("a") or {}
    services = status.get("balance", {}).get("services", [])
    return {m["name"]: (m["state"], m["associations"]) for m in services[0]["members"]} if services else {}


LOAD = str(Path(__file__).resolve().parent / "dicomload.py")


def totals(cluster) -> dict[str, int]:
    services = (cluster.status("a") or {}).get("balance", {}).get("services", [])
    return {m["name"]: m["total"] for m in services[0]["members"]} if services else {}


def parallel_load(lab, cluster, parallel: int, seconds: float = 4.0) -> dict:
    """`parallel` clients back to back through the VIP; what each member got (HAProxy's totals)."""
    before = totals(cluster)
    done = lab.exec("ws", [sys.executable, LOAD, "echo", VIP, "104", "PACS", "--count", "100000", "--seconds",
                           str(seconds), "--parallel", str(parallel)], timeout=seconds + 60)
    client = json.loads(done.stdout)
    # the status reads HAProxy's counters every 0.5 s: wait until they count every association
    lab.wait_for(lambda: sum(totals(cluster).values()) - sum(before.values()) >= client["associations"], 5,
                 what="HAProxy's totals")
    after = totals(cluster)
    return {"client": client, "per_member": {n: after[n] - before.get(n, 0) for n in after},
            "load": load_average()}


SLOW_SCP = """
import sys, time
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
delay = float(sys.argv[2]) / 1000
ae = AE(ae_title="PACS"); ae.add_supported_context(Verification); ae.maximum_associations = 64
ae.start_server(("0.0.0.0", int(sys.argv[1])), block=True,
                evt_handlers=[(evt.EVT_C_ECHO, lambda event: time.sleep(delay) or 0x0000)])
"""


def slow_member(lab, cluster, scp: dict, delay_ms: int, parallel: int) -> dict:
    """The same parallel load with both storescp, then with pacs-b's PACS answering late."""
    results = {"delay_ms": delay_ms, "parallel": parallel, "even": parallel_load(lab, cluster, parallel)}
    kill_with_children(lab, scp["b"])
    slow = lab.spawn("b", [sys.executable, "-c", SLOW_SCP, str(PORT), str(delay_ms)])
    lab.wait_for(lambda: echo(lab.ns("ws"), "192.0.2.12", PORT, called_ae="PACS", timeout=2.0), 20,
                 what="the slow PACS answers")
    lab.wait_for(lambda: member_states(cluster)["pacs-b"][0] == "up", 20, what="pacs-b up with its slow PACS")
    try:
        results["b_slow"] = parallel_load(lab, cluster, parallel)
    finally:
        lab.stop(slow)
    scp["b"] = start_storescp(lab, lab.ns("b"), port=PORT, aet="PACS", fork=True)
    lab.wait_for(lambda: member_states(cluster)["pacs-b"][0] == "up", 20, what="pacs-b back")
    return results


def run(trials: int, held: int, check_interval: float, slow_ms: int = 20, parallel: int = 8) -> dict:
    check = [{"name": "pacs-dicom", "type": "dicom-echo", "port": PORT, "called_ae": "PACS",
              "interval": 0.5, "timeout": 1.0, "fall": 2, "rise": 2}]
    balance = {"check_interval": check_interval, "services": [
        {"name": "dicom", "address": VIP, "port": 104, "target_port": PORT, "health": "pacs-dicom"}]}
    results: dict = {"check_interval_s": check_interval, "held": held}
    with Lab(unique_prefix("lb")) as lab:
        scp = {h: start_storescp(lab, lab.ns(h), port=PORT, aet="PACS", fork=True) for h in "ab"}
        cluster = AgentCluster(lab, checks={"a": check, "b": check})
        for host, priority in (("a", 150), ("b", 100)):
            cluster.add(host, priority, balance=balance)
        cluster.start_all()
        lab.wait_for(lambda: member_states(cluster).get("pacs-b", ("",))[0] == "up"
                     and cluster.state("a") == "MASTER", 30, what="cluster balancing")
        out = Path(lab.mkdtemp("holder")) / "out"
        with open(out, "w") as handle:
            holder = lab.spawn("ws", [sys.executable, HOLDER, VIP, "104", str(held)], stdout=handle, stderr=handle)
        lab.wait_for(lambda: f"established {held} of {held}" in out.read_text(), 60, what="held")
        lab.wait_for(lambda: sum(n for _, n in member_states(cluster).values()) == held, 5, what="counted")
        results["spread"] = {name: n for name, (_, n) in member_states(cluster).items()}
        results["spread_load"] = load_average()
        lab.stop(holder)
        if slow_ms:
            results["slow"] = slow_member(lab, cluster, scp, slow_ms, parallel)
        kills, failures, drains = [], [], []
        for _ in range(trials):
            started = time.monotonic()
            assert cluster.cli("b", "drain", "on").returncode == 0
            lab.wait_for(lambda: member_states(cluster)["pacs-b"][0] == "drain", 10, interval=0.01, what="drain")
            drains.append(time.monotonic() - started)
            assert cluster.cli("b", "drain", "off").returncode == 0
            lab.wait_for(lambda: member_states(cluster)["pacs-b"][0] == "up", 10, what="undrained")
            kill_with_children(lab, scp["b"])
            killed = time.monotonic()
            down_at, failed, sent = None, 0, 0
            while time.monotonic() - killed < 3.0:
                sent += 1
                failed += not echo(lab.ns("ws"), VIP, 104, called_ae="PACS", timeout=2.0)
                if down_at is None and member_states(cluster)["pacs-b"][0] == "down":
                    down_at = time.monotonic() - killed
            kills.append(down_at)
            failures.append((failed, sent))
            scp["b"] = start_storescp(lab, lab.ns("b"), port=PORT, aet="PACS", fork=True)
            lab.wait_for(lambda: member_states(cluster)["pacs-b"][0] == "up", 20, what="pacs-b back")
        results["out_of_rotation_s"] = [None if k is None else round(k, 2) for k in kills]
        measured = [k for k in kills if k is not None]
        results["out_of_rotation_median_s"] = round(statistics.median(measured), 2) if measured else None
        results["failed_of_sent_in_3_s_after_kill"] = failures
        results["drain_visible_s"] = [round(d, 2) for d in drains]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--held", type=int, default=32)
    parser.add_argument("--check-interval", type=float, default=2.0)
    parser.add_argument("--slow-ms", type=int, default=20, help="0: no slow-member phase")
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(run(args.trials, args.held, args.check_interval, min(args.slow_ms, 500),
                         min(args.parallel, 64)), indent=1))


if __name__ == "__main__":
    main()
