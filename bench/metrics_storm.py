"""Prometheus scrape storm: what 100 scrapes a second for 10 s do to the MASTER's heartbeats.

Two agents with metrics.listen in the lab. First an idle window (no scrape) as
long as the storm, as the baseline; then the storm: the workstation scrapes the
MASTER's /metrics RATE times a second for SECONDS, each scrape on a new TCP
connection (harsher than Prometheus, which keeps its connection; --keep-alive
does as Prometheus). Reported:
- CPU per scrape: the MASTER agent's CPU time during the storm, less its idle
  rate over the same time, divided by the scrapes answered;
- the MASTER's timer lateness during the storm (the agent records every firing
  more than 5 ms late with its time; below that, "under 5 ms") and its last-minute
  maximum, against the idle window's;
- the same lateness on the BACKUP, which is not scraped: the control for the host's own load;
- heartbeats the MASTER sent and its peer received during the storm, peers lost
  and transitions on both nodes (targets: no heartbeat missed, no transition).

Run as root: .venv/bin/python bench/metrics_storm.py [--rate 100] [--seconds 10] [--realtime]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import not_root  # noqa: E402

from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "lab", "httpprobe.py")
PORT = 9641


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process: system is mostly the kernel's TCP work."""
    times = psutil.Process(pid).cpu_times()
    return times.user, times.system


def snapshot(cluster) -> dict:
    return {"a": cluster.status("a"), "b": cluster.status("b"), "cpu": cpu_seconds(cluster.procs["a"].pid),
            "at": time.monotonic()}


