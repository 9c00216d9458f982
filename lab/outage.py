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
    """What a fault injected at monotonic time `fault_t` cost the workstation.

    outage_s: from the start of the last success that started before fault_t
      to the start of the first success that started after it.
    recovery_s: from fault_t to that first success.
    failures: failed attempts that started between fault_t and that success;
      failures_after: all failed attempts that started after fault_t.
    errors: how often each error text occurred among `failures`.
    Times are None when there is no success on that side of the fault.
    """
    attempts = _of_kind(records, kind)
    ok_before = [r for r in attempts if r["ok"] and r["t"] < fault_t]
    ok_after = [r for r in attempts if r["ok"] and r["t"] > fault_t]
    last_ok = ok_before[-1] if ok_before else None
    first_ok = ok_after[0] if ok_after else None
    recovered_t = first_ok["t"] if first_ok else float("inf")
    failed_after = [r for r in attempts if not r["ok"] and r["t"] >= fault_t]
    failed_during = [r for r in failed_after if r["t"] < recovered_t]
    return {
        "kind": kind,
        "fault_t": fault_t,
        "last_ok_t": last_ok["t"] if last_ok else None,
        "first_ok_t": first_ok["t"] if first_ok else None,
        "outage_s": first_ok["t"] - last_ok["t"] if first_ok and last_ok else None,
        "recovery_s": first_ok["t"] - fault_t if first_ok else None,
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
