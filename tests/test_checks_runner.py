"""The check runner (hapacs/checks/runner.py) on a real asyncio loop with real probes.

The loop runs in a thread that has entered a lab namespace (tests/checks_netns.py),
so its probe threads reach storescp there. Waits are conditions with deadlines;
the only timings asserted are loose bounds (precise figures belong in a benchmark).
"""

import asyncio
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from hapacs.checks import CheckRunner, Verdict, run_probe
from hapacs.checks.health import FAST_REPROBE_S
from hapacs.checks.probes import ProbeResult
from hapacs.checks.runner import STUCK_GRACE_S
from hapacs.config import CheckConfig
from lab.dicom import STORESCP, start_storescp
from tests.checks_netns import in_netns, require_tools
from tests.fixtures import lab_fixture

REPO_ROOT = Path(__file__).resolve().parent.parent
SCP_PORT, CLOSED_PORT = 11112, 18081
TICK_S = 0.05


def make_check(name, type="dicom-echo", weight=0, timeout_s=0.5, **keys):
    return CheckConfig(name=name, type=type, interval_s=0.2, timeout_s=timeout_s, fall=2, rise=2,
                       weight=weight, **keys)


ECHO = make_check("pacs-dicom", host="127.0.0.1", port=SCP_PORT, called_ae="PACS")
WEB = make_check("pacs-web", type="tcp", weight=-10, host="127.0.0.1", port=CLOSED_PORT)


net = lab_fixture("r", name="net", hosts=("a",), workstation=False,
                  before=lambda: require_tools(STORESCP, "ip", "nsenter"))


class Recorder(logging.Handler):
    """A logger whose records the test can read, and the on_change calls.

    The runner logs and swallows whatever on_change raises (a broken callback must not stop
    the checks), so on_change never asserts: it notes what is wrong in `problems`, and each
    test asserts that list is empty, outside the runner.
    """

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.calls: list[tuple[float, Verdict, list]] = []
        self.problems: list[str] = []
        self.log = logging.getLogger(f"test.checks.runner.{id(self)}")
        self.log.setLevel(logging.DEBUG)
        self.log.propagate = False
        self.log.addHandler(self)

    def emit(self, record):
        self.records.append(record)

    def on_change(self, verdict, changes):
        try:
            loop = asyncio.get_running_loop()     # the agent's loop; raises in any other thread
        except RuntimeError:
            self.problems.append(f"on_change called off the loop, in thread {threading.current_thread().name}")
            return
        self.calls.append((loop.time(), verdict, list(changes)))

    def logged(self, level):
        return [r.getMessage() for r in self.records if r.levelno == level]


async def until(predicate, timeout_s, what):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def change_times(recorder, name, up):
    return [change.at for _, _, changes in recorder.calls for change in changes
            if change.name == name and change.up is up]


# ---- up, down, up -----------------------------------------------------------------------


