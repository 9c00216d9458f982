"""What hapacs's etcd client costs against the lab's 3-member etcd 3.4 cluster.

In one lab (etcd in hosts a, b, c; the client in the workstation through
lab/etcdprobe.py, a new Python process per scenario), per trial:
- a lease grant and 5 keepalives (each a new TCP connection, Connection: close);
- a key taken with a TTL-2 lease never renewed: time from the take until a watch
  sees it deleted (etcd's lease expiry, as a rival would see it);
- a read with a silently cut follower first in the list (attempt timeout 0.5 s); a read
  from the other two just after the leader is cut (it answers once they have elected a
  new leader); at the end, a read with a killed follower first (connection refused).
Then the same grant/keepalive over TLS (one member, client certificates).

Run as root: .venv/bin/python bench/etcd.py [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lab import Lab, unique_prefix  # noqa: E402
from lab.etcd import follower, healthy, kill_member, leader, start_etcd_cluster  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(REPO, "lab", "etcdprobe.py")


def probe(lab, *args, timeout_s=1.0, tls=None) -> dict:
    options = ["--timeout", str(timeout_s)]
    if tls:
        options += ["--ca", tls.ca_file, "--cert", tls.cert_file, "--key", tls.key_file]
    completed = lab.exec("ws", [sys.executable, PROBE, *options, *args], check=False, timeout=60)
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr)
    answer = json.loads(completed.stdout)
    if "error" in answer:
        raise RuntimeError(f"{args}: {answer}")
    return answer


def read_with_first_cut(lab, etcd, cut_host: str, timeout_s: float, ask_cut: bool = True) -> float:
    """A read just after `cut_host` is silently cut off, asking it first (or only the others).
    Seconds until it answered."""
    others = [url for host, url in etcd.urls.items() if host != cut_host]
    lab.partition(cut_host)
    try:
        asked = [etcd.urls[cut_host], *others] if ask_cut else others
        return probe(lab, "get", ",".join(asked), "k", timeout_s=timeout_s)["elapsed_s"]
    finally:
        lab.heal(cut_host)
        lab.wait_for(lambda: leader(etcd) and healthy_all(lab, etcd), 20)


def healthy_all(lab, etcd) -> bool:
    return healthy(etcd, "ws", etcd.endpoints)


def ms(values) -> str:
    values = sorted(v * 1000 for v in values)
    return f"median {statistics.median(values):.1f} ms, min {values[0]:.1f}, max {values[-1]:.1f} (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    trials = parser.parse_args().trials
    # the probe imports hapacs from this repository
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    grants, keepalives, expiries, cut, leader_cut = [], [], [], [], []
    with Lab(unique_prefix("eb"), hosts=("a", "b", "c")) as lab:
        etcd = start_etcd_cluster(lab)
        urls = etcd.urls
        for trial in range(trials):
            lease = probe(lab, "lease", urls["a"], "3")
            grants.append(lease["grant_s"])
            keepalives += lease["keepalive_s"]
            expiries.append(probe(lab, "expire", ",".join(etcd.endpoints), f"/bench/{trial}", "2")["expired_after_s"])
            cut.append(read_with_first_cut(lab, etcd, follower(etcd), 0.5))
            leader_cut.append(read_with_first_cut(lab, etcd, lab.wait_for(lambda: leader(etcd), 10), 5.0,
                                                  ask_cut=False))
        killed_host = follower(etcd)
        kill_member(etcd, killed_host)
        killed = probe(lab, "get", ",".join([urls[killed_host]] + [u for h, u in urls.items() if h != killed_host]),
                       "k")["elapsed_s"]
        kill_member(etcd, "b")
        secure = start_etcd_cluster(lab, ("b",), tls=True)
        tls = [probe(lab, "lease", secure.urls["b"], "3", tls=secure.tls) for _ in range(trials)]
    print(f"lease grant:              {ms(grants)}")
    print(f"lease keepalive:          {ms(keepalives)}")
    print(f"TLS grant:                {ms([t['grant_s'] for t in tls])}")
    print(f"TLS keepalive:            {ms([k for t in tls for k in t['keepalive_s']])}")
    print(f"TTL-2 key gone (watch):   {ms(expiries)}")
    print(f"read, cut follower first: {ms(cut)} (attempt timeout 500 ms)")
    print(f"read, leader just cut:    {ms(leader_cut)} (asking the other two: they elect a leader first)")
    print(f"read, killed follower first: {killed * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
