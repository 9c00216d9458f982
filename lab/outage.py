"""Outage arithmetic over probe records (see lab.probe for the record format).

Pure functions apart from load(): tests and benchmarks feed them the probe's
JSON lines and the monotonic time at which they injected a fault.
"""

import json
from collections import Counter


def load(path) -> list[dict]:
    """Records from a probe's JSON-lines file, in file order.

    A last line without its newline is skipped: the probe may be writing it.
    """
    with open(path, encoding="utf-8") as file:
        text = file.read()
    lines = text.split("\n")
    complete = lines[:-1]  # after the final newline there is "" or a partial line
    return [json.loads(line) for line in complete if line.strip()]


def _of_kind(records, kind):
    return sorted((r for r in records if r["kind"] == kind), key=lambda r: r["t"])


def outage(records, fault_t: float, kind: str = "echo") -> dict:
    """What a fault injected at monotonic time `fault_t` cost the workstation, in answer time.

    last_answer_t: when the last success started before the fault was answered
      (its end, but not later than the fault).
    served_again_t: the earliest answer to a request started after the fault.
      Earliest *answer*, not earliest start: a request whose SYN went to the
      dead host may be answered by the new MASTER a second later, when TCP
      sends the SYN again; counting its start would hide the outage.
    outage_s: served_again_t - last_answer_t; recovery_s: served_again_t - fault_t.
    last_ok_t / first_ok_t: the starts of those two requests.
    failures: failed attempts started between the fault and served_again_t;
      failures_after: all failed attempts started after the fault.
    errors: how often each error text occurred among `failures`.
    Times are None when there is no success on that side of the fault.
    """
    attempts = _of_kind(records, kind)
    ok_before = [r for r in attempts if r["ok"] and r["t"] < fault_t]
    ok_after = [r for r in attempts if r["ok"] and r["t"] > fault_t]
    last_ok = ok_before[-1] if ok_before else None
    first_ok = min(ok_after, key=lambda r: r["end"]) if ok_after else None
    last_answer = min(last_ok["end"], fault_t) if last_ok else None
    served_again = first_ok["end"] if first_ok else None
    recovered_t = served_again if first_ok else float("inf")
    failed_after = [r for r in attempts if not r["ok"] and r["t"] >= fault_t]
    failed_during = [r for r in failed_after if r["t"] < recovered_t]
    return {
        "kind": kind,
        "fault_t": fault_t,
        "last_ok_t": last_ok["t"] if last_ok else None,
        "first_ok_t": first_ok["t"] if first_ok else None,
        "last_answer_t": last_answer,
        "served_again_t": served_again,
        "outage_s": served_again - last_answer if first_ok and last_ok else None,
        "recovery_s": served_again - fault_t if first_ok else None,
        "recovered": first_ok is not None,
        "failures": len(failed_during),
        "failures_after": len(failed_after),
        "errors": dict(Counter(r["err"] for r in failed_during)),
    }


def failures(records, since: float, until: float, kind: str | None = None) -> list[dict]:
    """Failed attempts (of `kind`, or any) that started in [since, until), by start time."""
    return [r for r in sorted(records, key=lambda r: r["t"])
            if not r["ok"] and since <= r["t"] < until and (kind is None or r["kind"] == kind)]


def successes(records, since: float, until: float, kind: str | None = None) -> list[dict]:
    """Successful attempts (of `kind`, or any) that started in [since, until), by start time."""
    return [r for r in sorted(records, key=lambda r: r["t"])
            if r["ok"] and since <= r["t"] < until and (kind is None or r["kind"] == kind)]


def answered(path, since: float = 0.0, kind: str | None = None) -> int:
    """How many attempts in the probe's file started at or after `since` and succeeded
    (0 while the file does not exist yet): what scripts wait on while a probe runs."""
    try:
        return len(successes(load(path), since, float("inf"), kind))
    except FileNotFoundError:
        return 0


def slowest(records, since: float, until: float = float("inf"), kind: str | None = None) -> dict | None:
    """The attempt (of `kind`, or any) started in [since, until) that took longest, answered or not;
    None when there is none. What a workstation user waited at worst."""
    window = [r for r in records if since <= r["t"] < until and (kind is None or r["kind"] == kind)]
    return max(window, key=lambda r: r["end"] - r["t"], default=None)
