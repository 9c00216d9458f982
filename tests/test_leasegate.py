"""The etcd lease as a gate on MASTER (hapacs.leasegate), on the fake clock: no sleeps.

Whole clusters run in tests/simnet.py with an in-memory etcd beside them: a key
with create-if-absent, leases that expire on the cluster's clock, watch news to
every node that reaches it, and per-node reachability and answer delays.
"""

from __future__ import annotations

import heapq
import ipaddress
from dataclasses import dataclass, replace

import pytest

from hapacs import timing
from hapacs.effects import (
    AcquireVips, CommandDone, CommandPending, ProbeAuthority, ReleaseVips, RenewLease, RevokeLease, TakeLease,
    VipsUntil, Why,
)
from hapacs.election import Election, Params
from hapacs.leasegate import KeyHolder, LeaseFailed, LeasePhase, LeaseRenewed, LeaseTaken
from hapacs.states import State
from tests.simnet import DIGEST, SimCluster, SimNode

TTL = 2
UNREACHABLE_AFTER_S = 0.6      # a request to an etcd that does not answer fails after this


@dataclass
class Key:
    holder: str
    lease_id: int
    revision: int


class FakeEtcd:
    """One etcd cluster as the nodes see it: linearizable, on the simulator's clock."""

    def __init__(self, sim: LeaseSim) -> None:
        self.sim = sim
        self.key: Key | None = None
        self.leases: dict[int, float] = {}       # id -> expires at
        self.revision = 1
        self.next_id = 100
        self.expired_at: dict[int, float] = {}   # id -> when etcd expired it
        self.reachable: dict[str, bool] = {}
        self.delay_s: dict[str, float] = {}      # one way, per node

    def reaches(self, name: str) -> bool:
        return self.reachable.get(name, True)

    def expire(self, now: float) -> None:
        for lease_id, until in list(self.leases.items()):
            if until <= now:
                del self.leases[lease_id]
                self.expired_at[lease_id] = until
                if self.key is not None and self.key.lease_id == lease_id:
                    self._delete(now)

    def _delete(self, now: float) -> None:
        self.revision += 1
        self.key = None
        for name in self.sim.nodes:
            self.sim.tell(name, KeyHolder(None, self.revision), now)

    def grant_foreign(self, holder: str, now: float) -> int:
        """A holder outside the simulated nodes (another site), kept alive by the test."""
        lease_id = self.next_id = self.next_id + 1
        self.leases[lease_id] = now + 3600
        self.revision += 1
        self.key = Key(holder, lease_id, self.revision)
        return lease_id

    def revoke(self, lease_id: int, now: float) -> None:
        self.leases.pop(lease_id, None)
        if self.key is not None and self.key.lease_id == lease_id:
            self._delete(now)

    def request(self, node: SimNode, effect, sent_at: float) -> None:
        """Carry the request out when it reaches etcd; the answer travels back as long."""
        name = node.name
        if not self.reaches(name):
            self.sim.later(sent_at + UNREACHABLE_AFTER_S, name,
                           LeaseFailed(type(effect).__name__, "etcd: no endpoint answered"))
            return
        delay = self.delay_s.get(name, 0.001)
        self.sim.at(sent_at + delay, lambda now: self._arrive(name, effect, sent_at, now + delay))

    def _arrive(self, name: str, effect, sent_at: float, answer_at: float) -> None:
        now = answer_at - self.delay_s.get(name, 0.001)
        self.expire(now)
        if isinstance(effect, TakeLease):
            lease_id = self.next_id = self.next_id + 1
            self.leases[lease_id] = now + effect.ttl_s
            self.sim.at(now + effect.ttl_s, self.expire)
            if self.key is None:
                self.revision += 1
                self.key = Key(name, lease_id, self.revision)
                self.sim.later(answer_at, name, LeaseTaken(lease_id, effect.ttl_s, sent_at, self.revision))
                for other in self.sim.nodes:
                    if other != name:
                        self.sim.tell(other, KeyHolder(name, self.revision, lease_id), now)
            else:
                del self.leases[lease_id]
                self.sim.later(answer_at, name, KeyHolder(self.key.holder, self.revision, self.key.lease_id,
                                                          refused_take=True))
        elif isinstance(effect, RenewLease):
            alive = effect.lease_id in self.leases
            if alive:
                self.leases[effect.lease_id] = now + TTL
                self.sim.at(now + TTL, self.expire)
            self.sim.later(answer_at, name, LeaseRenewed(effect.lease_id, TTL if alive else 0, sent_at))
        elif isinstance(effect, RevokeLease):
            self.revoke(effect.lease_id, now)
        elif isinstance(effect, ProbeAuthority):
            key = self.key
            self.sim.later(answer_at, name, KeyHolder(key.holder if key else None, self.revision,
                                                      key.lease_id if key else 0))


