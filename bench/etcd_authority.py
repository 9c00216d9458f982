"""What `cluster.authority: etcd` costs at failover: real agents, the lab's 3-member etcd 3.4.

One lab: agents in hosts a (priority 150) and b (100), one VIP; etcd in c, d, e. Per trial,
with a fresh key prefix and fresh agents (TTL 2 s, heartbeats every 0.1 s):
- kill -9: SIGKILL of the MASTER a; seconds until b is MASTER (its transition's monotonic time);
- cut: a's traffic to every etcd member dropped with nftables in its namespace (b still hears a);
  seconds from the cut (once the rule is in) until a dropped the VIP (its MASTER -> FAULT), until b became MASTER,
  and whether both ever held the VIP (sampled every 20 ms);
- etcd leader cut (--leader-cut): the etcd leader's host partitioned for 5 s while a is MASTER,
  at each TTL of --ttls: does a keep the lease (no transition) while the others elect a new leader?
- release: `hapacs release` on a (its request on the control socket, without the command's own
  start); seconds until b is MASTER.

Run as root: .venv/bin/python bench/etcd_authority.py [--trials 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lab import Lab, unique_prefix  # noqa: E402
from lab.cluster import AgentCluster  # noqa: E402
from lab.etcd import CLIENT_PORT, healthy, leader, start_etcd_cluster  # noqa: E402

TTL = 2
VIP = "192.0.2.100"
ETCD_HOSTS = ("c", "d", "e")


def agents(lab, etcd, prefix: str, ttl: int = TTL) -> AgentCluster:
    cluster = AgentCluster(lab, preempt_delay=0.5)
    for host, priority in (("a", 150), ("b", 100)):
        cluster.add(host, priority, cluster={"authority": "etcd"},
                    etcd={"endpoints": etcd.endpoints, "prefix": prefix, "ttl": ttl},
                    handover={"drain_timeout": 2, "shutdown_drain_timeout": 1})
    cluster.start_all()
    lab.wait_for(lambda: cluster.masters() == ["a"] and lab.holders(VIP) == ["a"]
                 and cluster.state("b") == "BACKUP", 20, what="a MASTER")
    time.sleep(0.5)     # a bench, not a test: let a few renewals pass before the fault
    return cluster


def became(cluster, host: str, to: str) -> float:
    return [t["monotonic"] for t in cluster.transitions(host) if t["to"] == to][-1]


def stop(cluster) -> None:
    for host, proc in cluster.procs.items():
        if proc.poll() is None:
            cluster.kill(host, signal.SIGKILL)


def sample_holders(lab, stop_event: threading.Event, samples: list) -> None:
    deadline = time.monotonic() + 30
    while not stop_event.is_set() and time.monotonic() < deadline:
        samples.append(tuple(h for h in ("a", "b") if f"{VIP}/24" in lab.addresses(h)))
        stop_event.wait(0.02)


def kill_trial(lab, etcd, prefix) -> float:
    cluster = agents(lab, etcd, prefix)
    try:
        killed = time.monotonic()
        cluster.kill("a", signal.SIGKILL)
        lab.wait_for(lambda: cluster.state("b") == "MASTER", 10, what="b MASTER")
        return became(cluster, "b", "MASTER") - killed
    finally:
        stop(cluster)


def cut_trial(lab, etcd, prefix) -> tuple[float, float, bool]:
    cluster = agents(lab, etcd, prefix)
    members = ", ".join(lab.node(h).ipv4 for h in ETCD_HOSTS)
    rules = (f"table inet bench_cut {{\n chain out {{\n  type filter hook output priority 0;\n"
             f"  ip daddr {{ {members} }} tcp dport {CLIENT_PORT} drop\n }}\n}}\n")
    samples: list = []
    done = threading.Event()
    sampler = threading.Thread(target=sample_holders, args=(lab, done, samples))
    sampler.start()
    try:
        lab.exec("a", ["nft", "-f", "-"], input=rules)
        cut = time.monotonic()    # after the rule is in: a slow exec must not count as time held
        lab.wait_for(lambda: cluster.state("b") == "MASTER", 15, what="b MASTER")
        done.set()
        sampler.join()
        return became(cluster, "a", "FAULT") - cut, became(cluster, "b", "MASTER") - cut, \
            any(len(h) > 1 for h in samples)
    finally:
        done.set()
        lab.exec("a", ["nft", "delete", "table", "inet", "bench_cut"], check=False)
        stop(cluster)


def leader_cut_trial(lab, etcd, prefix, ttl: int) -> bool:
    """True when a stayed MASTER throughout a 5 s partition of the etcd leader's host."""
    cluster = agents(lab, etcd, prefix, ttl)
    chief = lab.wait_for(lambda: leader(etcd), 10, what="an etcd leader")
    try:
        before = len(cluster.transitions("a"))
        lab.partition(chief)
        time.sleep(5)       # a bench: the outage lasts this long
        lab.heal(chief)
        lab.wait_for(lambda: healthy(etcd, "a", etcd.endpoints), 20, what="etcd healthy again")
        after = cluster.transitions("a")[before:]
        for t in after:
            print(f"    a: {t['from']} -> {t['to']}: {t['reason']}")
        return not after
    finally:
        lab.heal(chief)
        stop(cluster)


