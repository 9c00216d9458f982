"""Soak, short: about 40 failovers in a row between two real agents leak no fd and no thread.

The same code as bench/soak.py (which runs 500 and reports RSS and timing):
`hapacs release --drain-timeout 0` alternately on pacs-a and pacs-b, and
every 10th failover caused by the MASTER's `process` check failing instead.
Every failover must complete (the other node sole MASTER and sole VIP
holder) within a bounded wait, or the test fails as a stuck state.

Open fds and threads of both agent processes are compared before (after a
warm-up of 4 failovers, one of them check-driven, so lazily created threads
and descriptors already exist) and after. The slack of +2 allows for what
can be open at the instant of sampling without being a leak: a check probe
reading its pidfile in a worker thread (one fd, one thread for that moment),
or the default executor's thread while it ends. A leak of one fd or thread
per failover would show as +40. Timing and memory are not asserted here: the
machine is shared; the bench reports them.
"""

from __future__ import annotations


from bench.soak import HOSTS, soak, start_cluster
from .fixtures import lab_fixture

FAILOVERS = 40
CHECK_EVERY = 10
SLACK = 2


lab = lab_fixture("sk", hosts=HOSTS)


def test_forty_failovers_in_a_row_leak_no_fd_and_no_thread(lab):
    cluster = start_cluster(lab)
    try:
        result = soak(lab, cluster, FAILOVERS, check_every=CHECK_EVERY)
        print(f"\n{result.failovers} failovers; per host before -> after: "
              + "; ".join(f"{h}: {result.before[h]} -> {result.after[h]}" for h in HOSTS))
        assert result.failovers == FAILOVERS and result.check_driven == FAILOVERS // CHECK_EVERY
        for host in HOSTS:
            before, after = result.before[host], result.after[host]
            assert after.fds <= before.fds + SLACK, f"{host}: fds {before.fds} -> {after.fds}"
            assert after.threads <= before.threads + SLACK, f"{host}: threads {before.threads} -> {after.threads}"
            # Each failover moved both nodes: at least one transition each, per failover.
            assert result.transitions[host] >= FAILOVERS
        # Not asserted: false failovers on a stalled machine are the bench's business.
        print(f"transitions other than the failovers': {result.unexpected_transitions()}")
    finally:
        print(cluster.logs())
