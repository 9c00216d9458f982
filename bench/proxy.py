"""Proxy mode (balance: mode proxy, HAProxy) as the workstation sees it, in one lab: the
counterpart of bench/direct.py, with the same hosts, probe and scenarios.

pacs-c (priority 200) only balances (its storescp only answers its own health check); pacs-a (150)
and pacs-b (100) are the members, each a forking dcmtk storescp on port 11112, checked by their
agents every 0.2 s (fall 3, timeout 2 s; a refused port is down at once) and by HAProxy's DICOM
check every 2 s. The workstation's probe (lab.probe) C-ECHOes the VIP every 20 ms (echoes overlap)
and runs a C-STORE loop. While a scenario runs, the bench reads the VIP holder's HAProxy
(`show stat` on its runtime socket) every 10 ms: `lbtot`, the associations HAProxy has given each
member, tells when the last new association went to a member, to within that period.

1. member: pacs-b's PACS killed (listener and children): failed attempts (open at the kill, or
   started after it), when HAProxy last gave pacs-b an association, when it marked pacs-b down.
2. drain (--drains): drain on at pacs-b, with 16 associations held: when HAProxy last gave
   pacs-b a new association after the command, when it showed DRAIN, whether pacs-b's held
   associations still answer, failures. Every other trial runs `hapacs drain on` (timed from the
   start of its process), the others send its message straight to the control socket (timed
   from the moment the agent knows).
3. balancer loss (--trials): pacs-c lost as a host (switch port silent, agent killed; its HAProxy
   dies with its agent) with a 0.2 s client timeout: the outage of the echoes, as bench/direct.py
   measures it. In proxy mode the associations held through pacs-c's HAProxy end with it.

--png FILE draws the member death and one drain: new associations per member per 50 ms and the
failed attempts. Each figure comes with the load average (the 2 cores are shared).

Run as root: .venv/bin/python bench/proxy.py [--trials 10] [--drains 5] [--json FILE] [--png FILE]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import socket
import statistics
import sys
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import load_average, not_root, p95, write_json  # noqa: E402
from bench.direct import Held, attempts, member_states, start_balancing, syn_retransmissions  # noqa: E402
from hapacs.haproxy import stats_socket        # noqa: E402
from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402
from lab.dicom import kill_with_children, start_storescp  # noqa: E402
from lab.outage import answered, load, outage   # noqa: E402
from lab.probe import start_probe               # noqa: E402

VIP = "192.0.2.100"
PORT = 11112
SERVERS = {"192.0.2.11": "pacs-a", "192.0.2.12": "pacs-b"}
CHECK = [{"name": "pacs-dicom", "type": "dicom-echo", "port": PORT, "called_ae": "PACS",
          "interval": 0.2, "timeout": 2.0, "fall": 3, "rise": 2}]
BALANCE = {"mode": "proxy", "members": [{"name": name, "address": address} for address, name in SERVERS.items()],
           "services": [{"name": "dicom", "address": VIP, "port": 104, "target_port": PORT,
                         "health": "pacs-dicom"}]}
POLL_S = 0.01
HELD_COUNT = 16


def show_stat(path: str) -> dict[str, dict]:
    """The servers' rows of `show stat` from one HAProxy: status, scur, lbtot per member name."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        sock.connect(path)
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    rows = csv.DictReader(io.StringIO(b"".join(chunks).decode().lstrip("# ")))
    return {SERVERS[row["svname"]]: {"status": row["status"], "scur": int(row["scur"] or 0),
                                     "lbtot": int(row["lbtot"] or 0)}
            for row in rows if row["svname"] in SERVERS}


class StatWatch:
    """`show stat` of one HAProxy every POLL_S, in a thread: [(monotonic t, rows)]. Bounded in time
    even when a failed wait skips stop(): every scene it watches lasts seconds."""

    LIMIT_S = 120.0

    def __init__(self, path: str):
        self.path, self.samples, self.done = path, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.LIMIT_S
        while not self.done.wait(POLL_S) and time.monotonic() < deadline:
            try:
                rows = show_stat(self.path)
            except (OSError, KeyError, ValueError):
                continue
            self.samples.append((time.monotonic(), rows))

    def stop(self) -> list:
        self.done.set()
        self.thread.join(5)
        return self.samples

    def last_new(self, member: str, since: float) -> float | None:
        """When HAProxy last gave `member` an association after `since` (the sample that showed it),
        or None if it gave none."""
        before = [rows[member]["lbtot"] for t, rows in self.samples if t <= since]
        base = before[-1] if before else None
        last = None
        for t, rows in self.samples:
            if t > since and base is not None and rows[member]["lbtot"] > base:
                last, base = t, rows[member]["lbtot"]
        return last

    def first_status(self, member: str, since: float, prefix: str) -> float | None:
        return next((t for t, rows in self.samples if t > since and rows[member]["status"].startswith(prefix)), None)

    def given(self, member: str, since: float, until: float) -> int:
        counts = [rows[member]["lbtot"] for t, rows in self.samples if since <= t <= until]
        return counts[-1] - counts[0] if counts else 0


