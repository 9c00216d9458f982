"""One failover trial: a fresh lab, a two-node cluster, a workstation, one fault.

What it is for: bench/failover calls run_trial() for every (scenario,
daemon, trial) and aggregates the rows it returns. Each trial builds its own
Lab (pacs-a priority 150 and pacs-b priority 100, each with dcmtk storescp
serving associations concurrently, and a workstation), so no trial inherits
ARP caches, leases or half-open associations from another. The Lab removes
every namespace and process when the trial ends, whatever happened.

The workstation (lab.probe) C-ECHOes the VIP every 20 ms and runs a C-STORE
loop. Unplanned faults use a 0.2 s client timeout, so the workstation keeps
trying every 20 ms like a retrying client, and the outage measures the HA
system rather than TCP's 1 s SYN retransmission. Planned moves (release,
restart) use a realistic 3 s client timeout: a connection that waits a moment
and then succeeds is no failure there.

What it must never do: wait without a bound. Every wait has a deadline; a
trial that misses one is recorded as such (recovered False, or no single
holder) rather than hanging the benchmark.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from lab import Lab, unique_prefix
from lab.dicom import start_storescp
from lab.outage import load, outage
from lab.probe import start_probe

from daemons import VIP, make_cluster


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    planned: bool
    final_holder: str | None   # who must be the only holder afterwards (None: either host)


SCENARIOS = {s.key: s for s in (
    Scenario("agent_killed", "MASTER agent killed (kill -9)", False, "b"),
    Scenario("link_down", "MASTER link down", False, "b"),
    Scenario("partition", "silent partition of the MASTER (healed after 3 s)", False, None),
    Scenario("agent_hung", "MASTER agent hung (SIGSTOP)", False, "b"),
    Scenario("pacs_killed", "PACS service killed on the MASTER", False, "b"),
    Scenario("release", "planned release", True, "b"),
    Scenario("restart", "agent restart on the MASTER", True, "a"),
)}


@dataclass(frozen=True)
class Settings:
    advert_interval: float = 0.1
    preempt_delay: float = 5.0            # hapacs default
    restart_preempt_delay: float = 1.0    # shortened for the restart scenario only, to keep the run short
    holder_wait_s: float = 10.0           # how long to wait for exactly one holder
    unplanned_timeout_s: float = 0.2      # workstation per-attempt timeout for unplanned faults
    planned_timeout_s: float = 3.0        # ... and for planned moves
    partition_hold_s: float = 3.0         # a partition is healed this long after it began
    realtime: bool = True                 # hapacs under chrt -r 10, as its systemd unit
    keepalived_fall: int = 2


PROBE_INTERVAL_S = 0.02
PROBE_OVERLAP = 50        # echoes start every 20 ms whether or not earlier ones ended
PROBE_DURATION_S = 90.0   # upper bound; each trial stops its probe long before
START_TIMEOUT_S = 20.0
RECOVERY_TIMEOUT_S = 20.0
POLL_S = 0.05


class TrialFailed(RuntimeError):
    """The trial could not set up (cluster never settled, workstation never served)."""


def _wait(predicate, timeout_s, interval=POLL_S):
    """Poll until predicate() is truthy; return the monotonic time it was, or None at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class Workstation:
    def __init__(self, lab, timeout_s):
        self.path = os.path.join(lab.tmpdir, "workstation.jsonl")
        self.lab = lab
        self.proc = start_probe(lab, self.path, VIP, port=104, called_ae="PACS", interval=PROBE_INTERVAL_S,
                                duration=PROBE_DURATION_S, store=True, timeout=timeout_s,
                                overlap=PROBE_OVERLAP)

    def records(self) -> list[dict]:
        try:
            return load(self.path)
        except OSError:
            return []

    def served(self, since: float, echoes=10, stores=1) -> bool:
        ok = [r for r in self.records() if r["ok"] and r["t"] > since]
        return (sum(r["kind"] == "echo" for r in ok) >= echoes
                and sum(r["kind"] == "store" for r in ok) >= stores)

    def stop(self) -> list[dict]:
        self.lab.stop(self.proc, timeout=5)
        return self.records()