class LeaseSim(SimCluster):
    def __init__(self) -> None:
        super().__init__()
        self.etcd = FakeEtcd(self)
        self.calls: list = []          # (at, order, callable)
        self.vip_log: list[tuple[float, str, bool]] = []
        self.watch_cut: set[str] = set()     # nodes whose watch stream sits on a cut-off member: no news

    def add_node(self, name: str, priority: int, address: str, preempt: bool = True) -> SimNode:
        packed = ipaddress.ip_address(address).packed
        params = Params(name, packed, priority, 0.1, 3, preempt, 0.0, DIGEST, drain_timeout_s=0.2, lease_ttl_s=TTL)
        node = SimNode(name, Election(params, self.now), packed)
        self.nodes[name] = node
        self.apply(node, node.election.start(self.now))
        return node

    def apply(self, node: SimNode, effects) -> None:
        super().apply(node, effects)
        for effect in effects:
            if isinstance(effect, (AcquireVips, ReleaseVips)):
                self.vip_log.append((self.now, node.name, isinstance(effect, AcquireVips)))
            if isinstance(effect, (TakeLease, RenewLease, RevokeLease, ProbeAuthority)) and node.alive:
                self.etcd.request(node, effect, self.now)

    # --- scheduling etcd's side --------------------------------------------------------

    def at(self, when: float, call) -> None:
        heapq.heappush(self.calls, (when, next(self._order), call))

    def later(self, when: float, name: str, event) -> None:
        def deliver(now: float) -> None:
            node = self.nodes[name]
            if node.alive:
                self.apply(node, node.election.authority(event, now))
        self.at(when, deliver)

    def tell(self, name: str, event, now: float) -> None:
        """Watch news, to a node whose stream still works: a cut drops only what it sends."""
        if name in self.watch_cut:
            return
        self.later(now + self.etcd.delay_s.get(name, 0.001), name, replace(event, streamed=True))

    def step(self) -> bool:
        if self.calls:
            other = super()._peek()
            if other is None or self.calls[0][0] <= other:
                when, _, call = heapq.heappop(self.calls)
                self.now = max(self.now, when)
                call(self.now)
                return True
        return super().step()

    def _peek(self) -> float | None:
        base = super()._peek()
        mine = self.calls[0][0] if self.calls else None
        return min((t for t in (base, mine) if t is not None), default=None)

    # --- looking -----------------------------------------------------------------------

    def assert_never_two_holders(self) -> None:
        for at, holders in self.holder_history:
            assert len(holders) <= 1, f"two VIP holders at {at}: {holders}"


def two_nodes() -> LeaseSim:
    sim = LeaseSim()
    sim.add_node("a", 200, "192.0.2.11")
    sim.add_node("b", 100, "192.0.2.12")
    sim.run_until(lambda: sim.masters() == ["a"] and sim.holders() == ("a",)
                  and sim.nodes["b"].state == State.BACKUP, 5, "a MASTER, b BACKUP")
    sim.run(0.3)     # a hears b as BACKUP
    return sim


def test_the_best_node_takes_the_lease_then_becomes_master():
    sim = two_nodes()
    a = sim.nodes["a"]
    assert sim.etcd.key.holder == "a"
    takes = [at for at, e in a.effects if isinstance(e, TakeLease)]
    acquired = [at for at, e in a.effects if isinstance(e, AcquireVips)]
    assert len(takes) == 1 and acquired[0] > takes[0]          # the lease first, then the VIPs
    view = a.election.view(sim.now).lease
    assert view.phase == LeasePhase.HELD and view.holder == "a" and 0 < view.left_s <= TTL - timing.lease_margin_s(TTL)
    sim.run(10)
    assert sim.masters() == ["a"] and sim.nodes["b"].state == State.BACKUP
    assert len(sim.effects_of("a", RenewLease)) >= 10 / timing.lease_renew_s(TTL) - 2
    sim.assert_never_two_holders()


