"""Footprint and false failovers of hapacs and keepalived, measured side by side.

footprint(): each daemon's CPU (share of one core) and RSS on a settled
two-node cluster, idle over a window and during a burst of SNMP GETs sent
from the workstation to the MASTER. Both have their PACS check running and
SNMP enabled: hapacs answers SNMP itself; keepalived answers through net-snmp's
snmpd (AgentX master in the same host namespace), whose cost is shown on its
own. keepalived's figures include the echoscu processes its check script runs
(children CPU of its VRRP process), since hapacs runs its check in-process.

false_failovers(): advert_interval 0.05 s on every node while stress-ng keeps
all CPUs busy for a bounded time; the number of state transitions during it
(should be 0), for hapacs with and without real-time scheduling and for
keepalived, all three clusters at once under the same load.

What it must never do: leave stress-ng or snmpd running. Both are killed by
pid (stress-ng by its process group) in a finally block; the Labs remove the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil

from lab import Lab, unique_prefix
from lab.dicom import start_storescp

from daemons import make_cluster

BENCH = os.path.dirname(os.path.abspath(__file__))
HAPACS_STATE_OID = "1.3.6.1.4.1.32473.1.1.2.0"          # HAPACS-MIB hapacsNodeState.0
KEEPALIVED_STATE_OID = "1.3.6.1.4.1.9586.100.5.2.3.1.4.1"   # KEEPALIVED-MIB vrrpInstanceState.1
SETTLE_TIMEOUT_S = 20.0
SNMPD = "/usr/sbin/snmpd"   # Debian package snmpd: keepalived answers SNMP only through it (AgentX)


def _cpu_split(pids: list[int]) -> tuple[float, float]:
    """CPU seconds of the processes themselves, and of their children that ended (check scripts)."""
    own = children = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        own += times.user + times.system
        children += times.children_user + times.children_system
    return own, children


def _cpu_seconds(pids: list[int]) -> float:
    return sum(_cpu_split(pids))


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return round(total / 2**20, 1)


def _settle(lab, cluster) -> None:
    cluster.start("a")
    lab.wait_for(lambda: cluster.state("a") == "MASTER" and lab.holders("192.0.2.100") == ["a"],
                 SETTLE_TIMEOUT_S, interval=0.05, what=f"{cluster.name}: pacs-a MASTER")
    cluster.start("b")
    lab.wait_for(lambda: cluster.state("b") == "BACKUP", SETTLE_TIMEOUT_S, interval=0.05,
                 what=f"{cluster.name}: pacs-b BACKUP")


def _start_snmpd(lab, cluster, host) -> subprocess.Popen:
    """net-snmp's snmpd as AgentX master for keepalived on `host`, answering v2c on its address."""
    directory = lab.mkdtemp(f"snmpd-{host}")
    conf = os.path.join(directory, "snmpd.conf")
    with open(conf, "w") as handle:
        handle.write(f"master agentx\nagentXSocket unix:{cluster.path(host, 'agentx.sock')}\n"
                     f"agentaddress udp:{lab.node(host).ipv4}:161\nrocommunity public default\n"
                     "dontLogTCPWrappersConnects yes\n")
    with open(os.path.join(directory, "snmpd.log"), "ab") as log:
        proc = lab.spawn(host, ["/usr/sbin/snmpd", "-f", "-Lo", "-C", "-c", conf,
                                "-p", os.path.join(directory, "snmpd.pid")], stdout=log, stderr=subprocess.STDOUT)
    lab.wait_for(lambda: ":161 " in lab.exec(host, ["ss", "-uln"]).stdout, 5, what="snmpd listening")
    return proc


def _burst(lab, host: str, oid: str, count: int) -> dict:
    completed = lab.exec("ws", [sys.executable, os.path.join(BENCH, "snmp_burst.py"), "--host",
                                lab.node(host).ipv4, "--oid", oid, "--count", str(count)], timeout=90)
    return json.loads(completed.stdout)


