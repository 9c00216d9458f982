"""The VIP lease at the default timers: what "about two seconds" in the README rests on.

README ("Leases"): after a kill -9 the standby is the only host answering for
the VIP about two seconds later, because nobody renews the dead agent's lease.
The end-to-end measure is in test_e2e_failover (and bench/promises.py); this
is the arithmetic behind it, for every priority a node may have.
"""

from __future__ import annotations

import pytest

from hapacs.config import load
from hapacs.timing import lease_seconds

from .test_config import GOOD, write


@pytest.mark.parametrize("priority", [1, 100, 254])
def test_the_lease_at_the_default_timers_is_two_seconds(tmp_path, key, priority):
    config = load(write(tmp_path, GOOD.replace("priority: 150", f"priority: {priority}"), key))
    assert config.node.priority == priority, "GOOD no longer sets priority 150: the case would not vary"
    assert (config.cluster.advert_interval_s, config.cluster.dead_after) == (0.1, 3), "the README's defaults"
    assert lease_seconds(config.master_down_interval_s, config.cluster.advert_interval_s) == 2


def test_the_lease_never_ends_before_a_peer_would_declare_the_master_dead():
    # A lease shorter than Master_Down_Interval could vanish from a live MASTER whose loop
    # stalled less than its peers tolerate, with nobody taking over.
    for advert_interval_s in (0.02, 0.1, 0.5, 1.0, 10.0):
        for dead_after in (2, 3, 5, 10):
            master_down_interval_s = dead_after * advert_interval_s + advert_interval_s
            assert lease_seconds(master_down_interval_s, advert_interval_s) > master_down_interval_s