def test_without_renewal_the_master_drops_its_vips_before_etcd_expires_the_lease():
    sim = two_nodes()
    lease_id = sim.etcd.key.lease_id
    sim.etcd.reachable["a"] = False           # cut from etcd, still heard by b
    cut_at = sim.now
    sim.run_until(lambda: "a" not in sim.holders(), 5, "a drops the VIP")
    dropped_at = sim.now
    sim.run_until(lambda: sim.holders() == ("b",), 10, "b holds the VIP")
    expired_at = sim.etcd.expired_at[lease_id]
    # a counted from the renewal it SENT, with the margin: it let go before etcd could.
    assert dropped_at <= expired_at - timing.lease_margin_s(TTL) + 0.01
    assert dropped_at - cut_at <= TTL
    assert sim.nodes["a"].state == State.FAULT
    left = [t for _, t in sim.nodes["a"].transitions if t.old == State.MASTER][0]
    assert left.new == State.FAULT and "lost the etcd lease: no renewal since" in left.reason.text
    assert [t for t in sim.nodes["b"].transitions if t[1].new == State.MASTER][0][0] >= expired_at
    sim.assert_never_two_holders()
    # The watch still brought news (the key deleted, b's key): no proof etcd answers a; a stays in FAULT.
    assert [t for _, t in sim.nodes["a"].transitions if t.old == State.FAULT] == []
    sim.etcd.reachable["a"] = True            # back: a BACKUP again, b stays (no preemption race)
    sim.run_until(lambda: sim.nodes["a"].state != State.FAULT, 10, "a out of FAULT")
    sim.run(5)
    sim.assert_never_two_holders()
    assert len(sim.masters()) == 1


def test_a_late_renewal_extends_only_to_sent_plus_ttl_minus_margin():
    sim = two_nodes()
    election = sim.nodes["a"].election
    lease_id = sim.etcd.key.lease_id
    sent = sim.now
    # The answer to a renewal sent now arrives 1.4 s later: it may not count from its arrival.
    events = election.authority(LeaseRenewed(lease_id, TTL, sent), sent + 1.4)
    assert election.state == State.MASTER and not any(isinstance(e, ReleaseVips) for e in events)
    left = election.view(sent + 1.4).lease.left_s
    assert left == pytest.approx(sent + TTL - timing.lease_margin_s(TTL) - (sent + 1.4))


def test_a_renewal_answered_too_late_cannot_save_the_lease():
    sim = two_nodes()
    sim.etcd.delay_s["a"] = 0.8        # each answer arrives 1.6 s after it was sent: beyond held_until
    sim.run_until(lambda: sim.nodes["a"].state != State.MASTER, 5, "a steps down")
    left = [t for _, t in sim.nodes["a"].transitions if t.old == State.MASTER][0]
    assert "lost the etcd lease: no renewal since" in left.reason.text
    sim.assert_never_two_holders()


def test_a_key_held_by_another_keeps_a_node_from_master_whatever_heartbeats_say():
    sim = LeaseSim()
    foreign = sim.etcd.grant_foreign("pacs-far", sim.now)
    sim.add_node("a", 200, "192.0.2.11")
    sim.run(10)
    a = sim.nodes["a"]
    assert a.state == State.BACKUP and not a.holds_vip
    assert "waiting for the etcd lease (held by pacs-far)" in a.election.view(sim.now).holds
    sim.etcd.revoke(foreign, sim.now)          # the other site gives it up
    sim.run_until(lambda: sim.masters() == ["a"], 2, "a MASTER once the key is free")
    assert sim.etcd.key.holder == "a"


@pytest.mark.parametrize("how", ["release", "fault"])
def test_release_and_fault_revoke_right_after_the_vips_are_gone(how):
    sim = two_nodes()
    start = sim.now
    if how == "release":
        sim.command("a", "release", 0.1)
    else:
        sim.command("a", "set_fault", "checks", "check pacs down")
    sim.run_until(lambda: sim.holders() == ("b",), 3, "b holds the VIP")
    took = sim.now - start
    effects = [e for _, e in sim.nodes["a"].effects if isinstance(e, (ReleaseVips, RevokeLease))]
    release_index = next(i for i, e in enumerate(effects) if isinstance(e, ReleaseVips))
    revoke_index = next(i for i, e in enumerate(effects) if isinstance(e, RevokeLease))
    assert release_index < revoke_index
    assert took < TTL / 2, f"the lease passed in {took:.2f} s: it waited for the TTL"
    assert sim.etcd.key.holder == "b"
    sim.assert_never_two_holders()