def footprint(idle_window_s: float = 20.0, burst_count: int = 1000, advert_interval: float = 0.1) -> dict:
    """Both daemons' clusters at once (one lab each): idle window, then one SNMP burst each."""
    with Lab(unique_prefix("fh")) as lab_h, Lab(unique_prefix("fk")) as lab_k:
        for lab in (lab_h, lab_k):
            for host in ("a", "b"):
                start_storescp(lab, lab.ns(host), port=104, aet="PACS", fork=True)
        keepalived_snmp = os.path.exists(SNMPD)
        hapacs = make_cluster("hapacs", lab_h, advert_interval, 5.0, snmp=True)
        keepalived = make_cluster("keepalived", lab_k, advert_interval, 5.0, snmp=keepalived_snmp)
        try:
            snmpd = {h: _start_snmpd(lab_k, keepalived, h) for h in ("a", "b")} if keepalived_snmp else {}
            _settle(lab_h, hapacs)
            _settle(lab_k, keepalived)
            groups = {f"hapacs pacs-{h}": hapacs.pids(h) for h in ("a", "b")}
            groups.update({f"keepalived pacs-{h}": keepalived.pids(h) for h in ("a", "b")})
            groups.update({f"snmpd pacs-{h}": [proc.pid] for h, proc in snmpd.items()})
            time.sleep(1.0)   # let start-up work finish before the window opens
            before = {label: _cpu_split(pids) for label, pids in groups.items()}
            started = time.monotonic()
            time.sleep(idle_window_s)   # the measurement window itself: nothing to wait for
            idle_elapsed = time.monotonic() - started
            idle = {}
            for label, pids in groups.items():
                own, children = (after - earlier for after, earlier in zip(_cpu_split(pids), before[label]))
                idle[label] = {"cpu_percent_of_one_core": round(100 * (own + children) / idle_elapsed, 2),
                               "of_which_check_scripts": round(100 * children / idle_elapsed, 2),
                               "rss_mb": _rss_mb(pids), "processes": len(pids)}
            bursts = {}
            targets = [("hapacs", lab_h, HAPACS_STATE_OID, ["hapacs pacs-a"])]
            if keepalived_snmp:
                targets.append(("keepalived", lab_k, KEEPALIVED_STATE_OID, ["keepalived pacs-a", "snmpd pacs-a"]))
            for name, lab, oid, labels in targets:
                before = {label: _cpu_seconds(groups[label]) for label in labels}
                result = _burst(lab, "a", oid, burst_count)
                elapsed = max(result["seconds"], 1e-3)   # the burst itself, not the client's start-up
                bursts[name] = {**result, "per_process": {
                    label: {"cpu_s": round(_cpu_seconds(groups[label]) - before[label], 3),
                            "cpu_percent_of_one_core": round(
                                100 * (_cpu_seconds(groups[label]) - before[label]) / elapsed, 1),
                            "rss_mb": _rss_mb(groups[label])}
                    for label in labels}}
            return {"idle_window_s": round(idle_elapsed, 1), "idle": idle,
                    "keepalived_snmp": "via snmpd (AgentX)" if keepalived_snmp else
                    f"not measured: {SNMPD} missing (Debian package snmpd)",
                    "snmp_burst": bursts, "burst_count": burst_count, "advert_interval_s": advert_interval}
        finally:
            keepalived.close()


def false_failovers(duration_s: float = 30.0, advert_interval: float = 0.05) -> dict:
    """Transitions during `duration_s` of stress-ng on all CPUs, per cluster (all at once)."""
    variants = (("hapacs (real-time)", "hapacs", True), ("hapacs (no real-time)", "hapacs", False),
                ("keepalived", "keepalived", True))
    with contextlib.ExitStack() as stack:
        clusters = {}
        for label, daemon, realtime in variants:
            lab = stack.enter_context(Lab(unique_prefix("ff")))
            for host in ("a", "b"):
                start_storescp(lab, lab.ns(host), port=104, aet="PACS", fork=True)
            cluster = make_cluster(daemon, lab, advert_interval, 5.0, realtime=realtime)
            stack.callback(cluster.close)
            clusters[label] = (lab, cluster)
        for lab, cluster in clusters.values():
            _settle(lab, cluster)
        time.sleep(1.0)
        start_t = time.monotonic()
        stress = subprocess.Popen(["stress-ng", "--cpu", "0", "--timeout", f"{int(duration_s)}s", "--quiet"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            stress.wait(duration_s + 10)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stress.pid, signal.SIGKILL)
            stress.wait(5)
        time.sleep(1.0)   # a transition caused by the load may come just after it
        result = {}
        for label, (lab, cluster) in clusters.items():
            during = {h: [t for t in cluster.transitions(h) if t["monotonic"] >= start_t] for h in ("a", "b")}
            result[label] = {
                "transitions": sum(len(during[h]) for h in ("a", "b")),
                "changes": [f"pacs-{h}: {t['from']} -> {t['to']} at +{t['monotonic'] - start_t:.2f} s"
                            for h in ("a", "b") for t in during[h]],
                "holders_after": lab.holders("192.0.2.100"),
            }
        return {"duration_s": duration_s, "advert_interval_s": advert_interval, "cpus": os.cpu_count(),
                "stress": f"stress-ng --cpu 0 --timeout {int(duration_s)}s", "clusters": result}
