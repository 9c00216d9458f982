"""The load-balancing figures in one run, proxy and direct side by side.

Runs, one after another, each in its own lab: bench/balance.py (distribution, slow member; proxy),
bench/proxy.py and bench/direct.py (member death, drain, balancer host loss; the same three
hosts in both modes), and bench/throughput.py for --serve both, a and b (both modes each); then
prints one table: each figure for proxy and for direct, with the load average when it was taken.
Every script's own JSON is kept beside the table (--out DIRECTORY).

Run as root: .venv/bin/python bench/balancing.py [--trials 10] [--drains 4] [--releases 2] [--rounds 6]
    [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
from bench.common import load_average, not_root  # noqa: E402


def run(script: str, *args: str) -> str:
    print(f"== {script} {' '.join(args)} (load {load_average()})", flush=True)
    done = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed: {done.stderr[-2000:]}")
    return done.stdout


def json_objects(text: str) -> list[dict]:
    """The JSON objects a script printed (throughput.py prints one per mode)."""
    decoder, found, index = json.JSONDecoder(), [], 0
    while (start := text.find("{\n", index)) >= 0:
        try:
            value, index = decoder.raw_decode(text, start)
            found.append(value)
        except json.JSONDecodeError:
            index = start + 1
    return found


def span(values) -> str:
    values = [v for v in values if v is not None]
    return f"{min(values):.3f}-{max(values):.3f}" if values else "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--drains", type=int, default=4)
    parser.add_argument("--releases", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out")
    args = parser.parse_args()
    if not_root("bench/balancing.py"):
        return 1
    out = args.out or tempfile.mkdtemp(prefix="hapacs-balancing-")
    os.makedirs(out, exist_ok=True)
    table: list[tuple[str, str, str]] = []     # (figure, proxy, direct)

    spread = json_objects(run("balance.py", "--trials", "1", "--held", "16", "--slow-ms", "20", "--parallel", "8"))[0]
    slow = spread["slow"]
    table.append(("16 held associations per member", f"{spread['spread']} (load {spread['spread_load']})",
                  "by hash of the client's port (see the drain's held_on_b_before)"))
    table.append(("8 clients, pacs-b 20 ms slow: per member", f"{slow['b_slow']['per_member']} against "
                  f"{slow['even']['per_member']} (load {slow['b_slow']['load']})", "not measured"))

    run("proxy.py", "--trials", str(args.trials), "--drains", str(args.drains), "--json", f"{out}/proxy.json",
        "--png", f"{out}/proxy.png")
    run("direct.py", "--trials", str(args.trials), "--releases", str(args.releases), "--json", f"{out}/direct.json",
        "--png", f"{out}/direct.png")
    with open(f"{out}/proxy.json") as handle:
        proxy = json.load(handle)
    with open(f"{out}/direct.json") as handle:
        direct = json.load(handle)
    member, dmember = proxy["member"], direct["member"]
    table.append(("member killed: new associations all on the others after (s)",
                  f"{member['last_association_to_b_s']} (HAProxy's last to pacs-b; load {member['load']})",
                  f"{dmember['map_moved_s']} (map moved; load {dmember['load']})"))
    table.append(("member killed: failed (open at the kill / started after)",
                  f"{member['failed_open_at_the_kill']} / {member['failed'] - member['failed_open_at_the_kill']}",
                  f"{dmember['failed_open_at_the_kill']} / {dmember['failed'] - dmember['failed_open_at_the_kill']}"))
    drains, ddrain = proxy["drain"], direct["drain"]
    table.append(("drain on: the last new association to the member after it (s)",
                  f"socket {span(d['last_new_association_to_b_s'] for d in drains if d['via'] == 'control socket')}, "
                  f"hapacs {span(d['last_new_association_to_b_s'] for d in drains if d['via'] != 'control socket')} "
                  f"(load {drains[0]['load']} .. {drains[-1]['load']})",
                  f"table loaded {ddrain['table_loaded_s']}, {ddrain['of_16_new_on_b']} of 16 new on pacs-b "
                  f"(load {ddrain['load']})"))
    table.append(("drain on: failed echoes / stores, held answering",
                  f"{sum(d['failed_echoes'] for d in drains)} / {sum(d['failed_stores'] for d in drains)}, "
                  f"{sum(d['held_answering'] for d in drains)} of {16 * len(drains)}",
                  f"{ddrain['failed_echoes']} / {ddrain['failed_stores']}, {ddrain['first_answering']} and "
                  f"{ddrain['second_answering']} of 16"))
    loss, dloss = proxy["balancer_loss"], direct["balancer_loss"]
    table.append(("balancer host loss: outage median / p95 (s)",
                  f"{loss['outage_median_s']:.3f} / {loss['outage_p95_s']:.3f} ({len(loss['rows'])} trials, load "
                  f"{loss['rows'][0]['load']} .. {loss['rows'][-1]['load']})",
                  f"{dloss['outage_median_s']:.3f} / {dloss['outage_p95_s']:.3f} ({len(dloss['rows'])} trials, load "
                  f"{dloss['rows'][0]['load']} .. {dloss['rows'][-1]['load']})"))

    for serve in ("both", "a", "b"):
        text = run("throughput.py", "--modes", "proxy,direct", "--serve", serve, "--rounds", str(args.rounds),
                   "--echo-seconds", "2", "--stores", "2", "--megabytes", "32")
        with open(f"{out}/throughput-{serve}.json", "w") as handle:
            handle.write(text)
        cells = {}
        for result in json_objects(text):
            summary = result["summary"]
            cells[result["mode"]] = (
                f"{result['ratio_echo']['median']} ({summary['straight']['echo_associations_per_s']:.0f} -> "
                f"{summary['balancer']['echo_associations_per_s']:.0f}/s), C-STORE {result['ratio_store']['median']} "
                f"(load {result['load_at_start'][0]} -> {result['load_at_end'][0]})")
        table.append((f"throughput, members {serve}: associations/s ratio", cells.get("proxy", ""),
                      cells.get("direct", "")))

    print("\n| figure | proxy | direct |\n| --- | --- | --- |")
    for figure, in_proxy, in_direct in table:
        print(f"| {figure} | {in_proxy} | {in_direct} |")
    print(f"\n(every script's JSON and the pictures: {out}; load at the end {load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