def test_on_change_reports_down_and_up_with_the_verdict(net):
    scp = start_storescp(net, "a", port=SCP_PORT, aet="PACS")
    recorder = Recorder()

    async def scenario():
        loop = asyncio.get_running_loop()
        runner = CheckRunner((ECHO, WEB), recorder.on_change, recorder.log)
        assert runner.verdict == Verdict(pending="waiting for check pacs-dicom to pass")
        runner.start()
        await until(lambda: runner.verdict == Verdict(penalty=10), 5, "echo up and the tcp check down")
        first = runner.snapshot(loop.time())
        killed_at = loop.time()
        net.kill(scp, signal.SIGKILL)
        await until(lambda: runner.verdict.fault is not None, 5, "the echo check to go down")
        down = runner.snapshot(loop.time())
        await asyncio.to_thread(scp.wait)
        await asyncio.to_thread(start_storescp, net, "a", port=SCP_PORT, aet="PACS")
        await until(lambda: runner.verdict.fault is None, 5, "the echo check to come up again")
        await runner.stop()
        return killed_at, first, down

    killed_at, first, down = in_netns(net.ns("a"), lambda: asyncio.run(scenario()))
    assert recorder.problems == []

    reasons = [[c.reason for c in changes] for _, _, changes in recorder.calls]
    verdicts = [verdict for _, verdict, _ in recorder.calls]
    refused = f"connection refused (127.0.0.1:{SCP_PORT})"
    assert ["check pacs-dicom up: C-ECHO success (first result)"] in reasons
    assert [f"check pacs-web down: connection refused (127.0.0.1:{CLOSED_PORT}) (2 failures in a row)"] in reasons
    assert verdicts[-3:] == [
        Verdict(penalty=10),
        Verdict(fault=f"check pacs-dicom down: {refused}", penalty=10),
        Verdict(penalty=10),
    ]
    assert reasons[-2:] == [[f"check pacs-dicom down: {refused} (2 failures in a row)"],
                            ["check pacs-dicom up: C-ECHO success (2 successes in a row)"]]
    assert all(changes or verdict != previous for (_, verdict, changes), (_, previous, _) in
               zip(recorder.calls[1:], recorder.calls)), "on_change only on a change"

    assert recorder.logged(logging.WARNING) == [
        f"check pacs-web down: connection refused (127.0.0.1:{CLOSED_PORT}) (2 failures in a row)",
        f"check pacs-dicom down: {refused} (2 failures in a row)"]
    assert recorder.logged(logging.INFO) == [
        "check pacs-dicom up: C-ECHO success (first result)",
        "check pacs-dicom up: C-ECHO success (2 successes in a row)"]

    assert [(s.name, s.type, s.ok, s.weight) for s in first] == [
        ("pacs-dicom", "dicom-echo", True, 0), ("pacs-web", "tcp", False, -10)]
    assert first[0].message == "C-ECHO success" and first[0].latency_ms < 500
    assert down[0].ok is False and down[0].message == refused and down[0].since_s >= 0

    detection_s = change_times(recorder, "pacs-dicom", False)[0] - killed_at
    # Only a sanity bound: with an interval of 0.2 s it holds with or without the fast re-probe.
    # test_a_failure_is_confirmed_50_ms_later_not_a_whole_interval_later proves that one.
    assert detection_s < 3.0, f"a killed SCP took {detection_s:.2f} s to be declared down"


# ---- the fast confirming probe ----------------------------------------------------------------


class TimedProbe:
    """run_probe, noting for each run when it started and ended, whether it confirmed, its result."""

    def __init__(self):
        self.runs: list[tuple[float, float, bool, ProbeResult]] = []   # time.monotonic() = loop.time()

    def __call__(self, check, confirming=False):
        started = time.monotonic()
        result = run_probe(check, confirming)
        self.runs.append((started, time.monotonic(), confirming, result))
        return result


def test_a_failure_is_confirmed_50_ms_later_not_a_whole_interval_later(net):
    # README: "After a first failure the confirming probe runs 50 ms later, not a whole interval
    # later, so a dead PACS is noticed about one interval after it died". A long interval (1 s)
    # makes the difference plain: without the fast re-probe the second failure comes 1 s later.
    scp = start_storescp(net, "a", port=SCP_PORT, aet="PACS")
    check = dataclasses.replace(ECHO, interval_s=1.0)
    recorder, probe = Recorder(), TimedProbe()

    async def scenario():
        loop = asyncio.get_running_loop()
        runner = CheckRunner((check,), recorder.on_change, recorder.log, probe=probe)
        runner.start()
        await until(lambda: runner.verdict == Verdict(), 5, "the echo check to come up")
        killed_at = loop.time()
        net.kill(scp, signal.SIGKILL)
        await until(lambda: runner.verdict.fault is not None, 5, "the echo check to go down")
        await runner.stop()
        return killed_at

    killed_at = in_netns(net.ns("a"), lambda: asyncio.run(scenario()))
    assert recorder.problems == []
    failed = [run for run in probe.runs if not run[3].ok]
    assert len(failed) == 2, failed
    (_, first_end, first_confirming, _), (second_start, _, second_confirming, second) = failed
    assert (first_confirming, second_confirming) == (False, True)
    down_at = change_times(recorder, "pacs-dicom", False)[0]
    # bench/confirm.py on the 2-CPU test VM (10 trials): confirmed 51-53 ms after the first failure
    # ended (FAST_REPROBE_S plus the loop's wake-up), down 51-56 ms after it, 0.23-1.03 s after the
    # kill. Bounds: the README's 50 ms (or one interval plus one refused association, ~0.11 s)
    # plus 250 ms for a shared, noisy machine; without the fast re-probe it is a whole interval.
    assert second_start - first_end < FAST_REPROBE_S + 0.25, \
        f"the confirming probe ran {second_start - first_end:.2f} s after the first failure"
    assert second.latency_ms < 50, f"the confirming probe took {second.latency_ms:.0f} ms (no TCP pre-check?)"
    assert down_at - first_end < FAST_REPROBE_S + 0.25
    assert down_at - killed_at < check.interval_s + 0.11 + FAST_REPROBE_S + 0.25, \
        f"a killed SCP took {down_at - killed_at:.2f} s to be declared down"


