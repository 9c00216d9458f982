"""The timing formulas and defaults that the core, the shell, the config and the CLI share. Pure.

One home for each: when a formula changes here, the election, the VIP
lease, the stop deadline and the command waits all follow.
"""

from __future__ import annotations

import math

# How long a handover waits for open DICOM associations to end (handover.drain_timeout,
# `hapacs release --drain-timeout`).
DEFAULT_DRAIN_TIMEOUT_S = 30.0
MAX_DRAIN_TIMEOUT_S = 3600.0
# A handover that advertised priority 0 waits at least this long for the successor.
MIN_HANDOVER_WAIT_S = 1.0
# What a drain may take beyond its timeout (counting sockets, removing the hold) before the
# core stops waiting for its answer.
DRAIN_SLACK_S = 5.0
# Beyond drain and handover, the most a stop may take.
STOP_GRACE_S = 5.0
# A VIP that could not be added is tried again after this long.
VIP_RETRY_S = 5.0
# How long a node whose MASTER is gone waits for a better peer that is held only until its
# first check results (a cold start): checks answer within their timeout, a few seconds.
HELD_PEER_WAIT_S = 5.0


def skew_time_s(priority: int, interval_s: float) -> float:
    """RFC 5798 6.1: Skew_Time = ((256 - Priority) x Master_Adver_Interval) / 256."""
    return (256 - priority) * interval_s / 256


def master_down_interval_s(dead_after: int, interval_s: float, skew_s: float) -> float:
    """RFC 5798 6.1: Master_Down_Interval = 3 x Master_Adver_Interval + Skew_Time,
    with `dead_after` for the 3."""
    return dead_after * interval_s + skew_s


def peer_timeout_s(dead_after: int, interval_s: float) -> float:
    """A peer is LOST after this long without a heartbeat: one interval more than the MASTER
    gets, so a BACKUP that takes over still counts the peers that died with the MASTER as up."""
    return (dead_after + 1) * interval_s


def handover_wait_s(dead_after: int, interval_s: float) -> float:
    """How long a MASTER that advertised priority 0 naming its successor waits to hear it as
    MASTER: two peer timeouts (the successor may miss one heartbeat), at least a second."""
    return max(MIN_HANDOVER_WAIT_S, 2 * peer_timeout_s(dead_after, interval_s))


def release_wait_s(drain_timeout_s: float, dead_after: int, interval_s: float) -> float:
    """The most a `release` takes: the drain, its slack, then the handover wait."""
    return drain_timeout_s + DRAIN_SLACK_S + handover_wait_s(dead_after, interval_s)


def takeover_wait_s(drain_timeout_s: float, dead_after: int, interval_s: float) -> float:
    """The most a `takeover` waits for the MASTER to hand over: the request reaches it with the
    next heartbeat, then it drains and hands over as for a release (same drain_timeout on every
    node, as the README asks)."""
    return 2 * interval_s + release_wait_s(drain_timeout_s, dead_after, interval_s)


def stop_limit_s(drain_timeout_s: float, master_down_interval: float) -> float:
    """The most a stop (SIGTERM) may take before the agent leaves anyway."""
    return drain_timeout_s + STOP_GRACE_S + 2 * master_down_interval


def lease_seconds(master_down_interval: float, advert_interval_s: float) -> int:
    """The VIP's valid_lft: a MASTER that stops renewing (kill -9, SIGSTOP) loses the VIP
    about when a BACKUP takes it over. Longer than a MASTER may legitimately go without
    renewing: a lease shorter than Master_Down_Interval could expire on a live MASTER whose
    loop stalled less than its peers tolerate, and the VIP would vanish with nobody taking
    over. Whole seconds, never under 2 (the kernel counts lifetimes in seconds)."""
    return max(2, math.ceil(master_down_interval + advert_interval_s))


# The leadership lease (cluster.authority: etcd). A holder counts its lease from when it SENT
# the grant or keepalive, never from when the answer came: etcd started the TTL at the earliest
# then. It gives the VIPs up `lease_margin_s` before that, so that its own timer lateness and
# clock rate never let two sites serve at once.
LEASE_RETRY_MIN_S = 0.5      # after etcd could not be reached: first retry, doubling ...
LEASE_RETRY_MAX_S = 4.0      # ... up to this


def lease_margin_s(ttl_s: float) -> float:
    """How long before etcd could expire the lease its holder drops the VIPs: a quarter of the TTL,
    at least half a second."""
    return max(0.5, ttl_s / 4)


def lease_held_until(sent_at: float, ttl_s: float) -> float:
    """The local deadline of a lease granted or renewed by a request sent at `sent_at`."""
    return sent_at + ttl_s - lease_margin_s(ttl_s)


def vip_lifetime_s(lease_s: int, held_until: float | None, now: float) -> int:
    """The valid_lft to give a VIP address now. Without the etcd lease (held_until None): lease_s.
    Under it: the whole seconds left until the lease's local deadline, never more than lease_s,
    so the kernel removes the address of a holder that died with its host alive (kill -9) no later
    than that deadline, before etcd can give the key to another node. 0: under a second is left;
    the address is not renewed then (its lifetime, set earlier, ends sooner)."""
    if held_until is None:
        return lease_s
    return max(0, min(lease_s, math.floor(held_until - now)))


# A VIP address renewed on a timer ends this long before the lease's local deadline: the timer's
# own lateness up to this keeps its whole-second lifetime from passing the deadline.
VIP_RENEW_LEAD_S = 0.1


def vip_timed_renewal(lease_s: int, held_until: float, now: float) -> float | None:
    """When to renew the VIPs once more so that their whole-second lifetime ends VIP_RENEW_LEAD_S
    before held_until: a renewal at the lease's answer could only give floor(held_until - now)
    seconds (1 s of the 1.5 s at TTL 2), and the address would lapse while the lease still holds.
    None: under a second (plus the lead) is left."""
    whole = min(lease_s, math.floor(held_until - VIP_RENEW_LEAD_S - now))
    return held_until - VIP_RENEW_LEAD_S - whole if whole >= 1 else None


def lease_renew_s(ttl_s: float) -> float:
    """A holder renews every third of the TTL: two renewals may fail before the margin is reached."""
    return ttl_s / 3


def lease_wait_probe_s(ttl_s: float) -> float:
    """A node waiting for another's key reads it again this often, besides the watch: a watch
    held by a member cut off from the others never tells that the key expired."""
    return ttl_s / 3


def lease_retry_s(failures: int) -> float:
    """The wait before asking etcd again after `failures` failures in a row (bounded backoff)."""
    return min(LEASE_RETRY_MAX_S, LEASE_RETRY_MIN_S * 2 ** max(0, failures - 1))


def lease_take_limit_s(ttl_s: float) -> float:
    """The most a take (a grant and a transaction, each failing over every endpoint) may take
    before the core counts it as failed."""
    return max(5.0, 2 * ttl_s)


def etcd_request_timeout_s(ttl_s: float) -> float:
    """One attempt on one etcd endpoint: a renewal must be able to try another endpoint well
    within the margin."""
    return min(1.0, max(0.2, lease_margin_s(ttl_s) / 2))
