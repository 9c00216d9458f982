"""Direct routing (balance: mode direct) as the workstation sees it, in one lab.

pacs-c (priority 200) only balances (its storescp only answers its own health check); pacs-a (150) and pacs-b (100) are the members, each a
forking dcmtk storescp on port 104 with the VIP on lo, checked every 0.2 s (fall 3, timeout 2 s). The
workstation's probe (lab.probe) C-ECHOes the VIP every 20 ms (echoes overlap) and, where said,
runs a C-STORE loop. Scenarios, in this order:

1. release: `hapacs release` on the balancer, back and forth (--releases), with 16 associations
   held and a 3 s client timeout: failed attempts, the slowest answer (a held SYN would cost 1 s),
   and whether every held association answers through the new balancer.
2. member: pacs-b's PACS killed (listener and children) under the echoes and stores: the
   attempts that failed, when the last of them started, and when the balancer's map moved
   pacs-b's buckets (pacs-c's status), from the kill.
3. drain: `hapacs drain on` on pacs-b with 16 associations held: when pacs-b's drain table was
   loaded, how many new associations (16 more) reached pacs-b, whether the held ones on pacs-b
   still answer, failed attempts.
4. balancer loss (--trials): pacs-c lost as a host (its switch port silent, its agent killed;
   --loss link cuts its link instead, so the switch forgets its MAC address and floods its
   frames to every port) with 16 associations held and a 0.2 s client timeout (the workstation
   retries every 20 ms): the outage of the echoes, and how many held associations answer
   through pacs-a afterwards. Then pacs-c comes back, takes the VIP again, and the next trial
   starts.

Each figure comes with the load average (the 2 cores are shared). --png FILE draws the echoes
of the release and of one balancer loss (bench/direct.png).

Run as root: .venv/bin/python bench/direct.py [--trials 10] [--releases 4] [--json FILE] [--png FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import load_average, not_root, p95, write_json  # noqa: E402

from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402
from lab.dicom import HOLD_ASSOCIATIONS_SCRIPT as HOLDER, kill_with_children, start_storescp  # noqa: E402
from lab.outage import answered, load, outage, slowest  # noqa: E402
from lab.probe import start_probe               # noqa: E402

VIP = "192.0.2.100"
HELD = 16
CHECK = [{"name": "pacs-dicom", "type": "dicom-echo", "port": 104, "called_ae": "PACS",
          "interval": 0.2, "timeout": 2.0, "fall": 3, "rise": 2}]   # a loaded machine answers late
MEMBERS = [{"name": "pacs-a", "address": "192.0.2.11"}, {"name": "pacs-b", "address": "192.0.2.12"}]
BALANCE = {"mode": "direct", "members": MEMBERS,
           "services": [{"name": "dicom", "address": VIP, "port": 104, "health": "pacs-dicom"}]}


def syn_retransmissions(lab) -> int:
    """SYNs the workstation's TCP sent again so far (each one a 1 s wait for its association)."""
    for line in lab.exec("ws", ["nstat", "-asz", "TcpExtTCPSynRetrans"]).stdout.splitlines():
        if line.startswith("TcpExtTCPSynRetrans"):
            return int(line.split()[1])
    return 0


def new_on(lab, host: str, holder: "Held") -> int:
    """How many of `holder`'s associations are established on `host`'s PACS (by the workstation's ports)."""
    ports = set()
    for line in lab.exec("ws", ["ss", "-Htnp", "state", "established", "( dport = :104 )"]).stdout.splitlines():
        if f"pid={holder.process.pid}," in line:
            ports.add(line.split()[2].rsplit(":", 1)[1])
    lines = lab.exec(host, ["ss", "-Htn", "state", "established", "( sport = :104 )"]).stdout.splitlines()
    return sum(1 for line in lines if line.split()[3].rsplit(":", 1)[1] in ports and "192.0.2.200:" in line)


def member_states(cluster, host: str) -> dict[str, str]:
    services = (cluster.status(host) or {}).get("balance", {}).get("services", [])
    return {m["name"]: m["state"] for m in services[0]["members"]} if services else {}


