"""Live demo: a two-node PACS cluster in network namespaces, and the MASTER dies.

Builds two PACS hosts (dcmtk storescp as the archive, a hapacs agent each)
and a workstation that C-ECHOes the VIP every 20 ms. Then pacs-a loses
power: its switch port goes silent and its processes are killed. Prints
the timeline and what the workstation saw. Removes everything at the end.

Run as root:  tools/demo   (or .venv/bin/python bench/demo.py)
With --sites: two sites on different networks, a routed VIP, BGP (bench/sitesdemo.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402
from lab.dicom import start_storescp            # noqa: E402
from lab.outage import answered, load, outage   # noqa: E402
from lab.probe import start_probe               # noqa: E402

VIP = "192.0.2.100"


def say(text: str = "") -> None:
    print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--advert-interval", type=float, default=0.1)
    parser.add_argument("--dead-after", type=int, default=None,
                        help="default 3; with --sites 5, above BFD's 0.3 s detection")
    parser.add_argument("--sites", action="store_true",
                        help="two sites on different networks, a routed VIP announced by BGP, the lease in etcd "
                             "(bench/sitesdemo.py)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        say("demo: run as root (it builds network namespaces)")
        return 1
    if args.sites:
        from bench import sitesdemo
        from lab.sites import AGENT_DEAD_AFTER
        return sitesdemo.main(args.advert_interval, args.dead_after or AGENT_DEAD_AFTER)
    args.dead_after = args.dead_after or 3
    with Lab(unique_prefix("dm")) as lab:
        say(f"Building the lab: namespaces {', '.join(n.ns for n in lab.nodes)} on bridge {lab.bridge}")
        pacs = {host: start_storescp(lab, lab.ns(host), port=104, aet="PACS") for host in ("a", "b")}
        cluster = AgentCluster(lab, advert_interval=args.advert_interval, dead_after=args.dead_after)
        cluster.add("a", 150)
        cluster.add("b", 100)
        cluster.start_all()
        lab.wait_for(lambda: cluster.masters() == ["a"], 10, what="pacs-a MASTER")
        say(f"pacs-a (priority 150) and pacs-b (priority 100): heartbeats every {args.advert_interval:g} s, "
            f"MASTER declared dead after {args.dead_after} missed\n")
        say(cluster.cli("a", "status").stdout)
        records_path = os.path.join(lab.tmpdir, "workstation.jsonl")
        probe = start_probe(lab, records_path, VIP, port=104, called_ae="PACS", interval=0.02, duration=30,
                            overlap=50)
        lab.wait_for(lambda: answered(records_path) >= 25, 10, what="the workstation's first C-ECHOs")
        say(f"The workstation (192.0.2.200) C-ECHOes {VIP} every 20 ms ... "
            f"{answered(records_path)} successes so far.\n")

        say("pacs-a loses power: its switch port goes silent, its agent and archive die.")
        lab.partition("a")
        fault_t = time.monotonic()   # the port is silent from here (nft takes ~10 ms to apply)
        cluster.kill("a", signal.SIGKILL)
        lab.stop(pacs["a"], timeout=1.0)
        lab.wait_for(lambda: cluster.state("b") == "MASTER", 5, what="pacs-b MASTER")
        lab.wait_for(lambda: answered(records_path, since=fault_t), 5, what="the workstation served again")
        lab.wait_for(lambda: answered(records_path, since=fault_t) >= 50, 5, what="a second of service")
        lab.stop(probe)

        records = load(records_path)
        result = outage(records, fault_t)
        took_over = [t for t in cluster.transitions("b") if t["to"] == "MASTER"][-1]
        say("\nTimeline (seconds after the power loss):")
        events = [(result["last_answer_t"] - fault_t, "last C-ECHO answered by pacs-a"),
                  (0.0, "pacs-a loses power"),
                  (took_over["monotonic"] - fault_t, f"pacs-b BACKUP -> MASTER: {took_over['reason']}"),
                  (result["served_again_t"] - fault_t, "first C-ECHO answered by pacs-b")]
        for offset, text in sorted(events):
            say(f"  {offset:+7.3f}  {text}")
        say(f"\nWhat the workstation saw: {result['outage_s'] * 1000:.0f} ms from its last answered C-ECHO "
            f"to its first one via pacs-b, {result['failures']} failed C-ECHO(s) "
            f"({', '.join(f'{n}x {e}' for e, n in result['errors'].items()) or 'none'}).\n")
        say(cluster.cli("b", "status").stdout)
        say("Removing the lab.")
    return 0



if __name__ == "__main__":
    sys.exit(main())