# ---- a hung SCP --------------------------------------------------------------------------


def socket_count():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # closed by another thread meanwhile
            pass
    return count


class CountingProbe:
    """run_probe, counting how many runs of each check are in flight at once."""

    def __init__(self, probe=run_probe):
        self.probe = probe
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.most_at_once = 0
        self.calls = 0

    def __call__(self, check, confirming=False):
        with self.lock:
            self.calls += 1
            self.running[check.name] = self.running.get(check.name, 0) + 1
            self.most_at_once = max(self.most_at_once, self.running[check.name])
        try:
            return self.probe(check, confirming)
        finally:
            with self.lock:
                self.running[check.name] -= 1


async def ticker(lateness: list[float], stop: asyncio.Event):
    """A 50 ms heartbeat-like task; records how late each tick woke up."""
    loop = asyncio.get_running_loop()
    due = loop.time() + TICK_S
    while not stop.is_set():
        await asyncio.sleep(max(0.0, due - loop.time()))
        lateness.append(loop.time() - due)
        due += TICK_S


def test_a_hung_scp_fails_after_the_timeout_without_piling_up_threads_or_stalling_the_loop(net):
    scp = start_storescp(net, "a", port=SCP_PORT, aet="PACS")
    recorder, probe = Recorder(), CountingProbe()
    samples: list[tuple[int, int, int]] = []
    lateness: list[float] = []

    async def sample(runner, stop):
        while not stop.is_set():
            samples.append((threading.active_count(), socket_count(), runner.in_flight))
            await asyncio.sleep(0.01)

    async def scenario():
        loop = asyncio.get_running_loop()
        runner = CheckRunner((ECHO,), recorder.on_change, recorder.log, probe=probe)
        runner.start()
        await until(lambda: runner.verdict == Verdict(), 5, "the echo check to come up")
        stop = asyncio.Event()
        background = [loop.create_task(ticker(lateness, stop)), loop.create_task(sample(runner, stop))]
        await until(lambda: probe.running.get("pacs-dicom") == 0, 2, "an idle moment")
        baseline = (threading.active_count(), socket_count())
        stopped_at = loop.time()
        scp.send_signal(signal.SIGSTOP)
        try:
            await until(lambda: runner.verdict.fault is not None, 5, "the hung check to go down")
            calls_when_down = probe.calls
            await until(lambda: probe.calls >= calls_when_down + 2, 5, "two more probes of the hung SCP")
        finally:
            scp.send_signal(signal.SIGCONT)
        await until(lambda: runner.verdict == Verdict(), 5, "the check to come up after SIGCONT")
        stop.set()
        await asyncio.gather(*background)
        await runner.stop()
        return stopped_at, baseline

    stopped_at, (threads_before, sockets_before) = in_netns(net.ns("a"), lambda: asyncio.run(scenario()))
    assert recorder.problems == []

    down = [c for _, _, changes in recorder.calls for c in changes if not c.up]
    assert [c.reason for c in down] == [
        "check pacs-dicom down: no answer within 0.5 s (association request) (2 failures in a row)"]
    detection_s = down[0].at - stopped_at
    # one interval, then two probes of timeout + ~0.11 s with a fast re-probe between them
    assert 2 * 0.5 < detection_s < 4.0, f"a hung SCP took {detection_s:.2f} s to be declared down"

    assert probe.most_at_once == 1, "two runs of one check were in flight at once"
    assert max(in_flight for _, _, in_flight in samples) == 1
    most_threads = max(threads for threads, _, _ in samples)
    most_sockets = max(sockets for _, sockets, _ in samples)
    # one association at a time: pynetdicom's two threads and one socket, nothing piling up
    assert most_threads - threads_before <= 2, f"threads grew from {threads_before} to {most_threads}"
    assert most_sockets - sockets_before <= 1, f"sockets grew from {sockets_before} to {most_sockets}"
    assert len(lateness) > 20
    assert max(lateness) < 0.150, f"a 50 ms ticker woke up {max(lateness) * 1000:.0f} ms late"


# ---- a probe stuck beyond its own timeout ---------------------------------------------------