class Held:
    """HELD associations held open through the VIP by lab/holdassociations.py. The holder ends an
    association after 5 s without traffic: a C-ECHO on each every 2 s keeps them open, as a
    viewer's traffic would, however slowly the loaded machine gets through the steps between."""

    def __init__(self, lab, count: int = HELD):
        self.lab, self.count = lab, count
        self.out = Path(lab.mkdtemp("held")) / "out"
        with open(self.out, "w") as handle:
            self.process = lab.spawn("ws", [sys.executable, HOLDER, VIP, "104", str(count)],
                                     stdout=handle, stderr=handle)
        lab.wait_for(lambda: f"established {count} of {count}" in self.out.read_text(), 60, what="held")
        # only now: before its handler is in place, SIGUSR1 would end the holder
        self.done = threading.Event()
        threading.Thread(target=self._keep, daemon=True).start()

    def _keep(self) -> None:
        while not self.done.wait(2.0) and self.process.poll() is None:
            self.lab.kill(self.process, signal.SIGUSR1)

    def echo(self) -> int:
        """C-ECHO on every held association; how many answered."""
        before = self.out.read_text().count("echo ")
        self.lab.kill(self.process, signal.SIGUSR1)
        self.lab.wait_for(lambda: self.out.read_text().count("echo ") > before, 15, what="held echo")
        return int([line for line in self.out.read_text().splitlines() if line.startswith("echo ")][-1].split()[1])

    def stop(self) -> None:
        self.done.set()
        self.lab.stop(self.process)


def build(lab) -> tuple[AgentCluster, dict]:
    pacs = {}
    for host in "ab":
        ifname = lab.node(host).ifname
        lab.exec(host, ["ip", "address", "add", f"{VIP}/32", "dev", "lo"])
        lab.exec(host, ["sysctl", "-qw", f"net.ipv4.conf.{ifname}.arp_ignore=1",
                        f"net.ipv4.conf.{ifname}.arp_announce=2"])
        pacs[host] = start_storescp(lab, lab.ns(host), port=104, aet="PACS", fork=True)
    # pacs-c's PACS only keeps its health check up (balance.services[].health names it): no member
    pacs["c"] = start_storescp(lab, lab.ns("c"), port=104, aet="PACS", fork=True)
    return start_balancing(lab, CHECK, BALANCE), pacs


def start_balancing(lab, check: list[dict], balance: dict) -> AgentCluster:
    """The agents of both benches (this one and bench/proxy.py): pacs-c (200) the balancer,
    pacs-a (150) and pacs-b (100) the members, each with `check`; once pacs-c holds the VIP and
    sees both members up."""
    cluster = AgentCluster(lab, checks={host: check for host in "abc"})
    for host, priority in (("c", 200), ("a", 150), ("b", 100)):
        cluster.add(host, priority, balance=balance)
    cluster.start_all()
    lab.wait_for(lambda: cluster.masters() == ["c"] and lab.holders(VIP) == ["c"], 30, what="pacs-c MASTER")
    lab.wait_for(lambda: member_states(cluster, "c") == {"pacs-a": "up", "pacs-b": "up"}, 20, what="members up")
    return cluster


def attempts(path: str, since: float, until: float = float("inf")) -> dict:
    records = [r for r in load(path) if since <= r["t"] < until]
    slow = [f"{r['kind']} at +{r['t'] - since:.2f} s took {r['end'] - r['t']:.2f} s" for r in records
            if r["end"] - r["t"] > 0.5]
    worst = {kind: slowest(records, since, until, kind) for kind in ("echo", "store")}
    return {"echoes": sum(r["kind"] == "echo" for r in records), "stores": sum(r["kind"] == "store" for r in records),
            "failed_echoes": sum(r["kind"] == "echo" and not r["ok"] for r in records),
            "failed_stores": sum(r["kind"] == "store" and not r["ok"] for r in records),
            **{f"slowest_{k}_s": round(w["end"] - w["t"], 3) if w else None for k, w in worst.items()},
            "slower_than_0.5_s": slow}


def releases(lab, cluster, count: int) -> dict:
    path = os.path.join(lab.tmpdir, "release.jsonl")
    probe = start_probe(lab, path, VIP, interval=0.02, duration=120, store=True, timeout=3.0, overlap=50)
    lab.wait_for(lambda: answered(path) >= 20, 30, what="workstation served")
    rows, first = [], None
    for number in range(count):
        holder = Held(lab)
        before = holder.echo()     # what answers before the move (the holder ends idle ones after 5 s)
        master = cluster.masters()[0]
        retransmitted = syn_retransmissions(lab)
        started = time.monotonic()
        first = first or started
        done = cluster.cli(master, "release")
        took = time.monotonic() - started
        lab.wait_for(lambda: cluster.masters() not in ([], [master]) and master not in lab.holders(VIP), 10,
                     what="VIP moved")
        answering = holder.echo()
        holder.stop()
        after = time.monotonic()
        lab.wait_for(lambda: answered(path, since=after) >= 5, 10, what="served after")
        row = {"from": master, "to": cluster.masters()[0], "command_s": round(took, 3), "answer": done.stdout.strip(),
               "held_answering_before": before, "held_answering": answering, "load": load_average(),
               **attempts(path, started, started + 3.0),
               "syn_retransmissions": syn_retransmissions(lab) - retransmitted}
        print(f"  release {number + 1}: {row}", flush=True)
        rows.append(row)
    lab.stop(probe)
    return {"rows": rows, "records": path, "first_release_t": first}