def test_a_better_node_preempts_the_old_master_revokes_and_the_new_one_takes():
    sim = LeaseSim()
    sim.add_node("b", 100, "192.0.2.12")
    sim.run_until(lambda: sim.masters() == ["b"], 5, "b MASTER alone")
    sim.add_node("a", 200, "192.0.2.11")
    sim.run_until(lambda: sim.masters() == ["a"] and sim.holders() == ("a",), 5, "a preempts")
    assert sim.etcd.key.holder == "a"
    assert sim.effects_of("b", RevokeLease)
    handed = [t for _, t in sim.nodes["b"].transitions if t.old == State.MASTER]
    assert handed and handed[0].reason.code == Why.HANDED_OVER
    sim.assert_never_two_holders()


def test_a_killed_master_is_replaced_once_etcd_expires_its_lease():
    sim = two_nodes()
    lease_id = sim.etcd.key.lease_id
    sim.crash("a")
    sim.run_until(lambda: sim.masters() == ["b"], 5, "b MASTER")
    assert sim.now >= sim.etcd.expired_at[lease_id]
    assert sim.etcd.key.holder == "b"


def test_etcd_unreachable_at_start_is_a_fault_until_it_answers():
    sim = LeaseSim()
    sim.etcd.reachable["a"] = False
    sim.add_node("a", 200, "192.0.2.11")
    sim.run(8)
    a = sim.nodes["a"]
    assert a.state == State.FAULT and not a.holds_vip
    assert any("cannot use etcd" in f for f in a.election.faults.values())
    probes = [at for at, e in a.effects if isinstance(e, ProbeAuthority)]
    gaps = [later - earlier for earlier, later in zip(probes, probes[1:])]
    assert gaps and max(gaps) <= timing.LEASE_RETRY_MAX_S + UNREACHABLE_AFTER_S + 0.01   # bounded backoff
    sim.etcd.reachable["a"] = True
    sim.run_until(lambda: sim.masters() == ["a"], timing.LEASE_RETRY_MAX_S + 3, "a MASTER once etcd answers")


def test_a_lease_taken_when_no_longer_wanted_is_given_back():
    sim = LeaseSim()
    node = sim.add_node("a", 200, "192.0.2.11")
    sim.etcd.delay_s["a"] = 0.3
    sim.run_until(lambda: sim.effects_of("a", TakeLease), 2, "a asks for the lease")
    sim.command("a", "set_fault", "checks", "check pacs down")
    sim.run(1)
    assert node.state == State.FAULT and sim.effects_of("a", RevokeLease) and sim.etcd.key is None


def test_watch_news_of_its_own_new_key_before_the_take_answers_changes_nothing():
    """The watch may report this node's own PUT before the transaction's answer arrives."""
    sim = LeaseSim()
    node = sim.add_node("a", 200, "192.0.2.11")
    sim.run_until(lambda: sim.effects_of("a", TakeLease), 2, "a asks for the lease")
    election = node.election
    sent = sim.now
    assert election.view(sent).lease.phase == LeasePhase.TAKING
    sim.apply(node, election.authority(KeyHolder("a", 7, 555), sent + 0.01))
    assert election.view(sent).lease.phase == LeasePhase.TAKING
    sim.apply(node, election.authority(LeaseTaken(555, TTL, sent, 7), sent + 0.02))
    assert node.state == State.MASTER and not sim.effects_of("a", RevokeLease)


def test_a_key_left_by_an_earlier_run_of_this_node_is_waited_out():
    sim = LeaseSim()
    sim.etcd.grant_foreign("a", sim.now)       # the key names this node, under a lease it does not know
    node = sim.add_node("a", 200, "192.0.2.11")
    sim.run(3)
    assert node.state == State.BACKUP
    assert "(held by a, an earlier run of this node: it expires within the TTL)" in \
        " ".join(node.election.view(sim.now).holds)


def test_takeover_waits_for_the_lease_before_it_answers():
    sim = LeaseSim()
    foreign = sim.etcd.grant_foreign("pacs-far", sim.now)
    node = sim.add_node("a", 200, "192.0.2.11")
    sim.run(2)
    effects = sim.command("a", "takeover")
    assert not [e for e in effects if isinstance(e, CommandDone)]
    assert [e for e in effects if isinstance(e, CommandPending)]
    sim.etcd.revoke(foreign, sim.now)
    sim.run_until(lambda: sim.masters() == ["a"], 2, "a MASTER once the key is free")
    done = sim.effects_of("a", CommandDone)
    assert len(done) == 1 and done[0].ok and node.election.sticky


