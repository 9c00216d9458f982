"""The direct-routing bucket map (hapacs.buckets): every node computes the same map, balanced
within one bucket, and a member's death or return moves only the buckets it serves."""

from __future__ import annotations

import itertools
import random

import pytest

from hapacs.buckets import BUCKETS, assign, counts, order, split

MEMBERS = ["192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14", "192.0.2.15"]


def moved(before: dict, after: dict) -> set[int]:
    return {b for b in before if before[b] != after[b]}


@pytest.mark.parametrize("n", range(1, 6))
def test_all_alive_every_member_has_its_share_within_one(n):
    members = MEMBERS[:n]
    mapping = assign(members, members)
    assert set(mapping) == set(range(BUCKETS))
    share = counts(mapping)
    assert set(share) == set(members)
    assert max(share.values()) - min(share.values()) <= 1, share


def test_same_input_same_map_whatever_the_order_nodes_list_or_hear_members_in():
    shuffled = list(MEMBERS)
    alive = MEMBERS[:2] + MEMBERS[3:]
    expected = assign(MEMBERS, alive)
    for seed in range(20):
        random.Random(seed).shuffle(shuffled)
        assert assign(shuffled, list(reversed(alive))) == expected
    # a node listing itself among its peers twice changes nothing either
    assert assign(MEMBERS + MEMBERS[:1], alive) == expected
    assert order(["192.0.2.9", "192.0.2.10"]) == ("192.0.2.9", "192.0.2.10")   # by address, not text


def test_ipv6_members_sort_after_ipv4_and_work():
    members = ["2001:db8::12", "192.0.2.11", "2001:db8::11"]
    assert order(members) == ("192.0.2.11", "2001:db8::11", "2001:db8::12")
    assert set(counts(assign(members, members)).values()) <= {21, 22}


@pytest.mark.parametrize("n", range(2, 6))
def test_one_death_moves_only_its_buckets_spread_within_one_over_the_living(n):
    members = MEMBERS[:n]
    before = assign(members, members)
    for dead in members:
        living = [m for m in members if m != dead]
        after = assign(members, living)
        assert moved(before, after) == {b for b, m in before.items() if m == dead}
        assert dead not in after.values() and None not in after.values()
        gained = counts({b: after[b] for b in moved(before, after)})
        assert max(gained.values()) - min(gained.values()) <= 1, gained
        share = counts(after)     # a share within one, plus a gain within one: within two
        assert max(share.values()) - min(share.values()) <= 2, share


def test_any_death_or_return_from_any_alive_set_moves_only_the_buckets_of_that_member():
    """Every subset of five members alive, every member dying from it or coming back to it."""
    for size in range(0, len(MEMBERS) + 1):
        for alive in itertools.combinations(MEMBERS, size):
            before = assign(MEMBERS, alive)
            for member in MEMBERS:
                if member in alive:
                    after = assign(MEMBERS, [m for m in alive if m != member])
                    assert all(before[b] == member for b in moved(before, after)), (alive, member)
                else:
                    after = assign(MEMBERS, alive + (member,))
                    assert all(after[b] == member for b in moved(before, after)), (alive, member)


def test_a_return_gives_back_exactly_the_home_buckets_history_does_not_matter():
    members = MEMBERS[:3]
    start = assign(members, members)
    a, b, c = members
    # b dies, then c, then b returns, then c returns: the map is the start again, as on a fresh node
    path = [assign(members, alive) for alive in ([a, c], [a], [a, b], [a, b, c])]
    assert path[-1] == start
    assert path[2] == assign(members, [b, a])        # the same as a node that never saw c die first


def test_nothing_alive_no_member_for_any_bucket_and_strangers_are_ignored():
    assert set(assign(MEMBERS[:2], []).values()) == {None}
    assert set(assign([], ["192.0.2.11"]).values()) == {None}
    assert "192.0.2.99" not in assign(MEMBERS[:2], MEMBERS[:2] + ["192.0.2.99"]).values()


def test_a_drained_member_keeps_its_buckets_but_takes_none_of_a_dead_member():
    a, b, c = MEMBERS[:3]
    before = assign([a, b, c], [a, b, c], drained=[b])
    assert before == assign([a, b, c], [a, b, c])          # drain alone moves nothing
    after = assign([a, b, c], [a, b], drained=[b])
    assert counts(after)[b] == counts(before)[b]             # c's buckets all went to a
    assert moved(before, after) == {k for k, m in before.items() if m == c}
    # when every living member is drained, a dead member's buckets still find one
    assert None not in assign([a, b, c], [a, b], drained=[a, b]).values()


def test_a_node_serves_its_own_buckets_and_sends_the_others_on():
    a, b, c = MEMBERS[:3]
    mapping = assign([a, b, c], [a, b, c])
    local, forward = split(mapping, [a, b, c], a)
    assert set(local) == {k for k, m in mapping.items() if m == a}
    assert dict(forward) == {k: m for k, m in mapping.items() if m != a}
    # a node that is not a member (a pure balancer) serves nothing itself
    local, forward = split(mapping, [a, b, c], "192.0.2.99")
    assert local == () and dict(forward) == mapping


def test_no_packet_circles_even_while_nodes_disagree_about_who_is_alive():
    """Every pair of views of five members: following the forwards from any node, a bucket
    reaches a node that serves it (or refuses it) within five hops."""
    views = [alive for size in range(1, 6) for alive in itertools.combinations(MEMBERS, size)]
    rng = random.Random(5)
    for _ in range(400):
        view_of = {m: rng.choice(views) for m in MEMBERS}     # each node's own opinion
        plans = {m: split(assign(MEMBERS, view_of[m]), MEMBERS, m) for m in MEMBERS}
        for bucket in range(BUCKETS):
            node, hops = rng.choice(MEMBERS), 0
            while True:
                forward = dict(plans[node][1])
                if bucket not in forward:
                    break
                node, hops = forward[bucket], hops + 1
                assert hops <= len(MEMBERS), (bucket, view_of)


def test_when_all_nodes_agree_a_forwarded_packet_is_served_where_it_lands():
    alive = MEMBERS[:2] + MEMBERS[3:]
    mapping = assign(MEMBERS, alive)
    for node in alive:
        for bucket, member in split(mapping, MEMBERS, node)[1]:
            assert bucket in split(mapping, MEMBERS, member)[0]