def longest_gap(records, since: float, until: float) -> float | None:
    """Longest time between the starts of consecutive successful C-ECHOs, from the last one
    before `since` to the first after `until` (or the last one, if none after)."""
    ok = sorted(r["t"] for r in records if r["kind"] == "echo" and r["ok"])
    before = [t for t in ok if t < since]
    window = ([before[-1]] if before else []) + [t for t in ok if since <= t <= until]
    after = [t for t in ok if t > until]
    window += after[:1]
    if len(window) < 2:
        return None
    return max(b - a for a, b in zip(window, window[1:]))


def run_trial(daemon: str, scenario: Scenario, settings: Settings, keep_timeline=False) -> dict:
    preempt_delay = settings.restart_preempt_delay if scenario.key == "restart" else settings.preempt_delay
    with Lab(unique_prefix("bf")) as lab:
        cluster = make_cluster(daemon, lab, settings.advert_interval, preempt_delay, realtime=settings.realtime,
                               keepalived_fall=settings.keepalived_fall)
        pacs = {h: start_storescp(lab, lab.ns(h), port=104, aet="PACS", fork=True) for h in ("a", "b")}
        try:
            return _trial(lab, cluster, pacs, daemon, scenario, settings, keep_timeline)
        finally:
            for proc in pacs.values():   # storescp and the children serving associations
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for host in ("a", "b"):   # a SIGSTOPped daemon would hold teardown up for its grace time
                for pid in cluster.pids(host):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            cluster.close()


def _holds_alone(lab, cluster, host):
    return lab.holders(VIP) == [host] and cluster.state(host) == "MASTER"


def _trial(lab, cluster, pacs, daemon, scenario, settings, keep_timeline) -> dict:
    timeout_s = settings.planned_timeout_s if scenario.planned else settings.unplanned_timeout_s
    ws = Workstation(lab, timeout_s)   # starts importing pynetdicom while the cluster comes up
    cluster.start("a")
    if _wait(lambda: _holds_alone(lab, cluster, "a"), START_TIMEOUT_S) is None:
        raise TrialFailed(f"{daemon}: pacs-a never became the only MASTER")
    cluster.start("b")
    if _wait(lambda: cluster.state("b") == "BACKUP" and _holds_alone(lab, cluster, "a"), START_TIMEOUT_S) is None:
        raise TrialFailed(f"{daemon}: pacs-b never became BACKUP")
    settled_t = time.monotonic()
    if _wait(lambda: ws.served(settled_t, echoes=25, stores=3), START_TIMEOUT_S) is None:
        raise TrialFailed(f"{daemon}: the workstation was never served")
    transitions_before = {h: cluster.transitions(h) for h in ("a", "b")}

    heal_t = None
    if scenario.planned:
        fault_t, holder_t, end_t = _planned(lab, cluster, scenario, settings, ws)
        reference_t = fault_t
    else:
        fault_t = _inject(lab, cluster, pacs, scenario)
        _wait(lambda: ws.served(fault_t), RECOVERY_TIMEOUT_S)
        reference_t = fault_t
        if scenario.key == "partition":
            time.sleep(max(0.0, fault_t + settings.partition_hold_s - time.monotonic()))  # the partition lasts
            lab.heal("a")
            heal_t = reference_t = time.monotonic()
            holder_t = _wait(lambda: any(_holds_alone(lab, cluster, h) for h in ("a", "b")),
                             settings.holder_wait_s)
        else:
            holder_t = _wait(lambda: _holds_alone(lab, cluster, scenario.final_holder),
                             settings.holder_wait_s - (time.monotonic() - fault_t))
        # A second of service after the last change, so failures it caused are counted.
        _wait(lambda: ws.served(max(holder_t or 0.0, heal_t or 0.0), echoes=25, stores=2), 5.0)
        end_t = time.monotonic()
    final_holders = lab.holders(VIP)
    if scenario.key == "agent_hung":
        cluster.signal("a", signal.SIGKILL)   # a stopped agent cannot answer a status request
    transitions = {h: cluster.transitions(h) or transitions_before[h] for h in ("a", "b")}
    records = ws.stop()
    return _row(daemon, scenario, records, transitions, fault_t, heal_t, end_t, reference_t, holder_t,
                final_holders, keep_timeline)