def brief(counts: dict) -> dict:
    """bench/direct.py's attempt counts, with the slow answers as a number and the first three."""
    slow = counts.pop("slower_than_0.5_s")
    return {**counts, "slower_than_0.5_s": len(slow), "first_slow": slow[:3]}


def build(lab) -> tuple[AgentCluster, dict]:
    pacs = {host: start_storescp(lab, lab.ns(host), port=PORT, aet="PACS", fork=True) for host in "abc"}
    return start_balancing(lab, CHECK, BALANCE), pacs


def holder_socket(cluster, host: str) -> str:
    return stats_socket(os.path.join(cluster.dir, f"{host}-state"))


def member_death(lab, cluster, scp_b) -> dict:
    path = os.path.join(lab.tmpdir, "member.jsonl")
    probe = start_probe(lab, path, VIP, port=104, interval=0.02, duration=60, store=True, timeout=3.0, overlap=50)
    lab.wait_for(lambda: answered(path) >= 20, 30, what="workstation served")
    watch = StatWatch(holder_socket(cluster, "c"))
    time.sleep(1.0)    # a second of the steady state before the kill, for the picture
    kill_started = time.monotonic()
    kill_with_children(lab, scp_b)     # finds the children in /proc first: slow on a loaded machine
    killed = time.monotonic()          # from here on pacs-b's PACS is gone
    lab.wait_for(lambda: member_states(cluster, "c").get("pacs-b") == "down", 10, interval=0.01, what="b down")
    time.sleep(2.0)    # the window in which later failures would show; a measurement, not a synchronisation
    lab.stop(probe)
    watch.stop()
    failed = [r for r in load(path) if r["t"] >= killed - 3.0 and not r["ok"]]
    last_to_b = watch.last_new("pacs-b", killed)
    down = watch.first_status("pacs-b", killed, "DOWN")
    row = {"kill_took_s": round(killed - kill_started, 3), "failed": len(failed),
           "failed_open_at_the_kill": sum(r["t"] < killed for r in failed),
           "failed_started_after": sorted(f"{r['kind']} +{r['t'] - killed:.3f} s: {r['err'][:60]}"
                                          for r in failed if r["t"] >= killed),
           "last_association_to_b_s": None if last_to_b is None else round(last_to_b - killed, 3),
           "haproxy_b_down_s": None if down is None else round(down - killed, 3),
           "to_a_in_2_s_after": watch.given("pacs-a", killed, killed + 2.0),
           "load": load_average(), **brief(attempts(path, killed))}
    print(f"  member death: {row}", flush=True)
    return {**row, "records": path, "fault_t": killed, "samples": watch.samples}


def hold(lab, tries: int = 3) -> Held:
    """16 associations held through the VIP; a holder that could not open them all (one association
    refused or timed out under load) is tried again, and says so."""
    for attempt in range(tries):
        try:
            return Held(lab)
        except AssertionError:
            print(f"  (holder: not all {HELD_COUNT} associations opened, attempt {attempt + 1})", flush=True)
    raise AssertionError(f"no holder opened {HELD_COUNT} associations in {tries} attempts")


def idle_agents(cluster, seconds: float = 10.0) -> dict:
    """Each agent's CPU over `seconds` with no workstation traffic: HAProxy's agent-checks and
    the health checks only."""
    processes = {host: psutil.Process(p.pid) for host, p in cluster.procs.items()}
    before = {host: sum(p.cpu_times()[:2]) for host, p in processes.items()}
    time.sleep(seconds)    # a measurement window
    return {host: round(100 * (sum(p.cpu_times()[:2]) - before[host]) / seconds, 2) for host, p in processes.items()}


