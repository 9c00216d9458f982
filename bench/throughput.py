"""Throughput through the balancer vs straight to the same member(s), in one run, for each mode.

Two nodes (balance: mode proxy, HAProxy on both; then mode direct, nftables), each with a dcmtk
storescp as its PACS
(one association at a time, TCP_NODELAY, --ignore: it receives every byte but writes
nothing, so the disk is not measured). From the workstation, alternating rounds:

- echo: sequential associations (A-ASSOCIATE, one C-ECHO, A-RELEASE) with the raw-socket
  client bench/dicomload.py, per second; straight to the member(s) vs through VIP:104.
  --serve both (the default): the balancer over both members against straight to each in turn;
  --serve a or b: the balancer's only member is pacs-a (the VIP holder: no hop between nodes) or
  pacs-b (every association crosses from pacs-a to pacs-b), against straight to that member.
- store: one dcmtk storescu association sending --stores copies of a --megabytes MiB CT
  image, MB/s (10^6 bytes of the files per second, from the start of storescu to its end);
  straight (to the first member) vs through the VIP.

Prints the medians, every round, and the ratios balancer/straight (goal: proxy >= 70 %, direct
>= 95 %). Where the CPU goes, per echo round: the client's own CPU time, each storescp's, HAProxy's
(all its processes), and the whole machine's busy time (/proc/stat, which also counts the kernel's
packet work, the client's Python start and anything else running), each per association.
The machine's cores are shared: alternating rounds put the noise on both paths alike, and
the ratios are the median of each round's pair. The lab's namespaces reuse TIME_WAIT ports
(net.ipv4.tcp_tw_reuse=1, ports 1024-65000), as a load generator must.

Run as root: .venv/bin/python bench/throughput.py [--rounds 5] [--echo-seconds 3] [--megabytes 32] [--stores 4]
    [--modes proxy,direct] [--serve both|a|b] [--parallel N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil                                   # noqa: E402

from lab import Lab, unique_prefix              # noqa: E402
from lab.cluster import AgentCluster            # noqa: E402
from lab.dicom import NODELAY_ENV, STORESCP, wait_until_serving   # noqa: E402

VIP = "192.0.2.100"
PORT = 11112
STORESCU = "/usr/bin/storescu"
LOAD = str(Path(__file__).resolve().parent / "dicomload.py")
ADDRESSES = {"a": "192.0.2.11", "b": "192.0.2.12"}


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent working so far (all cores; /proc/stat: user, nice, system,
    irq, softirq; not idle, iowait or the time the hypervisor gave to other machines)."""
    with open("/proc/stat") as handle:
        user, nice, system, _idle, _iowait, irq, softirq = [int(x) for x in handle.readline().split()[1:8]]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def cpu_s(processes: list) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def haproxies(directory: str) -> list:
    """The HAProxy processes the lab's agents started (their configuration lies under `directory`)."""
    return [p for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "haproxy" and directory in " ".join(p.info["cmdline"] or [])]


def start_pacs(lab, host: str, port: int = PORT):
    """A storescp that receives and drops what it gets (no disk), one association at a time."""
    directory = Path(lab.mkdtemp(f"scp-{host}"))
    log = directory / "storescp.log"
    argv = [STORESCP, "--aetitle", "PACS", "--output-directory", str(directory), "--disable-host-lookup",
            "--ignore", "--acse-timeout", "5", "--dimse-timeout", "5", str(port)]
    with open(log, "ab") as handle:
        process = lab.spawn(host, argv, env=NODELAY_ENV, stdout=handle, stderr=subprocess.STDOUT)
    wait_until_serving(lab, process, lab.ns(host), [port], lambda: True, "storescp", log, 5.0)
    return process


def write_image(path: Path, megabytes: int) -> int:
    """A CT image of about `megabytes` MiB (16-bit pixels), as a DICOM file; returns its size."""
    from pydicom.uid import ExplicitVRLittleEndian
    from lab.probe import make_ct_dataset
    dataset = make_ct_dataset()
    side = int((megabytes * 2**20 / 2) ** 0.5)
    dataset.Rows = dataset.Columns = side
    dataset.PixelData = os.urandom(side * side * 2)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)
    return path.stat().st_size


