"""Hysteresis of health checks (hapacs/checks/health.py): pure, with a fake clock.

No sleeps, no I/O: results are fed in with the time they would have arrived.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hapacs.checks.health import FAST_REPROBE_S, CheckHealth, Verdict, aggregate
from hapacs.config import CheckConfig


def make_check(name="pacs-dicom", fall=2, rise=3, weight=0, interval_s=0.5, type="dicom-echo"):
    return CheckConfig(name=name, type=type, interval_s=interval_s, timeout_s=1.0,
                       fall=fall, rise=rise, weight=weight)


def feed(health, results, start=0.0, step=0.5):
    """Record a sequence of True/False at start, start+step, ...; return the changes."""
    changes = []
    for index, ok in enumerate(results):
        change = health.record(ok, 3.0, "C-ECHO success" if ok else "connection refused",
                               start + index * step)
        if change is not None:
            changes.append(change)
    return changes


# ---- up and down ------------------------------------------------------------------


def test_a_new_check_is_pending_with_no_result():
    health = CheckHealth(make_check())
    assert health.ok is None and health.since is None
    status = health.status(now=5.0)
    assert (status.ok, status.latency_ms, status.message, status.since_s) == (None, None, "not run yet", None)


def test_the_very_first_success_marks_the_check_up_at_once():
    health = CheckHealth(make_check(rise=3))
    change = health.record(True, 4.2, "C-ECHO success", now=10.0)
    assert health.ok is True
    assert change.up and change.name == "pacs-dicom" and change.at == 10.0
    assert change.reason == "check pacs-dicom up: C-ECHO success (first result)"


def test_a_first_success_after_early_failures_still_marks_it_up_at_once():
    health = CheckHealth(make_check(fall=3, rise=3))
    assert feed(health, [False, False]) == []
    change = health.record(True, 4.0, "C-ECHO success", now=2.0)
    assert change.reason == "check pacs-dicom up: C-ECHO success (first success)"


def test_failures_at_start_count_towards_fall():
    health = CheckHealth(make_check(fall=2))
    changes = feed(health, [False, False])
    assert health.ok is False
    assert [c.reason for c in changes] == [
        "check pacs-dicom down: connection refused (2 failures in a row)"]


def test_fall_failures_in_a_row_take_an_up_check_down():
    health = CheckHealth(make_check(fall=2))
    feed(health, [True])
    assert health.record(False, 100.0, "connection refused (127.0.0.1:104)", now=1.0) is None
    assert health.ok is True, "one failure must not take the check down with fall 2"
    change = health.record(False, 100.0, "connection refused (127.0.0.1:104)", now=1.1)
    assert health.ok is False and health.since == 1.1
    assert change.reason == "check pacs-dicom down: connection refused (127.0.0.1:104) (2 failures in a row)"


def test_rise_successes_in_a_row_bring_a_down_check_up():
    health = CheckHealth(make_check(fall=1, rise=3))
    feed(health, [False])
    assert health.ok is False
    assert feed(health, [True, True], start=1.0) == []
    assert health.ok is False
    change = health.record(True, 5.0, "C-ECHO success", now=2.0)
    assert health.ok is True and health.since == 2.0
    assert change.reason == "check pacs-dicom up: C-ECHO success (3 successes in a row)"


def test_fall_one_and_rise_one_switch_on_every_result_without_a_count():
    health = CheckHealth(make_check(fall=1, rise=1))
    changes = feed(health, [True, False, True])
    assert [c.reason for c in changes] == [
        "check pacs-dicom up: C-ECHO success (first result)",
        "check pacs-dicom down: connection refused",
        "check pacs-dicom up: C-ECHO success",
    ]


def test_flapping_never_takes_the_check_down_with_fall_two():
    health = CheckHealth(make_check(fall=2, rise=3))
    changes = feed(health, [False, True] * 200)
    assert [c.up for c in changes] == [True], "only the first success may change anything"
    assert health.ok is True


def test_flapping_never_brings_a_down_check_up_with_rise_two():
    health = CheckHealth(make_check(fall=2, rise=2))
    feed(health, [False, False])
    assert feed(health, [True, False] * 200, start=10.0) == []
    assert health.ok is False


def test_status_shows_the_last_result_and_the_time_in_the_current_state():
    health = CheckHealth(make_check(weight=-20))
    health.record(True, 3.14, "C-ECHO success", now=100.0)
    health.record(False, 502.0, "no answer within 0.5 s (association request)", now=101.0)
    status = health.status(now=103.5)
    assert (status.name, status.type, status.ok, status.weight) == ("pacs-dicom", "dicom-echo", True, -20)
    assert status.latency_ms == 502.0
    assert status.message == "no answer within 0.5 s (association request)"
    assert status.since_s == pytest.approx(3.5)


@pytest.mark.parametrize("fall, rise", [(0, 1), (1, 0), (-1, 3)])
def test_fall_and_rise_below_one_are_refused(fall, rise):
    with pytest.raises(ValueError, match="fall and rise must be at least 1"):
        CheckHealth(make_check(fall=fall, rise=rise))


# ---- verdict ------------------------------------------------------------------------


def test_verdict_names_pending_weight_zero_checks_only():
    healths = [CheckHealth(make_check("dicom")), CheckHealth(make_check("web", weight=-10)),
               CheckHealth(make_check("disk"))]
    assert aggregate(healths) == Verdict(pending="waiting for checks dicom, disk to pass")
    healths[0].record(False, 1.0, "connection refused", now=0.0)
    assert aggregate(healths).pending == "waiting for checks dicom, disk to pass", \
        "a failure before fall is not a pass"
    healths[2].record(True, 1.0, "ok", now=0.1)
    assert aggregate(healths) == Verdict(pending="waiting for check dicom to pass")
    healths[0].record(True, 1.0, "C-ECHO success", now=0.2)
    assert aggregate(healths) == Verdict()


def test_verdict_faults_on_weight_zero_and_penalises_negative_weights():
    dicom, find = CheckHealth(make_check("dicom", fall=1)), CheckHealth(make_check("find", fall=1))
    web, disk = CheckHealth(make_check("web", weight=-10, fall=1)), CheckHealth(make_check("disk", weight=-5, fall=1))
    healths = [dicom, find, web, disk]
    for health in healths:
        health.record(True, 1.0, "ok", now=0.0)
    assert aggregate(healths) == Verdict()
    web.record(False, 1.0, "HTTP 503, expected 200", now=1.0)
    assert aggregate(healths) == Verdict(penalty=10)
    disk.record(False, 1.0, "/var/lib/pacs: only 2.0% free", now=1.0)
    assert aggregate(healths) == Verdict(penalty=15)
    dicom.record(False, 1.0, "connection refused (127.0.0.1:104)", now=2.0)
    find.record(False, 1.0, "C-FIND failed: status 0xC001 after 0 matches", now=2.0)
    assert aggregate(healths) == Verdict(
        fault="check dicom down: connection refused (127.0.0.1:104); "
              "check find down: C-FIND failed: status 0xC001 after 0 matches",
        penalty=15)


def test_fault_text_keeps_the_reason_the_check_went_down():
    health = CheckHealth(make_check(fall=2))
    feed(health, [True, False, False])
    health.record(False, 500.0, "no answer within 1 s (association request)", now=9.0)
    assert health.message == "no answer within 1 s (association request)"
    assert aggregate([health]).fault == "check pacs-dicom down: connection refused", \
        "the fault must not change with every later failure message"


# ---- schedule ------------------------------------------------------------------------


def test_the_next_probe_is_one_interval_after_the_last_finished_normally():
    health = CheckHealth(make_check(interval_s=0.5))
    assert health.next_probe_at(finished=10.0) == 10.5          # pending, nothing failed
    health.record(True, 1.0, "ok", now=10.0)
    assert health.next_probe_at(finished=10.0) == 10.5


def test_a_failure_before_down_is_confirmed_quickly():
    health = CheckHealth(make_check(interval_s=2.0, fall=3))
    health.record(True, 1.0, "ok", now=0.0)
    health.record(False, 1.0, "refused", now=1.0)
    assert health.next_probe_at(finished=1.0) == pytest.approx(1.0 + FAST_REPROBE_S)
    health.record(False, 1.0, "refused", now=1.1)
    assert health.next_probe_at(finished=1.1) == pytest.approx(1.1 + FAST_REPROBE_S)
    health.record(False, 1.0, "refused", now=1.2)
    assert health.ok is False
    assert health.next_probe_at(finished=1.2) == pytest.approx(3.2), "a down check goes back to the interval"


def test_failures_at_start_are_confirmed_quickly_too():
    health = CheckHealth(make_check(interval_s=1.0))
    health.record(False, 1.0, "refused", now=0.0)
    assert health.next_probe_at(finished=0.0) == pytest.approx(FAST_REPROBE_S)


def test_the_fast_reprobe_never_waits_longer_than_the_interval():
    health = CheckHealth(make_check(interval_s=0.05))
    health.record(True, 1.0, "ok", now=0.0)
    health.record(False, 1.0, "refused", now=1.0)
    assert health.next_probe_at(finished=1.0) == pytest.approx(1.05)


def simulate_detection(interval_s, fall, probe_s, died_at):
    """Drive a check on a fake clock through a PACS death; return the time from death to down."""
    health = CheckHealth(make_check(interval_s=interval_s, fall=fall))
    now = 0.0
    while True:
        finished = now + probe_s
        alive = now < died_at
        change = health.record(alive, probe_s * 1000, "ok" if alive else "refused", finished)
        if change is not None and not change.up:
            return finished - died_at
        now = health.next_probe_at(finished)


@pytest.mark.parametrize("died_at", [1.0, 1.03, 1.1, 1.19])
def test_a_dead_pacs_is_confirmed_in_about_one_interval_not_fall_intervals(died_at):
    interval_s, fall, probe_s = 0.2, 2, 0.1   # a refused connection takes ~0.1 s in pynetdicom
    detection = simulate_detection(interval_s, fall, probe_s, died_at)
    worst = interval_s + fall * probe_s + (fall - 1) * FAST_REPROBE_S
    assert detection <= worst + 1e-9
    naive = simulate_detection_without_fast_reprobe(interval_s, fall, probe_s, died_at)
    assert detection < naive


def simulate_detection_without_fast_reprobe(interval_s, fall, probe_s, died_at):
    now, failures = 0.0, 0
    while True:
        finished = now + probe_s
        failures = failures + 1 if now >= died_at else 0
        if failures >= fall:
            return finished - died_at
        now = finished + interval_s


# ---- no impossible state --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(fall=st.integers(1, 5), rise=st.integers(1, 5), results=st.lists(st.booleans(), max_size=60))
def test_no_sequence_of_results_reaches_an_impossible_state(fall, rise, results):
    health = CheckHealth(make_check(fall=fall, rise=rise))
    before = None
    for index, ok in enumerate(results):
        change = health.record(ok, 1.0, "ok" if ok else "failed", now=float(index))
        assert health.ok in (None, True, False)
        assert not (health.failures_in_row and health.successes_in_row)
        assert health.failures_in_row + health.successes_in_row >= 1
        if health.ok is None:
            assert before is None, "no way back to pending"
            assert health.successes_in_row == 0 and health.failures_in_row < fall and health.since is None
        if health.ok is True:
            assert health.failures_in_row < fall and health.down_reason is None
        if health.ok is False:
            assert health.successes_in_row < rise and health.down_reason is not None
        assert (change is not None) == (health.ok != before), "a Change exactly when up/down changes"
        if change is not None:
            assert change.up is health.ok and health.since == float(index)
            assert change.reason.startswith(f"check pacs-dicom {'up' if ok else 'down'}: ")
        before = health.ok
    verdict = aggregate([health])
    assert (verdict.fault is not None) == (health.ok is False)
    assert (verdict.pending is not None) == (health.ok is None)