def drain(lab, cluster, number: int, via_cli: bool) -> dict:
    path = os.path.join(lab.tmpdir, f"drain{number}.jsonl")
    probe = start_probe(lab, path, VIP, port=104, interval=0.02, duration=60, store=True, timeout=3.0, overlap=50)
    lab.wait_for(lambda: answered(path) >= 20, 30, what="workstation served")
    held = hold(lab)
    watch = StatWatch(holder_socket(cluster, "c"))
    time.sleep(1.0)
    held_on_b = watch.samples[-1][1]["pacs-b"]["scur"]
    retransmitted = syn_retransmissions(lab)
    started = time.monotonic()
    if via_cli:
        answer = cluster.cli("b", "drain", "on").stdout.strip()
    else:      # the control socket's message, as `hapacs drain on` sends it, without the command's start
        answer = cluster.command("b", {"command": "drain", "on": True}).get("message")
    answered_at = time.monotonic()
    lab.wait_for(lambda: watch.first_status("pacs-b", started, "DRAIN") is not None, 5, interval=0.01,
                 what="DRAIN in HAProxy")
    time.sleep(2.0)    # the window in which a late association to pacs-b would show
    answering = held.echo()
    held.stop()
    lab.stop(probe)
    watch.stop()
    shown = watch.first_status("pacs-b", started, "DRAIN")
    last = watch.last_new("pacs-b", started)
    row = {"via": "hapacs drain on" if via_cli else "control socket", "answer": answer,
           "command_s": round(answered_at - started, 3),
           "last_new_association_to_b_s": None if last is None else round(last - started, 3),
           "after_the_answer_s": None if last is None else round(last - answered_at, 3),
           "haproxy_drain_s": round(shown - started, 3),
           "new_to_b_after_drain_shown": watch.given("pacs-b", shown, time.monotonic()),
           "new_to_a_meanwhile": watch.given("pacs-a", started, time.monotonic()),
           "held_on_b": held_on_b, "held_answering": answering, "of_held": held.count, "load": load_average(),
           **brief(attempts(path, started)), "syn_retransmissions": syn_retransmissions(lab) - retransmitted}
    assert cluster.cli("b", "drain", "off").returncode == 0
    lab.wait_for(lambda: show_stat(holder_socket(cluster, "c"))["pacs-b"]["status"] == "UP", 10, what="b up")
    print(f"  drain {number + 1}: {row}", flush=True)
    return {**row, "records": path, "fault_t": started, "samples": watch.samples}


def balancer_loss(lab, cluster, trials: int) -> dict:
    """bench/direct.py's balancer loss without the held associations: in proxy mode those
    through the lost HAProxy end with it (0 of 16 answered afterwards in each of 8 trials)."""
    path = os.path.join(lab.tmpdir, "loss.jsonl")
    probe = start_probe(lab, path, VIP, interval=0.02, duration=30 * trials + 60, timeout=0.2, overlap=50)
    lab.wait_for(lambda: answered(path) >= 20, 30, what="workstation served")
    rows = []
    for number in range(trials):
        time.sleep(1.0)    # a second of answers through pacs-c before the fault
        fault = time.monotonic()
        lab.partition("c")
        cluster.kill("c")
        lab.wait_for(lambda: cluster.state("a") == "MASTER" and "a" in lab.holders(VIP), 10, what="a MASTER")
        lab.wait_for(lambda: answered(path, since=fault) >= 10, 10, what="served again")
        result = outage(load(path), fault)
        row = {"trial": number + 1, "outage_s": round(result["outage_s"], 3),
               "recovery_s": round(result["recovery_s"], 3), "failed_echoes": result["failures"],
               "last_answer_before_fault_s": round(fault - result["last_answer_t"], 3), "fault_t": fault,
               "load": load_average()}
        print(f"  balancer loss {number + 1}: {row}", flush=True)
        rows.append(row)
        lab.heal("c")
        cluster.start("c")
        lab.wait_for(lambda: cluster.masters() == ["c"] and lab.holders(VIP) == ["c"], 30, what="c MASTER again")
        lab.wait_for(lambda: member_states(cluster, "c") == {"pacs-a": "up", "pacs-b": "up"}, 60,
                     what="c's HAProxy sees both members")
        back = time.monotonic()
        lab.wait_for(lambda: answered(path, since=back) >= 10, 10, what="served by c")
    lab.stop(probe)
    outages = sorted(r["outage_s"] for r in rows)
    return {"rows": rows, "outage_median_s": statistics.median(outages), "outage_p95_s": p95(outages),
            "outage_max_s": outages[-1]}