def member_death(lab, cluster, scp_b) -> dict:
    path = os.path.join(lab.tmpdir, "member.jsonl")
    probe = start_probe(lab, path, VIP, interval=0.02, duration=60, store=True, timeout=3.0, overlap=50)
    lab.wait_for(lambda: answered(path) >= 20, 30, what="workstation served")
    master = cluster.masters()[0]
    killed = time.monotonic()
    kill_with_children(lab, scp_b)
    lab.wait_for(lambda: member_states(cluster, master).get("pacs-b") == "down", 10, interval=0.01, what="b down")
    moved = time.monotonic() - killed
    after = time.monotonic()
    lab.wait_for(lambda: answered(path, since=after) >= 10, 10, what="served after")
    time.sleep(2.0)    # the window in which later failures would show; a measurement, not a synchronisation
    lab.stop(probe)
    failed = [r for r in load(path) if r["t"] >= killed - 3.0 and not r["ok"]]
    row = {"map_moved_s": round(moved, 3), "failed": len(failed),
           "failed_open_at_the_kill": sum(r["t"] < killed for r in failed),
           "failed_started_after": sorted(f"{r['kind']} +{r['t'] - killed:.3f} s: {r['err'][:60]}"
                                          for r in failed if r["t"] >= killed),
           "failed_kinds": sorted({r["kind"] for r in failed}),
           "last_failure_started_s": round(max(r["t"] for r in failed) - killed, 3) if failed else None,
           "load": load_average(), **attempts(path, killed)}
    print(f"  member death: {row}", flush=True)
    return row


def drain(lab, cluster) -> dict:
    path = os.path.join(lab.tmpdir, "drain.jsonl")
    probe = start_probe(lab, path, VIP, interval=0.02, duration=60, store=True, timeout=3.0, overlap=50)
    lab.wait_for(lambda: answered(path) >= 20, 30, what="workstation served")
    first = Held(lab)
    on_b = new_on(lab, "b", first)
    retransmitted = syn_retransmissions(lab)
    started = time.monotonic()
    done = cluster.cli("b", "drain", "on")
    lab.wait_for(lambda: "socket wildcard 0" in lab.exec("b", ["nft", "list", "ruleset"]).stdout, 5,
                 interval=0.005, what="drain table")
    loaded = time.monotonic() - started
    second = Held(lab)
    row = {"answer": done.stdout.strip(), "table_loaded_s": round(loaded, 3), "held_on_b_before": on_b,
           "held_on_b_after": new_on(lab, "b", first), "of_16_new_on_b": new_on(lab, "b", second),
           "first_answering": first.echo(),
           "second_answering": second.echo(), "load": load_average()}
    first.stop()
    second.stop()
    after = time.monotonic()
    lab.wait_for(lambda: answered(path, since=after) >= 5, 10, what="served")
    lab.stop(probe)
    row.update(attempts(path, started), syn_retransmissions=syn_retransmissions(lab) - retransmitted)
    # what the agents did meanwhile (a bucket map that changes under load shows here)
    row["logs"] = {host: [line.strip()[24:] for line in Path(cluster.log_path(host)).read_text().splitlines()
                          if "balance" in line or "->" in line or "peer" in line][-8:] for host in "bc"}
    assert cluster.cli("b", "drain", "off").returncode == 0
    print(f"  drain: {row}", flush=True)
    return row


def balancer_loss(lab, cluster, trials: int, how: str) -> dict:
    path = os.path.join(lab.tmpdir, "loss.jsonl")
    probe = start_probe(lab, path, VIP, interval=0.02, duration=30 * trials + 60, timeout=0.2, overlap=50)
    lab.wait_for(lambda: answered(path) >= 20, 30, what="workstation served")
    rows = []
    for number in range(trials):
        holder = Held(lab)
        fault = time.monotonic()
        if how == "link":
            lab.link_down("c")
        else:
            lab.partition("c")
            cluster.kill("c")
        lab.wait_for(lambda: cluster.state("a") == "MASTER" and "a" in lab.holders(VIP), 10, what="a MASTER")
        lab.wait_for(lambda: answered(path, since=fault) >= 10, 10, what="served again")
        answering = holder.echo()
        holder.stop()
        result = outage(load(path), fault)
        row = {"trial": number + 1, "outage_s": round(result["outage_s"], 3),
               "recovery_s": round(result["recovery_s"], 3), "failed_echoes": result["failures"],
               "held_answering": answering, "fault_t": fault, "load": load_average()}
        print(f"  balancer loss {number + 1}: {row}", flush=True)
        rows.append(row)
        if how == "link":
            lab.link_up("c")
        else:
            lab.heal("c")
            cluster.start("c")
        lab.wait_for(lambda: cluster.masters() == ["c"] and lab.holders(VIP) == ["c"], 30, what="c MASTER again")
        back = time.monotonic()
        lab.wait_for(lambda: answered(path, since=back) >= 10, 10, what="served by c")
    lab.stop(probe)
    outages = sorted(r["outage_s"] for r in rows)
    return {"how": how, "rows": rows, "records": path, "outage_median_s": statistics.median(outages),
            "outage_p95_s": p95(outages),
            "outage_max_s": outages[-1], "held_answering": sum(r["held_answering"] for r in rows),
            "held": HELD * len(rows)}