def member_states(cluster) -> dict[str, str]:
    services = (cluster.status("a") or {}).get("balance", {}).get("services", [])
    return {m["name"]: m["state"] for m in services[0]["members"]} if services else {}


def echo_round(lab, paths: dict, path: str, seconds: float, watched: dict, parallel: int = 1) -> dict:
    """One round of sequential associations; with the CPU seconds per association of the client,
    the PACS (both storescp), HAProxy and the whole machine."""
    host, port = paths[path]
    before = {name: cpu_s(processes) for name, processes in watched.items()}
    busy, started = machine_busy_s(), time.monotonic()
    done = lab.exec("ws", [sys.executable, LOAD, "echo", host, str(port), "PACS", "--count", "100000",
                           "--seconds", str(seconds), "--parallel", str(parallel)], timeout=seconds + 30)
    busy, wall = machine_busy_s() - busy, time.monotonic() - started
    result = json.loads(done.stdout)
    count = max(result["associations"], 1)
    result["cpu_ms_per_association"] = {
        "client": round(1000 * result["cpu_s"] / count, 3),
        **{name: round(1000 * (cpu_s(processes) - before[name]) / count, 3) for name, processes in watched.items()},
        "machine": round(1000 * busy / count, 3)}
    # over the whole client process, its Python start included (about 0.2 s of one core)
    result["machine_busy_cores"] = round(busy / wall, 2)
    return result


def store_round(lab, paths: dict, path: str, image: Path, stores: int) -> dict:
    host, port = paths[path]
    host = host.split(",")[0]       # one storescu association: to the first member
    started = time.monotonic()
    done = lab.exec("ws", [STORESCU, "--aetitle", "WS", "--call", "PACS",
                           host, str(port), *[str(image)] * stores], check=False, timeout=120)
    elapsed = time.monotonic() - started
    # storescu says nothing when every store succeeded; "E:"/"W:" lines name a failed one.
    ok = done.returncode == 0 and not (done.stdout + done.stderr).strip()
    size = image.stat().st_size * stores
    return {"ok": ok, "seconds": round(elapsed, 3), "mb_per_s": round(size / elapsed / 1e6, 1),
            **({} if ok else {"error": (done.stdout + done.stderr)[-300:]})}