def picture(png: str, scenes: list[tuple[dict, str]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, panels = plt.subplots(len(scenes), 1, figsize=(9, 2.8 * len(scenes)), sharex=True)
    bin_s = 0.05
    for panel, (scene, title) in zip(panels, scenes):
        fault = scene["fault_t"]
        samples = [(t - fault, rows) for t, rows in scene["samples"] if -1.0 <= t - fault <= 2.0]
        for member, colour in (("pacs-a", "#2e6da4"), ("pacs-b", "#f0ad4e")):
            xs, ys, edge, base = [], [], samples[0][0], samples[0][1][member]["lbtot"]
            for t, rows in samples:
                if t >= edge + bin_s:
                    xs.append(edge)
                    ys.append(rows[member]["lbtot"] - base)
                    edge, base = t, rows[member]["lbtot"]
            panel.step(xs, ys, where="post", color=colour, label=f"new associations to {member} per 50 ms")
        failed = [r["t"] - fault for r in load(scene["records"]) if not r["ok"] and -1.0 <= r["t"] - fault <= 2.0]
        panel.scatter(failed, [0] * len(failed), marker="x", c="#d9534f", s=30, label="failed attempt (at its start)")
        panel.axvline(0, color="black", linestyle="--", linewidth=1)
        panel.set_title(title, fontsize=10)
        panel.set_ylabel("associations")
        panel.legend(loc="upper right", fontsize=7)
    panels[-1].set_xlabel("seconds from the kill / the command (HAProxy's lbtot read every 10 ms)")
    figure.suptitle("Proxy mode: where the VIP holder's HAProxy sends new associations "
                    "(C-ECHO every 20 ms and a C-STORE loop)", fontsize=10)
    figure.tight_layout()
    figure.savefig(png, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description="proxy-mode figures")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--drains", type=int, default=5)
    parser.add_argument("--json")
    parser.add_argument("--png")
    parser.add_argument("--scenarios", default="member,drain,loss")
    args = parser.parse_args()
    if not_root("bench/proxy.py"):
        return 1
    results: dict = {"load_at_start": load_average()}
    with Lab(unique_prefix("lq"), hosts=("a", "b", "c")) as lab:
        cluster, pacs = build(lab)
        wanted = args.scenarios.split(",")
        results["idle_agent_cpu_percent"] = idle_agents(cluster)
        print(f"idle agents, % of one core: {results['idle_agent_cpu_percent']} ({load_average()})", flush=True)
        if "member" in wanted:
            print("a member's PACS dies:", flush=True)
            results["member"] = member_death(lab, cluster, pacs["b"])
            start_storescp(lab, lab.ns("b"), port=PORT, aet="PACS", fork=True)
            lab.wait_for(lambda: member_states(cluster, "c") == {"pacs-a": "up", "pacs-b": "up"}, 20,
                         what="b back")
        if "drain" in wanted:
            print("drain:", flush=True)
            # every other drain through the `hapacs` command (its process start included), the rest
            # straight over the control socket (the moment the agent knows)
            results["drain"] = [drain(lab, cluster, n, n % 2 == 1) for n in range(min(args.drains, 20))]
        if "loss" in wanted:
            print("balancer loss:", flush=True)
            results["balancer_loss"] = balancer_loss(lab, cluster, min(args.trials, 50))
        if args.png and "member" in wanted and "drain" in wanted:
            picture(args.png, [(results["member"], "pacs-b's PACS killed (listener and children)"),
                               (results["drain"][0], "drain on at pacs-b (its first trial: over the control socket)")])
    results["load_at_end"] = load_average()
    summary = results.get("balancer_loss")
    if summary:
        print(f"balancer loss: outage median {summary['outage_median_s']:.3f} s, p95 {summary['outage_p95_s']:.3f} s, "
              f"max {summary['outage_max_s']:.3f} s", flush=True)
    if "drain" in results:
        lasts = [d["last_new_association_to_b_s"] for d in results["drain"]]
        print(f"drain: last new association to pacs-b after the command: {lasts} s", flush=True)
    if args.json:
        for scene in [results.get("member"), *results.get("drain", [])]:
            if scene:
                scene.pop("samples", None)
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