def picture(png: str, release_path: str, release_t: float, loss_path: str, loss_t: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, panels = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for panel, (path, fault, title) in zip(panels, (
            (release_path, release_t, "planned release of the balancer (3 s client timeout)"),
            (loss_path, loss_t, "balancer host loss: switch port silent, agent killed "
                                 "(0.2 s client timeout, retried every 20 ms)"))):
        records = [r for r in load(path) if fault - 1.0 <= r["t"] <= fault + 2.0 and r["kind"] == "echo"]
        ok = [r for r in records if r["ok"]]
        bad = [r for r in records if not r["ok"]]
        panel.scatter([r["t"] - fault for r in ok], [1000 * (r["end"] - r["t"]) for r in ok], s=8, c="#2e8b57",
                      label="C-ECHO answered")
        panel.scatter([r["t"] - fault for r in bad], [1000 * (r["end"] - r["t"]) for r in bad], s=14, c="#d9534f",
                      marker="x", label="C-ECHO failed")
        panel.axvline(0, color="black", linestyle="--", linewidth=1)
        panel.set_title(title, fontsize=10)
        panel.set_ylabel("answer time, ms")
        panel.set_yscale("log")
        panel.legend(loc="upper right", fontsize=8)
    panels[-1].set_xlabel("seconds from the command / the fault (each dot: one association, at its start)")
    figure.suptitle("Direct routing: the workstation's C-ECHOes (one every 20 ms) through the VIP", fontsize=11)
    figure.tight_layout()
    figure.savefig(png, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description="direct-routing figures")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--releases", type=int, default=4)
    parser.add_argument("--json")
    parser.add_argument("--png")
    parser.add_argument("--scenarios", default="release,member,drain,loss")
    parser.add_argument("--loss", choices=("host", "link"), default="host")
    args = parser.parse_args()
    if not_root("bench/direct.py"):
        return 1
    results: dict = {"load_at_start": load_average()}
    with Lab(unique_prefix("lb"), hosts=("a", "b", "c")) as lab:
        cluster, pacs = build(lab)
        wanted = args.scenarios.split(",")
        if "release" in wanted:
            print("planned releases:", flush=True)
            results["release"] = releases(lab, cluster, min(args.releases, 20))
            # the releases alternate the VIP between c and a: give it back to c for what follows
            if cluster.masters() != ["c"]:
                cluster.cli(cluster.masters()[0], "release")
                lab.wait_for(lambda: cluster.masters() == ["c"], 10, what="c MASTER")
        if "member" in wanted:
            print("a member's PACS dies:", flush=True)
            results["member"] = member_death(lab, cluster, pacs["b"])
            start_storescp(lab, lab.ns("b"), port=104, aet="PACS", fork=True)
            lab.wait_for(lambda: member_states(cluster, "c") == {"pacs-a": "up", "pacs-b": "up"}, 20,
                         what="b back")
        if "drain" in wanted:
            print("drain:", flush=True)
            results["drain"] = drain(lab, cluster)
        if "loss" in wanted:
            print("balancer loss:", flush=True)
            results["balancer_loss"] = balancer_loss(lab, cluster, min(args.trials, 50), args.loss)
        if args.png and "release" in wanted and "loss" in wanted:
            picture(args.png, results["release"]["records"], results["release"]["first_release_t"],
                    results["balancer_loss"]["records"], results["balancer_loss"]["rows"][0]["fault_t"])
    results["load_at_end"] = load_average()
    summary = results.get("balancer_loss")
    if summary:
        print(f"balancer loss: outage median {summary['outage_median_s']:.3f} s, p95 {summary['outage_p95_s']:.3f} s, "
              f"max {summary['outage_max_s']:.3f} s; held associations answering afterwards "
              f"{summary['held_answering']} of {summary['held']}", flush=True)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