class StuckProbe:
    """Succeeds, except that call number `stuck_call` blocks until released (a hung statvfs, say)."""

    def __init__(self, stuck_call=2):
        self.stuck_call = stuck_call
        self.release = threading.Event()
        self.calls = 0
        self.stuck_since = None  # time.monotonic(), the clock of asyncio's loop.time()

    def __call__(self, check, confirming=False):
        self.calls += 1
        if self.calls == self.stuck_call:
            self.stuck_since = time.monotonic()
            self.release.wait(30)
        return ProbeResult(True, 1.0, "fine")


def test_a_probe_stuck_past_its_timeout_counts_failures_but_never_runs_twice():
    disk = make_check("pacs-disk", type="disk", timeout_s=0.2, path="/")
    recorder, stuck = Recorder(), StuckProbe()
    counting = CountingProbe(stuck)
    lateness: list[float] = []

    async def scenario():
        loop = asyncio.get_running_loop()
        runner = CheckRunner((disk,), recorder.on_change, recorder.log, probe=counting)
        stop = asyncio.Event()
        tick = loop.create_task(ticker(lateness, stop))
        runner.start()
        try:
            await until(lambda: stuck.calls == 2, 3, "the probe to get stuck")
            await until(lambda: runner.verdict.fault is not None, 3, "the stuck check to go down")
            await until(lambda: "stuck for" in runner.snapshot(loop.time())[0].message, 3, "a third failure")
            calls_while_stuck = counting.calls
        finally:
            stuck.release.set()
        await until(lambda: runner.verdict == Verdict(), 3, "the check to come up once the probe returns")
        stop.set()
        await tick
        await runner.stop()
        return calls_while_stuck

    calls_while_stuck = asyncio.run(scenario())
    assert recorder.problems == []

    assert calls_while_stuck == 2, "no second run may start while one is stuck"
    assert counting.most_at_once == 1
    down = [c for _, _, changes in recorder.calls for c in changes if not c.up]
    assert len(down) == 1 and re.fullmatch(
        r"check pacs-disk down: no answer within 0\.2 s \(probe stuck for 1\.\d s\) \(2 failures in a row\)",
        down[0].reason), down[0].reason
    patience_s = 0.2 + STUCK_GRACE_S
    # Down after two stuck periods (the reason says so); only a loose bound on when, the
    # machine is shared: timings are measured in bench/, not asserted here.
    assert down[0].at - stuck.stuck_since < 2 * patience_s + 1.0
    assert recorder.logged(logging.INFO)[-1] == "check pacs-disk up: fine (2 successes in a row)"
    assert max(lateness) < 0.150


def test_stop_returns_at_once_while_a_probe_is_stuck():
    stuck = StuckProbe(stuck_call=1)
    recorder = Recorder()

    async def scenario():
        runner = CheckRunner((make_check("pacs-disk", type="disk", path="/"),), recorder.on_change,
                             recorder.log, probe=stuck)
        runner.start()
        await until(lambda: stuck.calls == 1, 2, "the probe to start")
        started = time.monotonic()
        await runner.stop()
        return time.monotonic() - started

    try:
        assert asyncio.run(scenario()) < 0.1
    finally:
        stuck.release.set()


def test_the_first_import_of_pynetdicom_does_not_count_against_a_dicom_check():
    """In a fresh process, importing pynetdicom takes longer than this check's patience."""
    program = f"""
import asyncio, json, logging, sys
sys.path.insert(0, {str(REPO_ROOT)!r})
import hapacs.checks.runner as runner_module
from hapacs.config import CheckConfig
runner_module.STUCK_GRACE_S = 0.15      # patience 0.2 s: a refusal takes 0.1 s, the import 0.4-0.7 s
check = CheckConfig(name="pacs-dicom", type="dicom-echo", interval_s=1, timeout_s=0.05, fall=1, rise=1,
                    weight=0, host="127.0.0.1", port={CLOSED_PORT})
async def main():
    changes = []
    runner = runner_module.CheckRunner((check,), lambda verdict, new: changes.extend(new), logging.getLogger("t"))
    runner.start()
    while not changes:
        await asyncio.sleep(0.01)
    await runner.stop()
    return changes[0].reason
reason = asyncio.run(asyncio.wait_for(main(), 20))
print(json.dumps(["pynetdicom" in sys.modules, reason]))
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    imported, reason = json.loads(done.stdout)
    assert imported
    # pynetdicom polls every 0.1 s, so with a 0.05 s timeout the probe may say either
    assert reason in (f"check pacs-dicom down: connection refused (127.0.0.1:{CLOSED_PORT})",
                      f"check pacs-dicom down: no answer within 0.05 s (TCP connect to 127.0.0.1:{CLOSED_PORT})")