def run(rounds: int, echo_seconds: float, megabytes: int, stores: int, mode: str = "proxy", serve: str = "both",
        parallel: int = 1) -> dict:
    """`serve`: the members the balancer uses (a, b or both); the straight path goes to the same
    member(s), each in turn for both."""
    port = PORT if mode == "proxy" else 104     # direct: the PACS listens on the VIP's port
    straight = ",".join(ADDRESSES[h] for h in ("ab" if serve == "both" else serve))
    paths = {"straight": (straight, port), "balancer": (VIP, 104)}
    check = [{"name": "pacs-dicom", "type": "dicom-echo", "port": port, "called_ae": "PACS",
              "interval": 1.0, "timeout": 2.0, "fall": 3, "rise": 2}]
    service = {"name": "dicom", "address": VIP, "port": 104, "health": "pacs-dicom"}
    balance = ({"services": [{**service, "target_port": PORT}]} if mode == "proxy"
               else {"mode": "direct", "services": [service]})
    if serve != "both":
        balance["members"] = [{"name": f"pacs-{serve}", "address": ADDRESSES[serve]}]
    results: dict = {"mode": mode, "serve": serve, "parallel": parallel, "straight": straight,
                     "rounds": rounds, "echo_seconds": echo_seconds, "stores": stores,
                     "load_at_start": [round(x, 2) for x in os.getloadavg()]}
    with Lab(unique_prefix("lo")) as lab:
        # Thousands of short associations a second leave their ports in TIME_WAIT for 60 s (on the
        # workstation, and on the balancing node for HAProxy's own connections to the members):
        # without reuse, later rounds wait for free ports and measure that. Lab namespaces only.
        for host in ("ws", "a", "b"):
            lab.exec(host, ["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1",
                            "net.ipv4.ip_local_port_range=1024 65000"])
        pacs = {}
        for host in "ab":
            if mode == "direct":     # what every member needs (README): the VIP on lo, the ARP sysctls
                ifname = lab.node(host).ifname
                lab.exec(host, ["ip", "address", "add", f"{VIP}/32", "dev", "lo"])
                lab.exec(host, ["sysctl", "-qw", f"net.ipv4.conf.{ifname}.arp_ignore=1",
                                f"net.ipv4.conf.{ifname}.arp_announce=2"])
            pacs[host] = psutil.Process(start_pacs(lab, host, port).pid)
        cluster = AgentCluster(lab, checks={"a": check, "b": check})
        for host, priority in (("a", 150), ("b", 100)):
            cluster.add(host, priority, balance=balance)
        cluster.start_all()
        lab.wait_for(lambda: set(member_states(cluster).values()) == {"up"} and cluster.state("a") == "MASTER",
                     30, what="cluster balancing over both members")
        image = Path(lab.mkdtemp("image")) / "ct.dcm"
        results["image_bytes"] = write_image(image, megabytes)
        watched = {"storescp_a": [pacs["a"]], "storescp_b": [pacs["b"]], "haproxy": haproxies(cluster.dir),
                   "agents": [psutil.Process(p.pid) for p in cluster.procs.values()]}
        rows: dict = {path: {"echo": [], "store": []} for path in paths}
        for number in range(rounds):
            order = list(paths) if number % 2 == 0 else list(reversed(paths))
            for path in order:
                rows[path]["echo"].append(echo_round(lab, paths, path, echo_seconds, watched, parallel))
            for path in order:
                rows[path]["store"].append(store_round(lab, paths, path, image, stores))
        results["rounds_detail"] = rows
        results["members_after"] = member_states(cluster)
    summary = {}
    for path, row in rows.items():
        summary[path] = {
            "echo_associations_per_s": statistics.median(r["per_second"] for r in row["echo"]),
            "echo_failed": sum(r["failed"] for r in row["echo"]),
            "store_mb_per_s": statistics.median(r["mb_per_s"] for r in row["store"] if r["ok"])
            if any(r["ok"] for r in row["store"]) else None,
            "store_failed": sum(not r["ok"] for r in row["store"]),
            "cpu_ms_per_association": {name: statistics.median(r["cpu_ms_per_association"][name] for r in row["echo"])
                                       for name in row["echo"][0]["cpu_ms_per_association"]},
            "machine_busy_cores": statistics.median(r["machine_busy_cores"] for r in row["echo"]),
        }
    results["summary"] = summary
    # Each round's balancer figure over the same round's straight one, then their median: the
    # load of other programs drifts, and a pair measured seconds apart shares most of it.
    results["ratio_echo"] = _paired(rows, "echo", "per_second")
    results["ratio_store"] = _paired(rows, "store", "mb_per_s")
    results["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def _paired(rows: dict, kind: str, key: str) -> dict:
    pairs = zip(rows["straight"][kind], rows["balancer"][kind])
    ratios = [balancer[key] / straight[key] for straight, balancer in pairs
              if straight[key] and balancer[key] and straight.get("ok", True) and balancer.get("ok", True)]
    return {"median": round(statistics.median(ratios), 3) if ratios else None,
            "min": round(min(ratios), 3) if ratios else None, "max": round(max(ratios), 3) if ratios else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--echo-seconds", type=float, default=3.0)
    parser.add_argument("--megabytes", type=int, default=32)
    parser.add_argument("--stores", type=int, default=4)
    parser.add_argument("--modes", default="proxy,direct")
    parser.add_argument("--serve", choices=("a", "b", "both"), default="both",
                        help="the members the balancer uses; straight goes to the same (both: each in turn)")
    parser.add_argument("--parallel", type=int, default=1, help="echo clients at once")
    parser.add_argument("--detail", action="store_true", help="print every round too")
    args = parser.parse_args()
    for mode in args.modes.split(","):
        result = run(min(args.rounds, 50), min(args.echo_seconds, 30.0), min(args.megabytes, 256),
                     min(args.stores, 32), mode, args.serve, min(args.parallel, 16))
        print(json.dumps(result if args.detail else {k: v for k, v in result.items() if k != "rounds_detail"},
                         indent=1), flush=True)


if __name__ == "__main__":
    main()