def _inject(lab, cluster, pacs, scenario) -> float:
    """Inject the fault on pacs-a (the MASTER); return the monotonic time it took effect."""
    if scenario.key == "agent_killed":
        return cluster.signal("a", signal.SIGKILL)
    if scenario.key == "agent_hung":
        return cluster.signal("a", signal.SIGSTOP)
    if scenario.key == "link_down":
        lab.link_down("a")
        return time.monotonic()
    if scenario.key == "partition":
        lab.partition("a")
        return time.monotonic()   # the port is silent from here
    if scenario.key == "pacs_killed":
        fault_t = time.monotonic()
        os.killpg(pacs["a"].pid, signal.SIGKILL)   # storescp and its association children
        pacs["a"].wait(5)
        return fault_t
    raise ValueError(scenario.key)


def _planned(lab, cluster, scenario, settings, ws) -> tuple[float, float | None, float]:
    """Move the VIP on purpose; return (command time, when the final holder held it alone, end)."""
    fault_t = time.monotonic()
    if scenario.key == "release":
        cluster.release("a")
        holder_t = _wait(lambda: _holds_alone(lab, cluster, "b"), settings.holder_wait_s)
    else:   # restart: SIGTERM the daemon on the MASTER, start it again, it preempts back
        cluster.stop("a")
        _wait(lambda: _holds_alone(lab, cluster, "b"), settings.holder_wait_s)
        cluster.start("a")
        holder_t = _wait(lambda: _holds_alone(lab, cluster, "a"),
                         settings.restart_preempt_delay + settings.holder_wait_s)
    moved_t = time.monotonic()
    _wait(lambda: ws.served(moved_t, echoes=25, stores=3), 10.0)
    return fault_t, holder_t, time.monotonic()


def _row(daemon, scenario, records, transitions, fault_t, heal_t, end_t, reference_t, holder_t,
         final_holders, keep_timeline) -> dict:
    echo = outage(records, fault_t, "echo")
    # Every attempt the fault could have spoiled: those still running when it struck, too.
    in_window = [r for r in records if r["end"] >= fault_t and r["t"] <= end_t]
    failed = {kind: sum(1 for r in in_window if r["kind"] == kind and not r["ok"]) for kind in ("echo", "store")}
    gap = longest_gap(records, fault_t, end_t)
    took_over = [t for t in transitions["b"] if t["to"] == "MASTER" and t["monotonic"] >= fault_t]
    row = {
        "daemon": daemon,
        "scenario": scenario.key,
        # unplanned: last success before the fault to the first after it (lab.outage);
        # planned: the longest gap between successes while the VIP moved (it moves after the command)
        "outage_s": gap if scenario.planned else echo["outage_s"],
        "longest_gap_s": gap,
        "recovered": echo["recovered"],
        "recovery_s": echo["recovery_s"],
        "failed_echo": failed["echo"],
        "failed_store": failed["store"],
        "attempts": {kind: sum(1 for r in in_window if r["kind"] == kind) for kind in ("echo", "store")},
        "errors": echo["errors"],
        "takeover_s": took_over[0]["monotonic"] - fault_t if took_over else None,
        "one_holder_s": holder_t - reference_t if holder_t is not None else None,
        "one_holder_from": "heal" if heal_t is not None else "fault",
        "final_holders": final_holders,
        "one_holder": len(final_holders) == 1,
        "observed_s": end_t - fault_t,
    }
    if keep_timeline:
        start = fault_t - 1.5
        row["timeline"] = {
            "fault_t": fault_t, "heal_t": heal_t, "end_t": end_t,
            "probe": [{"t": r["t"] - fault_t, "kind": r["kind"], "ok": r["ok"]}
                      for r in records if start <= r["t"] <= end_t],
            "states": {h: [{"t": t["monotonic"] - fault_t, "to": t["to"]} for t in transitions[h]]
                       for h in ("a", "b")},
        }
    return row