def release_trial(lab, etcd, prefix) -> float:
    cluster = agents(lab, etcd, prefix)
    try:
        asked = time.monotonic()
        reply = cluster.command("a", {"command": "release", "drain_timeout_s": 30.0})   # as `hapacs release`
        if not reply.get("ok"):
            raise RuntimeError(str(reply))
        lab.wait_for(lambda: cluster.state("b") == "MASTER", 10, what="b MASTER")
        return became(cluster, "b", "MASTER") - asked
    finally:
        stop(cluster)


def summary(values: list[float]) -> str:
    return (f"median {statistics.median(values):.2f} s, min {min(values):.2f}, max {max(values):.2f} "
            f"({len(values)} trials)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--leader-cut", action="store_true", help="only the etcd leader cut, at each of --ttls")
    parser.add_argument("--ttls", default="2,3", help="TTLs for --leader-cut (default 2,3)")
    args = parser.parse_args()
    with Lab(unique_prefix("ea"), hosts=("a", "b", *ETCD_HOSTS)) as lab:
        etcd = start_etcd_cluster(lab, ETCD_HOSTS)
        if args.leader_cut:
            for ttl in map(int, args.ttls.split(",")):
                kept = sum(leader_cut_trial(lab, etcd, f"/bench/leader{ttl}-{trial}/", ttl)
                           for trial in range(args.trials))
                print(f"etcd leader cut 5 s, TTL {ttl}: the MASTER kept its lease in {kept} of {args.trials} trials",
                      flush=True)
            return 0
        kills, drops, takes, doubles, releases = [], [], [], 0, []
        for trial in range(args.trials):
            kills.append(kill_trial(lab, etcd, f"/bench/kill{trial}/"))
            dropped, taken, double = cut_trial(lab, etcd, f"/bench/cut{trial}/")
            drops.append(dropped)
            takes.append(taken)
            doubles += double
            releases.append(release_trial(lab, etcd, f"/bench/release{trial}/"))
            print(f"trial {trial}: kill -9 -> b MASTER {kills[-1]:.2f} s; cut -> a dropped {dropped:.2f} s, "
                  f"b MASTER {taken:.2f} s{' TWO HOLDERS' if double else ''}; release {releases[-1]:.2f} s",
                  flush=True)
        print(f"kill -9 -> other MASTER: {summary(kills)}")
        print(f"cut from etcd -> MASTER dropped the VIP: {summary(drops)}")
        print(f"cut from etcd -> other MASTER: {summary(takes)}")
        print(f"cut: gap between the drop and the other taking over: "
              f"{summary([t - d for t, d in zip(takes, drops)])}; trials with two holders: {doubles}")
        print(f"release -> other MASTER: {summary(releases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