def window(before: dict, after: dict) -> dict:
    """What happened between two snapshots."""
    a0, a1, b0, b1 = before["a"], after["a"], before["b"], after["b"]
    def late_during(status: dict) -> list[float]:
        return [ms for at, ms in status["timer_late_ms"]["recent"] if before["at"] <= at <= after["at"]]
    late, control = late_during(a1), late_during(b1)
    return {
        "seconds": round(after["at"] - before["at"], 3),
        "cpu_s": round(sum(after["cpu"]) - sum(before["cpu"]), 4),
        "cpu_user_s": round(after["cpu"][0] - before["cpu"][0], 4),
        "cpu_system_s": round(after["cpu"][1] - before["cpu"][1], 4),
        "late_ms_max": max(late) if late else None,          # None: no firing more than 5 ms late
        "late_firings_over_5ms": len(late),
        "late_ms_last_minute": a1["timer_late_ms"]["last_minute"],
        # The BACKUP is not scraped: when it is late too, the host was busy, not the endpoint.
        "control_late_ms_max": max(control) if control else None,
        "control_late_firings_over_5ms": len(control),
        "heartbeats_sent_by_master": a1["counters"]["adverts_sent"] - a0["counters"]["adverts_sent"],
        "heartbeats_received_by_peer": b1["counters"]["adverts_received"] - b0["counters"]["adverts_received"],
        "peers_lost": (a1["counters"]["peers_lost"] - a0["counters"]["peers_lost"])
        + (b1["counters"]["peers_lost"] - b0["counters"]["peers_lost"]),
        "transitions": (a1["counters"]["transitions"] - a0["counters"]["transitions"])
        + (b1["counters"]["transitions"] - b0["counters"]["transitions"]),
        "states": (a1["state"], b1["state"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="hapacs metrics scrape storm")
    parser.add_argument("--rate", type=float, default=100.0, help="scrapes a second (at most 1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="storm length (at most 60)")
    parser.add_argument("--realtime", action="store_true", help="agents SCHED_RR, as under the systemd unit")
    parser.add_argument("--keep-alive", action="store_true", help="all scrapes on one connection, as Prometheus")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not_root("bench/metrics_storm.py"):
        return 1
    rate, seconds = min(args.rate, 1000.0), min(args.seconds, 60.0)
    figures: dict = {"rate": rate, "seconds": seconds, "realtime": args.realtime, "keep_alive": args.keep_alive}
    with Lab(unique_prefix("pb")) as lab:
        cluster = AgentCluster(lab, realtime=args.realtime)
        for host, priority in (("a", 150), ("b", 100)):
            cluster.add(host, priority, metrics={"listen": f"{lab.node(host).ipv4}:{PORT}"})
        cluster.start_all()
        lab.wait_for(lambda: cluster.masters() == ["a"] and cluster.state("b") == "BACKUP", 15, what="a MASTER")
        url = f"http://192.0.2.11:{PORT}/metrics"
        first = lab.exec("ws", [sys.executable, PROBE, "get", url])
        figures["page_bytes"] = len(json.loads(first.stdout)["body"].encode())

        idle_start = snapshot(cluster)
        lab.wait_for(lambda: time.monotonic() - idle_start["at"] >= seconds, seconds + 5, interval=0.2,
                     what="the idle window")
        idle = window(idle_start, snapshot(cluster))
        figures["idle"] = idle

        load_before = os.getloadavg()[0]
        start = snapshot(cluster)
        out = lab.exec("ws", [sys.executable, PROBE, "storm", url, str(rate), str(seconds)]
                       + (["keep-alive"] if args.keep_alive else []), timeout=seconds + 30)
        storm_client = json.loads(out.stdout)
        storm = window(start, snapshot(cluster))
        # Other work on the host shows here: a loaded host delays every process's timers.
        figures["host_load_1min"] = (round(load_before, 2), round(os.getloadavg()[0], 2))
        idle_rate = idle["cpu_s"] / idle["seconds"]
        scrapes = storm_client["scrapes"]
        storm["client"] = storm_client
        storm["cpu_per_scrape_ms"] = round(1000 * (storm["cpu_s"] - idle_rate * storm["seconds"]) / max(scrapes, 1), 3)
        storm["cpu_share_during"] = round(storm["cpu_s"] / storm["seconds"], 4)
        figures["storm"] = storm
        figures["idle_cpu_share"] = round(idle_rate, 4)

    def late(w: dict, key: str = "late_ms_max") -> str:
        return "under 5 ms" if w[key] is None else f"{w[key]:.1f} ms"

    print(f"page {figures['page_bytes']} bytes; agents {'SCHED_RR' if args.realtime else 'normal scheduling'}; "
          f"{'one kept-alive connection' if args.keep_alive else 'a new connection per scrape'}; host load "
          f"average {figures['host_load_1min'][0]} before the storm, {figures['host_load_1min'][1]} after "
          f"({os.cpu_count()} CPUs)")
    print(f"idle {idle['seconds']:.1f} s: CPU {100 * figures['idle_cpu_share']:.2f} % of one core; timer lateness "
          f"{late(idle)}; heartbeats sent {idle['heartbeats_sent_by_master']}, received by the peer "
          f"{idle['heartbeats_received_by_peer']}")
    client = storm["client"]
    print(f"storm {rate:g}/s for {seconds:g} s: {client['scrapes']} scrapes answered ({client['errors']} errors, "
          f"statuses {client['statuses']}), latency median {client['latency_ms_median']:.2f} ms, "
          f"p99 {client['latency_ms_p99']:.2f} ms, max {client['latency_ms_max']:.2f} ms")
    print(f"  MASTER CPU {100 * storm['cpu_share_during']:.2f} % of one core during the storm; "
          f"{storm['cpu_per_scrape_ms']:.3f} ms of CPU per scrape (idle rate subtracted); user "
          f"{storm['cpu_user_s']:.2f} s, system {storm['cpu_system_s']:.2f} s during the storm")
    print(f"  MASTER timer lateness during the storm {late(storm)} ({storm['late_firings_over_5ms']} firings over "
          f"5 ms); last minute {storm['late_ms_last_minute']:.1f} ms; the BACKUP's (not scraped, the control) "
          f"{late(storm, 'control_late_ms_max')} ({storm['control_late_firings_over_5ms']} firings over 5 ms)")
    print(f"  heartbeats sent by the MASTER {storm['heartbeats_sent_by_master']}, received by its peer "
          f"{storm['heartbeats_received_by_peer']}; peers lost {storm['peers_lost']}; transitions "
          f"{storm['transitions']}; states {storm['states'][0]}/{storm['states'][1]}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)
    return 0 if storm["transitions"] == 0 and storm["peers_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
