"""What hapacs's etcd client costs against the lab's 3-member etcd 3.4 cluster.

In one lab (etcd in hosts a, b, c; the client in the workstation through
lab/etcdprobe.py, a new Python process per scenario), per trial:
- a lease grant and 5 keepalives (each a new TCP connection, Connection: close);
- a key taken with a TTL-2 lease never renewed: time from the take until a watch
  sees it deleted (etcd's lease expiry, as a rival would see it);
- a read with a silently cut member first in the list (attempt timeout 0.5 s), and,
  in the last trial, with a killed member first (connection refused).
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
from lab.etcd import kill_member, start_etcd_cluster  # noqa: E402

PROBE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab", "etcdprobe.py")


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


def ms(values) -> str:
    values = sorted(v * 1000 for v in values)
    return f"median {statistics.median(values):.1f} ms, min {values[0]:.1f}, max {values[-1]:.1f} (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    trials = parser.parse_args().trials
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(PROBE) + "/..",
                                                             os.environ.get("PYTHONPATH")]))
    grants, keepalives, expiries, cut = [], [], [], []
    with Lab(unique_prefix("eb"), hosts=("a", "b", "c")) as lab:
        etcd = start_etcd_cluster(lab)
        urls = etcd.urls
        for trial in range(trials):
            lease = probe(lab, "lease", urls["a"], "3")
            grants.append(lease["grant_s"])
            keepalives += lease["keepalive_s"]
            expiries.append(probe(lab, "expire", ",".join(etcd.endpoints), f"/bench/{trial}", "2")["expired_after_s"])
            lab.partition("c")
            try:
                cut.append(probe(lab, "get", ",".join((urls["c"], urls["a"], urls["b"])), "k",
                                 timeout_s=0.5)["elapsed_s"])
            finally:
                lab.heal("c")
        kill_member(etcd, "a")
        killed = probe(lab, "get", ",".join((urls["a"], urls["b"], urls["c"])), "k")["elapsed_s"]
        kill_member(etcd, "b")
        secure = start_etcd_cluster(lab, ("b",), tls=True)
        tls = [probe(lab, "lease", secure.urls["b"], "3", tls=secure.tls) for _ in range(trials)]
    print(f"lease grant:              {ms(grants)}")
    print(f"lease keepalive:          {ms(keepalives)}")
    print(f"TLS grant:                {ms([t['grant_s'] for t in tls])}")
    print(f"TLS keepalive:            {ms([k for t in tls for k in t['keepalive_s']])}")
    print(f"TTL-2 key gone (watch):   {ms(expiries)}")
    print(f"read, cut member first:   {ms(cut)} (attempt timeout 500 ms)")
    print(f"read, killed member first: {killed * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