def test_a_refusal_older_than_the_news_of_the_key_deleted_does_not_leave_the_node_waiting():
    """The take's refusal may arrive after the watch told of the deletion that came after it."""
    sim = LeaseSim()
    node = sim.add_node("a", 200, "192.0.2.11")
    sim.run_until(lambda: sim.effects_of("a", TakeLease), 2, "a asks for the lease")
    election, now = node.election, sim.now
    sim.apply(node, election.authority(KeyHolder(None, 9), now + 0.01))             # deleted at 9
    sim.apply(node, election.authority(KeyHolder("b", 8, 77, refused_take=True), now + 0.02))  # held at 8
    assert election.view(now).lease.phase == LeasePhase.IDLE
    assert not [h for h in election.view(now).holds if "etcd" in h]
    sim.run_until(lambda: sim.masters() == ["a"], 3, "a decides again and takes the free key")


def test_a_take_without_answer_counts_as_failed():
    sim = LeaseSim()
    node = sim.add_node("a", 200, "192.0.2.11")
    sim.etcd.delay_s["a"] = 30          # the take is never answered in time
    sim.run(timing.lease_take_limit_s(TTL) + 1.5)
    assert node.state == State.FAULT and "no answer to the take" in " ".join(node.election.faults.values())


def test_a_master_in_maintenance_still_drops_its_vips_when_the_lease_runs_out():
    sim = two_nodes()
    sim.command("a", "set_maintenance", True)
    sim.etcd.reachable["a"] = False
    sim.run_until(lambda: "a" not in sim.holders(), 3, "a drops the VIP")
    left = [t for _, t in sim.nodes["a"].transitions if t.old == State.MASTER][0]
    assert left.new == State.FAULT and left.reason.code == Why.LEASE_LOST
    sim.assert_never_two_holders()


def test_a_failed_renewal_of_a_lease_already_given_up_changes_nothing():
    sim = two_nodes()
    sim.command("a", "release", 0.1)
    sim.run_until(lambda: sim.holders() == ("b",) and sim.nodes["a"].state == State.BACKUP, 3, "b MASTER")
    sim.apply(sim.nodes["a"], sim.nodes["a"].election.authority(LeaseFailed("renew", "no answer"), sim.now))
    assert sim.nodes["a"].state == State.BACKUP and not sim.nodes["a"].election.faults


def test_waiting_for_the_lease_raises_no_term():
    """Only becoming MASTER takes a new term: a node that keeps asking in vain does not climb."""
    sim = LeaseSim()
    sim.etcd.grant_foreign("pacs-far", sim.now)
    node = sim.add_node("a", 200, "192.0.2.11")
    sim.run(5)
    assert node.election.view(sim.now).term == 0


# --- the lease with the other gates and the VIPs' lifetime (sites with etcd) -------------------


def test_the_vips_end_by_the_leases_local_deadline_set_before_they_are_added_and_at_every_renewal():
    sim = two_nodes()
    a = sim.nodes["a"]
    kinds = [type(e) for _, e in a.effects if isinstance(e, (VipsUntil, AcquireVips))]
    assert kinds[:2] == [VipsUntil, AcquireVips]              # the lifetime is known before the VIPs are added
    sim.run(3)
    until = [(at, e.until) for at, e in a.effects if isinstance(e, VipsUntil)]
    assert len(until) >= 3 / timing.lease_renew_s(TTL) - 1   # moved with every renewal
    assert all(later > earlier for (_, earlier), (_, later) in zip(until, until[1:]))
    view = a.election.view(sim.now).lease
    assert until[-1][1] == pytest.approx(sim.now + view.left_s)   # the same deadline the core keeps
    for at, deadline in until:
        lifetime = timing.vip_lifetime_s(5, deadline, at)
        assert 1 <= lifetime and at + lifetime <= deadline       # the address ends by the local deadline


