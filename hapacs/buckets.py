"""The bucket map of direct-routing balancing: which member serves which hash bucket. Pure.

In direct mode the VIP holder forwards each TCP packet to a member chosen by
`jhash(client address . client port) mod BUCKETS` (hapacs.nftdirect), and
keeps no state per association. So a held association survives a failover
of the balancer only when the new VIP holder computes the SAME map from the
same facts: the map here depends on nothing but the member list and the set
of members that are alive (and drained), never on history or on which node
computes it.

How a bucket finds its member. The members are sorted by address (so the
order they are listed in, or heard in, does not matter). Bucket b has a
preference list: first its home member, `members[b mod n]`; then the others,
rotated by `b div n`, so that the buckets of one home spread evenly over the
others. A bucket is served by the first member of its list that is alive;
a drained member serves its own home buckets but takes no bucket whose home
member is dead, unless every living member is drained.

What follows from that, and what the tests check:
- same input, same map, on every node;
- all alive: every member has BUCKETS / n buckets, within one;
- a member dying moves only the buckets it served (to the living, spread
  within one when it is the only one dead); no other bucket moves, so no
  other member's live associations are touched (each living member then
  serves its share plus its part of the dead one's: within two of the others);
- a member coming back takes back exactly its home buckets (and those it
  would serve as a fallback): the map depends only on who is alive, so every
  node agrees after any sequence of deaths and returns. The price is that
  associations opened on those buckets while it was away are cut when it
  returns (the packets of a live flow then reach a member that has no
  socket for it and answers with a reset). A map that kept the interim owner
  would depend on history, and a balancer failover would then move buckets.

What it must never do: look at a clock, a socket or the kernel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

BUCKETS = 64


def _key(address: str):
    parsed = ipaddress.ip_address(address)
    return (parsed.version, parsed)


def order(members: Iterable[str]) -> tuple[str, ...]:
    """The members (addresses as text) in the one order every node uses: by address, each once."""
    return tuple(sorted(set(members), key=_key))


def preference(bucket: int, members: tuple[str, ...]) -> tuple[str, ...]:
    """Bucket `bucket`'s members in the order they take it: its home first, then the others rotated
    by `bucket div n`, so a dead home's buckets spread evenly over the others."""
    count = len(members)
    home = bucket % count
    others = members[home + 1:] + members[:home]
    turn = (bucket // count) % max(count - 1, 1)
    return (members[home],) + others[turn:] + others[:turn]


def assign(members: Iterable[str], alive: Iterable[str], drained: Iterable[str] = ()) -> dict[int, str | None]:
    """Bucket -> the member serving it; None when no member can (all dead).

    `alive`: the members that take associations (a member not listed in `members` is ignored);
    `drained`: alive members that keep their home buckets but take a dead member's bucket only
    when no living member is undrained."""
    ordered = order(members)
    living = set(alive) & set(ordered)
    draining = set(drained)
    result: dict[int, str | None] = {}
    for bucket in range(BUCKETS):
        choices = preference(bucket, ordered) if ordered else ()
        home = choices[0] if choices else None
        if home in living:
            result[bucket] = home
            continue
        fallback = [m for m in choices[1:] if m in living]
        result[bucket] = next((m for m in fallback if m not in draining), fallback[0] if fallback else None)
    return result


def counts(mapping: dict[int, str | None]) -> dict[str, int]:
    """How many buckets each member serves (members with none are left out)."""
    found: dict[str, int] = {}
    for member in mapping.values():
        if member is not None:
            found[member] = found.get(member, 0) + 1
    return found


def split(mapping: dict[int, str | None], members: Iterable[str], own: str) -> tuple[tuple[int, ...],
                                                                                    tuple[tuple[int, str], ...]]:
    """What node `own` does with each bucket: (served here, (bucket, member) sent on).

    Every node (not only the VIP holder) loads these rules, so a packet a balancer forwarded, or
    one that reached the old VIP holder through a stale ARP cache, is forwarded again by the
    node it reached. No packet can circle: a node sends a bucket on only to a member that comes
    BEFORE itself in the bucket's preference list, and serves it itself otherwise, so along any
    path the position strictly falls, even while two nodes disagree about who is alive.
    Buckets no member can serve (None) are in neither list: this node's stack refuses them."""
    ordered = order(members)
    local: list[int] = []
    forward: list[tuple[int, str]] = []
    for bucket, member in sorted(mapping.items()):
        if member is None:
            continue
        choices = preference(bucket, ordered)
        if member == own or (own in choices and choices.index(member) > choices.index(own)):
            local.append(bucket)
        else:
            forward.append((bucket, member))
    return tuple(local), tuple(forward)


def fallbacks(members: Iterable[str], alive: Iterable[str], own: str) -> tuple[tuple[int, str], ...]:
    """(bucket, member) for each bucket node `own` serves itself (split's local list): where it
    passes the packets it does not take (its PACS gone, or drained). For a bucket it owns, the
    member that would serve it were `own` not alive; for one it serves only because it comes
    before the owner in the bucket's preference (while `own` is not alive, or the nodes disagree
    for a moment), the owner. Buckets no other member could serve are left out."""
    ordered = order(members)
    living = set(alive)
    mapping, without = assign(ordered, living), assign(ordered, living - {own})
    local, _ = split(mapping, ordered, own)
    found = []
    for bucket in local:
        target = without[bucket] if mapping[bucket] == own else mapping[bucket]
        if target is not None and target != own:
            found.append((bucket, target))
    return tuple(found)


def passed_on(forward: tuple[tuple[int, str], ...], macs: dict[str, str]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(MAC, buckets) for each member this node sends buckets to and whose MAC is known: the
    packets of those buckets that come from that member are its drain passing them on."""
    buckets: dict[str, list[int]] = {}
    for bucket, member in forward:
        buckets.setdefault(member, []).append(bucket)
    return tuple((macs[member], tuple(found)) for member, found in sorted(buckets.items()) if member in macs)