def test_vip_lifetime_under_the_lease_is_whole_seconds_never_past_the_deadline():
    assert timing.vip_lifetime_s(2, None, 10.0) == 2                 # heartbeats: the VIP lease
    assert timing.vip_lifetime_s(2, 11.49, 10.0) == 1                # TTL 2: sent + 1.5, answered 10 ms later
    assert timing.vip_lifetime_s(2, 13.75, 10.0) == 2                # never longer than the VIP lease
    assert timing.vip_lifetime_s(9, 13.75, 10.0) == 3
    assert timing.vip_lifetime_s(2, 10.99, 10.0) == 0                # under a second left: not renewed
    assert timing.vip_lifetime_s(2, 9.0, 10.0) == 0


def test_a_timed_vip_renewal_ends_the_address_just_before_the_deadline_not_a_half_second_early():
    lead = timing.VIP_RENEW_LEAD_S
    # TTL 2, answered 10 ms after it was sent: 1 s at once, then at 10.39 1 s more, to 11.39.
    at = timing.vip_timed_renewal(2, 11.49, 10.0)
    assert at == pytest.approx(11.49 - lead - 1)
    assert timing.vip_lifetime_s(2, 11.49, at) == 1 and at + 1 == pytest.approx(11.49 - lead)
    assert timing.vip_lifetime_s(2, 11.49, at + lead * 0.9) == 1            # late by less than the lead: same
    assert timing.vip_lifetime_s(2, 11.49, at + lead * 1.1) == 0            # later: not renewed, never past
    assert timing.vip_timed_renewal(2, 14.0, 10.0) == pytest.approx(14.0 - lead - 2)   # capped by the VIP lease
    assert timing.vip_timed_renewal(2, 11.05, 10.0) is None


def test_another_gates_hold_ends_a_take_under_way():
    """The BGP session gate closes while the take is under way: the node no longer competes."""
    sim = two_nodes()
    b = sim.nodes["b"]
    sim.etcd.delay_s["b"] = 0.2
    sim.crash("a")
    sim.run_until(lambda: sim.effects_of("b", TakeLease), 5, "b asks for the lease")
    sim.command("b", "set_hold", "bgp", "BGP gate closed: BGP session uplink not established")
    assert b.election.view(sim.now).lease.phase == LeasePhase.IDLE
    sim.run(5)
    assert b.state == State.BACKUP and not b.holds_vip
    assert sim.etcd.key is None                                  # a's lease expired; b did not take it
    takes = len(sim.effects_of("b", TakeLease))
    sim.run(5)
    assert len(sim.effects_of("b", TakeLease)) == takes           # held: it does not ask again
    sim.command("b", "set_hold", "bgp", None)
    sim.run_until(lambda: sim.masters() == ["b"], 3, "b MASTER once its gate opens")


def test_a_held_node_never_asks_for_the_lease_while_the_key_is_free():
    sim = two_nodes()
    b = sim.nodes["b"]
    sim.command("b", "set_hold", "bgp", "BGP gate closed: BGP session uplink Active")
    sim.crash("a")
    sim.run(6)
    assert not sim.effects_of("b", TakeLease) and b.state == State.BACKUP and sim.etcd.key is None


def test_a_master_whose_bgp_session_goes_down_faults_and_revokes_so_the_other_takes_at_once():
    sim = two_nodes()
    start = sim.now
    sim.command("a", "set_fault", "bgp", "BGP session down (uplink Active): this node cannot announce its routed VIPs")
    sim.run_until(lambda: sim.holders() == ("b",), 3, "b holds the VIP")
    assert sim.now - start < TTL / 2, "b waited for the lease to expire"
    a_effects = [e for _, e in sim.nodes["a"].effects if isinstance(e, (ReleaseVips, RevokeLease))]
    assert isinstance(a_effects[-2], ReleaseVips) and isinstance(a_effects[-1], RevokeLease)
    assert sim.nodes["a"].state == State.FAULT and sim.etcd.key.holder == "b"
    sim.assert_never_two_holders()


def test_a_waiting_node_whose_watch_hears_nothing_reads_the_key_again_and_takes_it_once_expired():
    """b's watch stream sits on the etcd member of the lost site: it never tells of the expiry."""
    sim = two_nodes()
    lease_id = sim.etcd.key.lease_id
    sim.watch_cut.add("b")
    sim.crash("a")
    sim.run_until(lambda: sim.masters() == ["b"], 5, "b MASTER without watch news")
    assert sim.now - sim.etcd.expired_at[lease_id] <= timing.lease_wait_probe_s(TTL) + 0.05
    assert any("is the key still held" in e.why for e in sim.effects_of("b", ProbeAuthority))
