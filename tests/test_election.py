"""The election core on a fake clock (RFC 5798 sections cited per test). No sleeps."""

from __future__ import annotations

import ipaddress
import time

import pytest

from hapacs import suspects, timing, wire
from hapacs.effects import (
    Announce, CommandDone, CommandPending, HandoverDone, Misconfigured, Notice, ProbeWitness, SendAdvert,
    Stopped, Transition, Why,
)
from hapacs.election import CommandRefused
from hapacs.states import Flags, State

from .simnet import CLUSTER, DIGEST, SimCluster

M, B = State.MASTER, State.BACKUP


def two_nodes(**kwargs) -> SimCluster:
    sim = SimCluster()
    sim.add("a", 150, "192.0.2.11", **kwargs)
    sim.add("b", 100, "192.0.2.12", **kwargs)
    sim.run_until(lambda: sim.masters() == ["a"] and sim.nodes["b"].state == B, 2.0, "a elected")
    sim.run(0.5)   # let each hear the other's new state
    return sim


def last_reason(sim: SimCluster, name: str) -> Transition:
    return sim.nodes[name].transitions[-1][1]


def heal_a_split_brain(sim: SimCluster) -> float:
    """a cut off from b until both are MASTER, for one second more, then healed; returns sim.now at the heal."""
    sim.isolate("a")
    sim.run_until(lambda: sorted(sim.masters()) == ["a", "b"], 2.0, "two masters")
    sim.run(1.0)
    sim.heal()
    return sim.now


def test_highest_priority_becomes_master_and_only_it_holds_the_vip():
    sim = two_nodes()
    assert sim.holders() == ("a",)
    sim.run(5.0)
    assert sim.masters() == ["a"] and sim.holders() == ("a",)
    assert [t.reason.code for _, t in sim.nodes["a"].transitions] == [Why.NO_MASTER]
    assert [t.reason.code for _, t in sim.nodes["b"].transitions] == [Why.MASTER_HEARD]


def test_start_listens_one_master_down_interval_before_deciding():
    # RFC 5798 6.4.1 with a listening INIT: nobody is MASTER before the interval ends.
    sim = SimCluster()
    sim.add("a", 150, "192.0.2.11")
    sim.run(0.29)
    assert sim.masters() == []
    took = sim.run_until(lambda: sim.masters() == ["a"], 1.0, "a master")
    assert took <= 0.02


def test_master_crash_backup_takes_over_after_master_down_interval():
    # RFC 5798 6.4.2: Master_Down_Timer; b is the best candidate, so its skew is 0.
    sim = two_nodes()
    sim.crash("a")
    crashed_at = sim.now
    took = sim.run_until(lambda: sim.nodes["b"].state == M, 2.0, "b master")
    assert 0.2 <= took <= 0.3 + 0.001
    reason = last_reason(sim, "b").reason
    assert reason.code == Why.MASTER_DOWN and "MASTER a silent for" in reason.text
    assert sim.nodes["b"].holds_vip and sim.now - crashed_at == pytest.approx(took)


def test_second_best_backup_waits_the_rfc_skew_behind_the_best():
    sim = SimCluster()
    sim.add("a", 200, "192.0.2.11")
    sim.add("b", 150, "192.0.2.12")
    sim.add("c", 100, "192.0.2.13")
    sim.run_until(lambda: sim.masters() == ["a"], 2.0, "a master")
    sim.run(1.0)
    # Each BACKUP re-arms its Master_Down_Timer on every heartbeat of the MASTER: the deadline it
    # shows is that heartbeat plus its Master_Down_Interval.
    for name, interval in (("b", 0.3), ("c", 3 * 0.1 + (256 - 100) * 0.1 / 256)):
        election = sim.nodes[name].election
        heard = election.view(sim.now).peers[0]
        assert heard.name == "a"
        assert election.master_down_deadline - (sim.now - heard.last_seen_s) == pytest.approx(interval)
    sim.crash("a")
    sim.run_until(lambda: sim.masters() == ["b"], 2.0, "b master")
    sim.run(2.0)
    assert sim.masters() == ["b"] and sim.nodes["c"].state == B
    assert all(t.new != M for _, t in sim.nodes["c"].transitions)


def test_three_nodes_highest_remaining_priority_wins_even_if_listed_last():
    sim = SimCluster()
    sim.add("a", 200, "192.0.2.11")
    sim.add("b", 100, "192.0.2.12")
    sim.add("c", 150, "192.0.2.13")
    sim.run_until(lambda: sim.masters() == ["a"], 2.0, "a master")
    sim.run(0.5)
    sim.crash("a")
    sim.run_until(lambda: len(sim.masters()) == 1 and sim.masters() != ["a"], 2.0, "new master")
    sim.run(2.0)
    assert sim.masters() == ["c"] and sim.holders() == ("c",)


def test_ties_are_broken_by_the_higher_address():
    # RFC 5798 6.4.3: same priority, the higher primary address wins.
    sim = SimCluster()
    sim.add("a", 100, "192.0.2.11")
    sim.add("b", 100, "192.0.2.12")
    sim.run_until(lambda: len(sim.masters()) == 1, 2.0, "one master")
    sim.run(2.0)
    assert sim.masters() == ["b"]


def test_shutdown_of_master_hands_over_with_priority_zero_make_before_break():
    # RFC 5798 6.4.3: a leaving MASTER sends priority 0; here it also names b.
    sim = two_nodes()
    sim.command("a", "shutdown", 0.0)
    took = sim.run_until(lambda: sim.nodes["b"].state == M, 1.0, "b master")
    assert took < 0.005   # no Master_Down_Interval: one heartbeat's flight
    sim.run_until(lambda: sim.effects_of("a", Stopped), 1.0, "a stopped")
    assert last_reason(sim, "b").reason.code == Why.HANDOVER_TO_ME
    assert last_reason(sim, "a").reason.code == Why.HANDED_OVER
    # Make before break: at every change someone held the VIP.
    assert all(holders for _, holders in sim.holder_history)
    assert sim.holders() == ("b",)


def test_master_leaving_without_successor_backups_wait_skew_only():
    # RFC 5798 6.4.2: priority 0 sets Master_Down_Timer to Skew_Time.
    sim = SimCluster()
    sim.add("a", 200, "192.0.2.11")
    sim.add("b", 150, "192.0.2.12")
    sim.add("c", 100, "192.0.2.13")
    sim.run_until(lambda: sim.masters() == ["a"], 2.0, "a master")
    sim.run(0.5)
    # An asymmetric fault: a hears nobody, b and c still hear a. Stopping, a finds no healthy
    # BACKUP to hand over to, so it leaves naming no successor: priority 0 with no target.
    sim.cut_one_way("b", "a")
    sim.cut_one_way("c", "a")
    sim.run_until(lambda: not any(p.up for p in sim.nodes["a"].election.view(sim.now).peers), 1.0,
                  "a hears no peer")
    sim.command("a", "shutdown", 5.0)
    leaving = sim.effects_of("a", SendAdvert)[-1].advert
    assert leaving.priority == 0 and leaving.target is None and sim.effects_of("a", Stopped)
    assert "no healthy BACKUP to hand over to" in sim.effects_of("a", Stopped)[-1].text
    took = sim.run_until(lambda: sim.masters() == ["b"], 1.0, "b master")
    assert took < 0.005          # b is the best candidate: skew 0, not a Master_Down_Interval
    assert last_reason(sim, "b").reason.code == Why.MASTER_LEFT
    sim.run(1.0)
    assert sim.nodes["c"].state == B


def test_preempt_true_old_master_takes_back_after_preempt_delay_with_a_drained_handover():
    sim = two_nodes(preempt_delay=2.0)
    sim.crash("a")
    sim.run_until(lambda: sim.masters() == ["b"], 2.0, "b master")
    sim.restart("a")
    sim.run_until(lambda: sim.nodes["a"].state == B, 1.0, "a backup")
    started = sim.now
    sim.run_until(lambda: sim.masters() == ["a"], 5.0, "a master again")
    assert sim.now - started >= 2.0
    assert last_reason(sim, "a").reason.code == Why.HANDOVER_TO_ME
    assert any(isinstance(e, HandoverDone) and e.ok for e in sim.effects_of("b", HandoverDone))
    sim.run(3.0)
    assert sim.holders() == ("a",)


def test_preempt_false_old_master_stays_backup():
    sim = two_nodes(preempt=False)
    sim.crash("a")
    sim.run_until(lambda: sim.masters() == ["b"], 2.0, "b master")
    sim.restart("a")
    sim.run(10.0)
    assert sim.masters() == ["b"] and sim.nodes["a"].state == B and sim.holders() == ("b",)


def test_restarted_node_removes_stale_vip_when_it_hears_a_master():
    sim = two_nodes()
    sim.crash("a")
    sim.run_until(lambda: sim.masters() == ["b"], 2.0, "b master")
    node = sim.restart("a")
    assert node.holds_vip   # the old lease is still on the interface
    sim.run_until(lambda: not sim.nodes["a"].holds_vip, 0.2, "stale VIP released")
    assert sim.nodes["a"].state == B


def test_healed_partition_newer_master_stays_loser_steps_down_at_once_winner_announces():
    sim = two_nodes(preempt=False)
    healed = heal_a_split_brain(sim)
    sim.run_until(lambda: sim.masters() == ["b"], 1.0, "one master")
    assert sim.now - healed <= 2 * 0.1
    assert last_reason(sim, "a").reason.code == Why.SPLIT_BRAIN
    assert "became MASTER more recently" in last_reason(sim, "a").reason.text
    sim.run(0.01)
    assert sim.effects_of("b", Announce)
    sim.run(2.0)
    assert sim.holders() == ("b",)


@pytest.mark.parametrize("partition_s", [0.35, 0.5, 3.0])
def test_after_any_partition_the_winner_announces_again(partition_s):
    # Short partitions too: b never marked a as lost, and a may step down before b hears it.
    sim = two_nodes(preempt=False)
    sim.isolate("a")
    sim.run_until(lambda: sorted(sim.masters()) == ["a", "b"], 2.0, "two masters")
    sim.run(partition_s - 0.3)
    announced = len(sim.effects_of("b", Announce))
    sim.heal()
    sim.run(2 * 0.1)
    assert sim.masters() == ["b"] and sim.holders() == ("b",)
    assert len(sim.effects_of("b", Announce)) > announced


def test_hung_master_resumed_resolves_to_one_holder():
    sim = two_nodes(preempt=False)
    sim.crash("a")                      # SIGSTOP: no timers, no packets
    sim.run_until(lambda: sim.masters() == ["b"], 2.0, "b master")
    sim.run(3.0)
    sim.nodes["a"].alive = True          # SIGCONT: a still believes it is MASTER
    sim.run_until(lambda: sim.masters() == ["b"], 0.5, "a steps down")
    assert sim.holders() == ("b",)


def test_link_down_is_fault_at_once_and_link_up_returns_to_backup():
    sim = two_nodes()
    # The link is down: nothing a sends reaches b any more, its FAULT heartbeat included.
    sim.isolate("a")
    sim.command("a", "set_fault", "link:eth0", "link eth0 down")
    assert sim.nodes["a"].state == State.FAULT and not sim.nodes["a"].holds_vip
    took = sim.run_until(lambda: sim.masters() == ["b"], 1.0, "b master")
    # b never hears the FAULT: a is silent, so b waits its Master_Down_Interval (3 x 0.1 s, skew 0)
    # counted from a's last heartbeat, which left up to one interval before the link went down.
    assert 0.3 - 0.1 <= took <= 0.3 + 0.001
    assert last_reason(sim, "b").reason.code == Why.MASTER_DOWN
    sim.heal()
    sim.command("a", "set_fault", "link:eth0", None, recovered="link eth0 up")
    assert sim.nodes["a"].state == B
    assert last_reason(sim, "a").reason.text == "link eth0 up"
    sim.run(1.0)
    assert len(sim.masters()) == 1 and len(sim.holders()) == 1


def test_check_fault_on_master_the_backup_takes_over_in_one_heartbeat():
    # The link is up: b hears a go to FAULT and takes over at once, without a Master_Down_Interval.
    sim = two_nodes()
    sim.command("a", "set_fault", "check:pacs", "check pacs down")
    assert sim.nodes["a"].state == State.FAULT and not sim.nodes["a"].holds_vip
    took = sim.run_until(lambda: sim.masters() == ["b"], 1.0, "b master")
    assert took < 0.005   # b hears a in FAULT: it left, and b is the best candidate
    assert last_reason(sim, "b").reason.code == Why.MASTER_LEFT


def test_fault_node_never_becomes_master_even_alone():
    sim = SimCluster()
    node = sim.add("a", 150, "192.0.2.11", start=False)
    node.election.set_fault("check:pacs", "check pacs down", sim.now)
    sim.apply(node, node.election.start(sim.now))
    sim.run(5.0)
    assert node.state == State.FAULT and not node.holds_vip


def test_negative_weight_penalty_lets_a_healthier_backup_preempt():
    sim = two_nodes(preempt_delay=0.5)
    sim.command("a", "set_penalty", 100)   # 150 - 100 = 50 < 100
    sim.run_until(lambda: sim.masters() == ["b"], 3.0, "b master")
    assert sim.nodes["a"].election.priority == 50


def test_penalty_is_clamped_to_one():
    sim = two_nodes()
    sim.command("a", "set_penalty", 1000)
    assert sim.nodes["a"].election.priority == 1


def test_maintenance_freezes_master_through_a_fault():
    sim = two_nodes()
    sim.command("a", "set_maintenance", True)
    sim.command("a", "set_fault", "check:pacs", "check pacs down")
    sim.run(3.0)
    assert sim.masters() == ["a"]
    effects = sim.command("a", "set_maintenance", False)
    assert any(isinstance(e, Transition) and e.new == State.FAULT for e in effects)


def test_backup_in_maintenance_does_not_take_over():
    sim = two_nodes()
    sim.command("b", "set_maintenance", True)
    sim.crash("a")
    sim.run(3.0)
    assert sim.nodes["b"].state == B and sim.masters() == []
    notices = [e.text for e in sim.effects_of("b", Notice)]
    assert any("may not become MASTER: maintenance is on" in t for t in notices)
    sim.command("b", "set_maintenance", False)
    sim.run_until(lambda: sim.masters() == ["b"], 1.0, "b master")


def test_release_refused_without_healthy_backup_and_on_backup():
    sim = two_nodes()
    with pytest.raises(CommandRefused, match="not MASTER"):
        sim.command("b", "release", 30.0)
    sim.command("b", "set_fault", "check:pacs", "check pacs down")
    sim.run(0.01)
    with pytest.raises(CommandRefused, match=r"no healthy BACKUP.*b FAULT"):
        sim.command("a", "release", 30.0)


def test_a_refused_release_says_a_held_backup_is_held_back():
    """A BACKUP held back (first check results, the BGP gate, the etcd lease) is no candidate:
    the refusal says so and where to look, not only "b BACKUP"."""
    sim = two_nodes()
    sim.command("b", "set_hold", "bgp", "BGP session uplink not stable yet")
    sim.run(0.3)
    with pytest.raises(CommandRefused, match=r"no healthy BACKUP.*b BACKUP but held back .*`hapacs status` on b"):
        sim.command("a", "release", 30.0)
    sim.command("b", "set_hold", "bgp", None)
    sim.run(0.3)
    sim.command("a", "release", 30.0)
    sim.run_until(lambda: sim.masters() == ["b"], 3.0, "b master after the hold ends")


def test_release_hands_over_after_drain_and_new_master_is_sticky():
    sim = two_nodes(preempt_delay=0.0)
    sim.nodes["a"].drain_delay_s = 1.5
    sim.command("a", "release", 30.0)
    sim.run(1.4)
    assert sim.masters() == ["a"]        # still draining
    sim.run_until(lambda: sim.masters() == ["b"], 1.0, "b master")
    done = sim.effects_of("a", HandoverDone)
    assert done and done[-1].ok and done[-1].target == "b"
    sim.run(5.0)                         # a has preempt and a higher priority, but b is sticky
    assert sim.masters() == ["b"] and sim.nodes["b"].election.sticky
    assert all(holders for _, holders in sim.holder_history)


def test_takeover_on_backup_asks_master_and_stays_master():
    sim = two_nodes(preempt_delay=0.0)
    sim.command("b", "takeover")
    sim.run_until(lambda: sim.masters() == ["b"], 2.0, "b master")
    assert sim.nodes["b"].election.sticky
    sim.run(5.0)
    assert sim.masters() == ["b"]
    # another command ends it: release hands back to a
    sim.command("b", "release", 1.0)
    sim.run_until(lambda: sim.masters() == ["a"], 3.0, "a master")


def test_takeover_refused_in_fault():
    sim = two_nodes()
    sim.command("b", "set_fault", "check:pacs", "check pacs down")
    with pytest.raises(CommandRefused, match="FAULT"):
        sim.command("b", "takeover")


def test_handover_to_a_target_that_never_answers_is_abandoned_and_master_stays():
    sim = two_nodes()
    sim.command("a", "release", 0.0)
    sim.crash("b")   # b dies right after the drain started
    sim.run_until(lambda: sim.effects_of("a", HandoverDone), 3.0, "handover result")
    result = sim.effects_of("a", HandoverDone)[-1]
    assert not result.ok and sim.masters() == ["a"] and sim.nodes["a"].holds_vip


def test_every_transition_has_a_reason_sentence():
    sim = two_nodes()
    sim.crash("a")
    sim.run(2.0)
    sim.restart("a")
    sim.run(3.0)
    for node in sim.nodes.values():
        for _, transition in node.transitions:
            assert transition.reason.text and isinstance(transition.reason.code, Why)


def test_core_is_deterministic():
    def scenario():
        sim = two_nodes()
        sim.crash("a")
        sim.run(1.0)
        sim.restart("a")
        sim.run(3.0)
        return [(round(t, 9), tr.old, tr.new, tr.reason.text)
                for n in sim.nodes.values() for t, tr in n.transitions]
    assert scenario() == scenario()


def test_backup_heartbeats_carry_state_and_preempt_flag():
    sim = two_nodes()
    adverts = sim.effects_of("b", SendAdvert)
    assert adverts[-1].advert.state == B and Flags.PREEMPT in adverts[-1].advert.flags


def test_thousands_of_steps_per_second():
    sim = two_nodes()
    started = time.perf_counter()
    sim.run(300.0)   # 300 s of cluster time: ~6000 heartbeats and their deliveries
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0
    assert sim.masters() == ["a"]


def test_node_held_back_until_first_check_results_then_takes_over():
    sim = SimCluster()
    node = sim.add("a", 150, "192.0.2.11", start=False)
    node.election.set_hold("checks", "waiting for the first check results", sim.now)
    sim.apply(node, node.election.start(sim.now))
    sim.run(2.0)
    assert node.state == B and not node.holds_vip
    assert any("may not become MASTER: waiting for the first check results" in e.text
               for e in sim.effects_of("a", Notice))
    sim.command("a", "set_hold", "checks", None)
    took = sim.run_until(lambda: node.state == M, 1.0, "a master")
    assert took < 0.01   # it listened for 2 s already: skew only


def test_hold_cleared_with_a_live_master_waits_for_it():
    sim = two_nodes()
    sim.command("b", "set_hold", "checks", "pending")
    sim.command("b", "set_hold", "checks", None)
    sim.run(3.0)
    assert sim.masters() == ["a"]


@pytest.mark.parametrize("head_start", [0.05, 0.08, 0.2, 0.29])
def test_worse_node_started_earlier_waits_for_the_better_one(head_start):
    # Cold start: b's listening period ends first, but it hears a better candidate (a).
    sim = SimCluster()
    sim.add("b", 100, "192.0.2.12")
    sim.run(head_start)
    sim.add("a", 150, "192.0.2.11")
    sim.run_until(lambda: len(sim.masters()) == 1, 2.0, "one master")
    sim.run(1.0)
    assert sim.masters() == ["a"]
    assert all(t.new != M for _, t in sim.nodes["b"].transitions)


def test_waiting_for_a_better_candidate_is_bounded():
    # a is alive but (through some fault of its own) never takes over: it keeps sending heartbeats
    # as a BACKUP with a better priority. b waits for it, then takes over after 2 more intervals.
    sim = SimCluster()
    sim.add("b", 100, "192.0.2.12")
    a_address = ipaddress.ip_address("192.0.2.11").packed
    started = sim.now
    for seq in range(1, 40):
        a_says = wire.Advert(CLUSTER, "a", B, 150, Flags.PREEMPT, 100, 0, 1, seq, DIGEST)
        sim.command("b", "receive", a_says, a_address)
        if sim.masters() == ["b"]:
            break
        sim.run(0.1)
    took = sim.now - started
    assert sim.masters() == ["b"]
    assert 0.3 < took < 0.3 + 2 * 0.37 + 0.1


def test_a_better_node_held_back_by_pending_checks_is_waited_for_but_not_for_ever():
    # Its checks never answer: b waits HELD_PEER_WAIT_S for it (a cold start where a's first
    # check result is about to come), then takes over rather than leave the VIPs unheld.
    sim = SimCluster()
    sim.add("b", 100, "192.0.2.12")
    a = sim.add("a", 150, "192.0.2.11", start=False)
    a.election.set_hold("checks", "waiting for the first check results", sim.now)
    sim.apply(a, a.election.start(sim.now))
    took = sim.run_until(lambda: sim.masters() == ["b"], 10.0, "b master")
    assert timing.HELD_PEER_WAIT_S < took < timing.HELD_PEER_WAIT_S + 1.0
    assert Flags.HELD in sim.nodes["b"].election.peers["a"].flags


@pytest.mark.parametrize("first_result_s", [0.05, 0.3, 0.5, 1.0, 3.0])
def test_cold_start_elects_the_better_node_held_by_its_checks_with_no_extra_move(first_result_s):
    # Both hosts powered on together (issue: "a simultaneous cold start"); a's check answers
    # first after `first_result_s`, b has none. b must not take the VIPs meanwhile: it would be
    # preempted a moment later (an extra move), or be MASTER together with a.
    sim = SimCluster()
    a = sim.add("a", 150, "192.0.2.11", start=False)
    b = sim.add("b", 100, "192.0.2.12", start=False)
    a.election.set_hold("checks", "waiting for the first check results", sim.now)
    sim.apply(a, a.election.start(sim.now))
    sim.apply(b, b.election.start(sim.now))
    sim.run(first_result_s)
    sim.command("a", "set_checks", None, 0, None)
    sim.run_until(lambda: sim.masters() == ["a"], 3.0, "a master")
    sim.run(2.0)
    assert sim.masters() == ["a"]
    assert {holders for _, holders in sim.holder_history} <= {(), ("a",)}   # none yet, then a alone
    assert not any(t.new == State.MASTER for _, t in b.transitions)


# --- split-brain protection: witness and quorum ---------------------------------------------

def witness_pair() -> SimCluster:
    sim = SimCluster()
    sim.add("a", 150, "192.0.2.11", witness=True)
    sim.add("b", 100, "192.0.2.12", witness=True)
    sim.run_until(lambda: sim.masters() == ["a"] and sim.nodes["b"].state == B, 2.0, "a elected")
    sim.run(0.5)
    return sim


def test_isolated_backup_without_witness_goes_fault_and_never_holds_the_vip():
    sim = witness_pair()
    sim.isolate("b")
    sim.nodes["b"].witness_reachable = False      # cut off from everything
    sim.run(5.0)
    assert sim.nodes["b"].state == State.FAULT and "isolated" in last_reason(sim, "b").reason.text
    assert all(t.new != M for _, t in sim.nodes["b"].transitions)
    assert not any(holders == ("a", "b") or "b" in holders for _, holders in sim.holder_history)
    assert sim.masters() == ["a"]
    sim.heal()
    sim.nodes["b"].witness_reachable = True
    took = sim.run_until(lambda: sim.nodes["b"].state == B, 1.0, "b back")
    assert took <= 2 * 0.1 and sim.masters() == ["a"] and sim.holders() == ("a",)


def test_isolated_master_without_witness_releases_and_the_backup_takes_over():
    sim = witness_pair()
    sim.isolate("a")
    sim.nodes["a"].witness_reachable = False
    sim.run_until(lambda: sim.nodes["a"].state == State.FAULT, 2.0, "a FAULT")
    sim.run_until(lambda: sim.masters() == ["b"], 2.0, "b MASTER (it reaches the witness)")
    sim.heal()
    sim.nodes["a"].witness_reachable = True
    sim.run(0.2)
    assert sim.masters() == ["b"] and sim.holders() == ("b",)


def test_without_a_witness_an_isolated_backup_does_become_master():
    sim = two_nodes()
    sim.isolate("b")
    sim.run_until(lambda: sorted(sim.masters()) == ["a", "b"], 2.0, "split brain without protection")


def test_alone_at_start_the_witness_decides():
    sim = SimCluster()
    node = sim.add("a", 150, "192.0.2.11", witness=True, start=False)
    node.witness_reachable = False
    sim.apply(node, node.election.start(sim.now))
    sim.run(2.0)
    assert node.state == State.FAULT and not node.holds_vip
    node.witness_reachable = True
    sim.apply(node, node.election.set_witness(True, "ris ok", sim.now))
    sim.run_until(lambda: node.state == M, 2.0, "a MASTER once the witness answers")


def three_with_quorum() -> SimCluster:
    sim = SimCluster()
    for name, priority, address in (("a", 200, "192.0.2.11"), ("b", 150, "192.0.2.12"), ("c", 100, "192.0.2.13")):
        sim.add(name, priority, address, cluster_size=3)
    sim.run_until(lambda: sim.masters() == ["a"], 2.0, "a elected")
    sim.run(0.5)
    return sim


def test_master_without_a_majority_releases_and_the_majority_elects():
    sim = three_with_quorum()
    sim.isolate("a")
    sim.run_until(lambda: sim.nodes["a"].state == State.FAULT and sim.masters() == ["b"], 3.0,
                  "a releases, b MASTER")
    assert "no quorum: hears 1 of 3 nodes, 2 needed" in last_reason(sim, "a").reason.text
    sim.heal()
    sim.run_until(lambda: sim.nodes["a"].state in (B, M) and len(sim.masters()) == 1, 1.0, "healed")
    sim.run(3.0)
    assert len(sim.masters()) == 1 and len(sim.holders()) == 1


def test_node_alone_of_three_never_becomes_master():
    sim = three_with_quorum()
    sim.crash("a")
    sim.crash("c")
    sim.run(5.0)
    assert sim.nodes["b"].state == B and not sim.nodes["b"].holds_vip


def test_preempt_wait_is_forgotten_when_the_master_vanishes():
    # Found by the fuzzer: a node waiting to preempt, whose MASTER then vanished while it could
    # not take over itself (no quorum), kept a preempt deadline in the past: the timer spun.
    sim = SimCluster()
    sim.add("b", 100, "192.0.2.12", preempt_delay=0.5, cluster_size=3)
    sim.add("c", 50, "192.0.2.13", preempt_delay=0.5, cluster_size=3)
    sim.run_until(lambda: sim.masters() == ["b"], 3.0, "b master")
    sim.add("a", 150, "192.0.2.11", preempt_delay=0.5, cluster_size=3)
    sim.run_until(lambda: sim.nodes["a"].election.handoffs.preemption.since is not None, 2.0, "a waits to preempt")
    sim.crash("b")
    sim.crash("c")
    sim.run(3.0)        # exceeds simnet's step bound if a deadline stays in the past
    assert sim.masters() == [] and sim.nodes["a"].state == B


def test_a_peer_term_at_the_wire_maximum_does_not_stop_heartbeats():
    # A node holding the key (a buggy peer, or after 2**32 terms) advertises the largest term the
    # wire carries. Whoever becomes MASTER next computes max_term + 1 = 2**32, which wire.encode
    # cannot pack: every later heartbeat raises struct.error.
    sim = SimCluster()
    sim.add("a", 150, "192.0.2.11")
    sim.add("b", 100, "192.0.2.12")
    sim.run_until(lambda: sim.masters() == ["a"], 2.0, "a elected")
    sim.run(0.5)
    c = ipaddress.ip_address("192.0.2.13").packed
    top = wire.Advert(CLUSTER, "c", State.MASTER, 254, Flags.NONE, 100, 2**32 - 1, 1, 1, DIGEST)
    for name in ("a", "b"):
        sim.apply(sim.nodes[name], sim.nodes[name].election.receive(top, c, sim.now))
    sim.run(3.0)      # c falls silent: a or b becomes MASTER again
    assert len(sim.masters()) == 1 and len(sim.holders()) == 1


def test_a_master_in_maintenance_is_not_preempted_until_maintenance_is_off():
    # The flag travels in the heartbeats: a better BACKUP does not even ask a MASTER in maintenance.
    sim = SimCluster()
    sim.add("b", 100, "192.0.2.12", preempt_delay=0.2)
    sim.run_until(lambda: sim.masters() == ["b"], 2.0, "b master")
    sim.command("b", "set_maintenance", True)
    sim.add("a", 150, "192.0.2.11", preempt_delay=0.2)
    sim.run(5.0)
    assert sim.masters() == ["b"] and sim.holders() == ("b",) and sim.nodes["a"].state == B
    asked = [e for e in sim.effects_of("a", SendAdvert) if Flags.TAKEOVER_REQUEST in e.advert.flags]
    assert asked == [] and not any("preempt" in e.text for e in sim.effects_of("a", Notice))
    history_from = len(sim.holder_history)
    sim.command("b", "set_maintenance", False)
    took = sim.run_until(lambda: sim.masters() == ["a"], 2.0, "a preempts once maintenance is off")
    assert took <= 0.2 + 0.1 + 0.01   # preempt_delay, counted from b's next heartbeat
    assert last_reason(sim, "a").reason.code == Why.HANDOVER_TO_ME
    assert all(holders for _, holders in sim.holder_history[history_from:])


def test_split_brain_loser_with_the_higher_priority_takes_back_later_by_a_planned_handover():
    sim = two_nodes(preempt_delay=1.0)
    healed = heal_a_split_brain(sim)
    sim.run_until(lambda: sim.masters() == ["b"], 1.0, "a, the older MASTER, steps down")
    assert last_reason(sim, "a").reason.code == Why.SPLIT_BRAIN
    stepped_down = sim.now
    history_from = len(sim.holder_history)
    took = sim.run_until(lambda: sim.masters() == ["a"], 5.0, "a takes the VIPs back (preempt)")
    assert sim.now - stepped_down >= 1.0      # not before preempt_delay: a planned move, not a race
    assert last_reason(sim, "a").reason.code == Why.HANDOVER_TO_ME
    assert last_reason(sim, "b").reason.code == Why.HANDED_OVER
    done = sim.effects_of("b", HandoverDone)
    assert done and done[-1].ok and done[-1].target == "a"
    # Make before break: during the handover someone held the VIP at every moment.
    assert all(holders for _, holders in sim.holder_history[history_from:])
    assert took < 1.0 + 2 * 0.1 + 0.05 and sim.now - healed < 2.0
    sim.run(3.0)
    assert sim.masters() == ["a"] and sim.holders() == ("a",)


def test_only_a_witness_probe_after_the_peers_fell_silent_counts():
    # b's witness answered at start, while a was heard. Cut off later, b must not take that old
    # answer as proof: it probes again and stays BACKUP until the fresh answer comes.
    sim = witness_pair()
    assert sim.nodes["b"].election.guard.witness_ok is True       # the answer from its start
    probes_before = len(sim.effects_of("b", ProbeWitness))
    sim.nodes["b"].witness_delay_s = 0.5                    # this time the witness takes 0.5 s
    sim.isolate("b")
    sim.run_until(lambda: len(sim.effects_of("b", ProbeWitness)) > probes_before, 1.0, "b asks a witness again")
    asked = sim.now
    sim.run(0.45)
    assert sim.nodes["b"].state == B and "b" not in sim.holders(), "took over on a stale witness answer"
    sim.run_until(lambda: sim.nodes["b"].state == M, 0.2, "b MASTER once the fresh answer came")
    assert sim.now - asked >= 0.5


# --- operator commands answered by the core, within deadlines it owns (shape issue, behaviour 1) ------

def test_takeover_waits_as_long_as_the_master_may_drain():
    # drain_timeout 120 s on every node and an association that ends after 100 s: the takeover
    # is pending with a deadline past the drain, and succeeds when the MASTER hands over.
    sim = two_nodes(drain_timeout=120.0)
    sim.nodes["a"].drain_delay_s = 100.0
    effects = sim.command("b", "takeover")
    pending = [e for e in effects if isinstance(e, CommandPending)]
    assert pending and pending[0].command == "takeover"
    assert pending[0].deadline - sim.now >= 120.0
    sim.run(99.0)
    assert sim.masters() == ["a"] and not sim.effects_of("b", CommandDone)
    sim.run_until(lambda: sim.masters() == ["b"], 2.0, "a hands over once drained")
    done = sim.effects_of("b", CommandDone)
    assert [(d.command, d.ok) for d in done] == [("takeover", True)]
    assert sim.nodes["b"].election.sticky


def test_a_takeover_given_up_is_not_carried_out_later():
    # b's operator gives up waiting (b's own drain_timeout is short): b stops asking, and a,
    # still draining, abandons the handover instead of moving the VIPs later, unasked.
    sim = SimCluster()
    sim.add("a", 150, "192.0.2.11", drain_timeout=120.0)
    sim.add("b", 100, "192.0.2.12", drain_timeout=1.0)
    sim.run_until(lambda: sim.masters() == ["a"] and sim.nodes["b"].state == B, 2.0, "a elected")
    sim.run(0.5)
    sim.nodes["a"].drain_delay_s = 100.0
    deadline = next(e for e in sim.command("b", "takeover") if isinstance(e, CommandPending)).deadline
    sim.run(deadline - sim.now + 0.5)
    done = sim.effects_of("b", CommandDone)
    assert [(d.command, d.ok) for d in done] == [("takeover", False)]
    assert "did not hand over within" in done[0].text
    abandoned = [h for h in sim.effects_of("a", HandoverDone) if not h.ok]
    assert abandoned and "no longer asks" in abandoned[0].text
    sim.run(110.0)                         # long past the end of a's drain
    assert sim.masters() == ["a"] and sim.holders() == ("a",)


def test_release_answers_with_a_deadline_that_covers_drain_and_handover():
    sim = SimCluster()                      # the slowest timers the config allows
    sim.add("a", 150, "192.0.2.11", interval=10.0)
    sim.add("b", 100, "192.0.2.12", interval=10.0)
    sim.run_until(lambda: sim.masters() == ["a"] and sim.nodes["b"].state == B, 60.0, "a elected")
    sim.run(15.0)
    effects = sim.command("a", "release", 30.0)
    pending = next(e for e in effects if isinstance(e, CommandPending))
    # 30 s of drain, its slack, then up to two peer timeouts (2 x 4 x 10 s) for the successor.
    assert pending.command == "release" and pending.deadline - sim.now >= 30.0 + 80.0
    sim.run_until(lambda: sim.masters() == ["b"], 120.0, "b takes over")
    assert [h.ok for h in sim.effects_of("a", HandoverDone)] == [True]


def test_a_witness_probe_begun_before_the_peers_fell_silent_does_not_count():
    # b is cut off (from the witness too); then the answer to a probe that began before the cut
    # arrives: it arrived after the MASTER's last heartbeat, but it proves nothing about b being
    # reachable now, so b must ask again, and go to FAULT, not take the VIPs.
    sim = witness_pair()
    b = sim.nodes["b"]
    sim.isolate("b")
    b.witness_reachable = False
    sim.run(0.05)                            # heartbeats already on the wire arrive
    sim.command("b", "set_witness", True, "probe begun before the cut", probed_at=sim.now - 0.2)
    sim.run(3.0)
    assert b.state == State.FAULT and not b.holds_vip
    assert not any(t.new == State.MASTER for _, t in b.transitions)   # not even for a moment


# --- a mistake in one file never gives two MASTERs (issue: misconfigured peers) ------------------

OTHER_KEY = b"o" * 32


def misconfigured(sim: SimCluster, name: str) -> list:
    return [e for e in sim.effects_of(name, Misconfigured) if not e.gone]


@pytest.mark.parametrize("priority", [100, 200])
@pytest.mark.parametrize("mistake", [{"key": OTHER_KEY}, {"cluster_id": CLUSTER + 1}])
def test_a_node_with_another_key_or_cluster_id_never_takes_the_vips_from_the_master(priority, mistake):
    sim = SimCluster()
    sim.add("a", 150, "192.0.2.11")
    sim.run_until(lambda: sim.masters() == ["a"], 2.0, "a master")
    sim.add("b", priority, "192.0.2.12", **mistake)
    sim.run(5.0)
    assert sim.masters() == ["a"] and sim.holders() == ("a",)
    assert all(holders in ((), ("a",)) for _, holders in sim.holder_history)
    found = misconfigured(sim, "b")
    assert found and found[0].address == "192.0.2.11" and found[0].cause in ("auth", "cluster")
    view = sim.nodes["b"].election.view(sim.now).misconfigured
    assert len(view) == 1 and view[0].blocking and view[0].claims.startswith("a MASTER")
    # The MASTER sees the misconfigured node too, and says so, but it does not stop serving.
    assert misconfigured(sim, "a") and sim.nodes["a"].state == State.MASTER


@pytest.mark.parametrize("priorities", [(150, 100), (100, 150)])
def test_a_cold_start_with_one_misconfigured_node_elects_exactly_one(priorities):
    sim = SimCluster()
    sim.add("a", priorities[0], "192.0.2.11", start=False)
    sim.add("b", priorities[1], "192.0.2.12", start=False, key=OTHER_KEY)
    for name in ("a", "b"):
        node = sim.nodes[name]
        sim.apply(node, node.election.start(sim.now))
    sim.run(5.0)
    assert len(sim.masters()) == 1
    assert all(len(holders) <= 1 for _, holders in sim.holder_history)


def master_a_and_misconfigured_b() -> SimCluster:
    """a MASTER, then b joins with another key and listens for 2 s."""
    sim = SimCluster()
    sim.add("a", 150, "192.0.2.11")
    sim.run_until(lambda: sim.masters() == ["a"], 2.0, "a master")
    sim.add("b", 100, "192.0.2.12", key=OTHER_KEY)
    sim.run(2.0)
    return sim


def test_the_misconfigured_node_takes_over_once_the_master_it_could_not_read_is_gone():
    sim = master_a_and_misconfigured_b()
    sim.crash("a")
    took = sim.run_until(lambda: sim.masters() == ["b"], 3.0, "b takes the VIPs of the dead a")
    assert took < 1.0
    assert [e for e in sim.effects_of("b", Misconfigured) if e.gone]


def test_a_misconfigured_peer_that_will_not_take_over_does_not_block():
    # a's PACS fails: a is in FAULT, holds no VIP and will not take them while it is, so b,
    # which cannot read a, must not wait for it while nobody serves.
    sim = master_a_and_misconfigured_b()
    assert sim.masters() == ["a"]
    sim.command("a", "set_fault", "check:pacs", "check pacs down")
    sim.run_until(lambda: sim.masters() == ["b"], 3.0, "b takes over from an unfit a")
    assert not sim.nodes["b"].election.view(sim.now).misconfigured[0].blocking


def test_noise_that_looks_like_a_misconfigured_peer_never_floods_the_log():
    # Before b has heard a valid heartbeat, datagrams it cannot read are evidence; an attacker
    # who alternates causes, comes and goes, or uses many addresses still gets a few lines only.
    sim = SimCluster()
    sim.add("b", 100, "192.0.2.12")
    forged = wire.Advert(CLUSTER, "x", State.MASTER, 254, Flags.PREEMPT, 100, 1, 1, 1, DIGEST)
    a_address = ipaddress.ip_address("192.0.2.11").packed
    for round_number in range(100):             # 100 bursts, each followed by silence: 2 min
        for step in range(4):
            sim.command("b", "unreadable", a_address, ("auth", "cluster")[step % 2], forged)
            sim.run(0.02)
        sim.run(1.0)                             # long enough to fall silent
    for number in range(200):                    # many addresses at once (multicast: any sender)
        sim.command("b", "unreadable", bytes([198, 51, 100, number]), "auth", forged)
    twin = wire.Advert(CLUSTER, "b", State.MASTER, 200, Flags.PREEMPT, 100, 1, 1, 1, DIGEST)
    sim.command("b", "receive", twin, bytes([198, 51, 100, 250]))   # one more, when full: no crash
    reports = misconfigured(sim, "b")
    assert len(reports) <= 2 * 3 + suspects.MAX_SUSPECTS, len(reports)
    assert len(sim.nodes["b"].election.view(sim.now).misconfigured) <= suspects.MAX_SUSPECTS
    gone = [e for e in sim.effects_of("b", Misconfigured) if e.gone]
    assert len(gone) <= len(reports)


def test_two_nodes_with_one_name_never_both_hold_the_vips():
    sim = SimCluster()
    sim.add("a", 150, "192.0.2.11", start=False)
    sim.add("twin", 100, "192.0.2.12", start=False, node_name="a")
    for name in ("a", "twin"):
        sim.apply(sim.nodes[name], sim.nodes[name].election.start(sim.now))
    sim.run(5.0)
    assert sim.masters() == ["a"]
    assert all(len(holders) <= 1 for _, holders in sim.holder_history)
    assert misconfigured(sim, "twin")[0].cause == "name"
    assert misconfigured(sim, "twin")[0].text == ("a living peer at 192.0.2.11 (a INIT priority 150) is "
                                                  "misconfigured: it uses this node's name: node.name must be unique")
    assert sim.nodes["twin"].election.view(sim.now).misconfigured[0].blocking


def test_of_two_masters_with_one_name_the_lower_steps_down_when_they_meet():
    sim = SimCluster()
    sim.add("a", 150, "192.0.2.11")
    sim.add("twin", 100, "192.0.2.12", node_name="a")
    sim.isolate("a")
    sim.run_until(lambda: sorted(sim.masters()) == ["a", "twin"], 3.0, "both MASTER while cut")
    sim.heal()
    sim.run_until(lambda: len(sim.masters()) == 1, 1.0, "one MASTER once they hear each other")
    sim.run(3.0)
    assert len(sim.masters()) == 1 and len(sim.holders()) == 1


def test_garbage_injected_after_the_cluster_ran_neither_moves_a_vip_nor_stops_a_failover():
    sim = two_nodes()
    forged = wire.Advert(CLUSTER, "mallory", State.MASTER, 254, Flags.PREEMPT, 100, 99, 1, 1, DIGEST)
    a_address = ipaddress.ip_address("192.0.2.11").packed
    elsewhere = ipaddress.ip_address("192.0.2.66").packed
    for _ in range(20):                      # from the MASTER's own address and from a stranger
        sim.command("b", "unreadable", a_address, "auth", forged)
        sim.command("b", "unreadable", elsewhere, "auth", forged)
        sim.run(0.05)
    assert sim.masters() == ["a"]
    sim.crash("a")
    for _ in range(20):
        sim.command("b", "unreadable", elsewhere, "auth", forged)
        sim.run(0.05)
    assert sim.masters() == ["b"]
    assert [v.address for v in sim.nodes["b"].election.view(sim.now).misconfigured] == [elsewhere]
    assert not sim.nodes["b"].election.view(sim.now).misconfigured[0].blocking


def test_a_node_waiting_for_its_witness_that_then_hears_a_peer_goes_on_electing():
    # a starts alone, its Master_Down_Timer fires, it asks the witness (slow to answer); b starts
    # meanwhile. a hears b: the election must go on, and the better a become MASTER, not stay in
    # INIT until b gives up waiting for it and takes the VIPs (found under load in CI).
    sim = SimCluster()
    a = sim.add("a", 150, "192.0.2.11", witness=True, start=False)
    a.witness_delay_s = 0.5
    sim.apply(a, a.election.start(sim.now))
    sim.run(0.35)
    assert any("a witness must confirm" in e.why for e in sim.effects_of("a", ProbeWitness))
    sim.add("b", 100, "192.0.2.12", witness=True)
    sim.run_until(lambda: sim.masters() == ["a"], 1.5, "a master")
    sim.run(2.0)
    assert sim.masters() == ["a"]
    assert not any(t.new == State.MASTER for _, t in sim.nodes["b"].transitions)


def test_two_masters_that_cannot_read_each_other_leave_one_when_a_cut_heals():
    # a (150) and b (100, another key) are cut apart: each hears nobody and is MASTER, as any
    # partition without a witness. When the cut heals they still cannot read each other; the
    # lower-ranked one steps down on the evidence, so one holder remains.
    sim = SimCluster()
    sim.add("a", 150, "192.0.2.11")
    sim.add("b", 100, "192.0.2.12", key=OTHER_KEY)
    sim.isolate("a")
    sim.run_until(lambda: sorted(sim.masters()) == ["a", "b"], 3.0, "both MASTER while cut")
    sim.heal()
    sim.run_until(lambda: sim.masters() == ["a"], 1.0, "b steps down once it hears a again")
    sim.run(3.0)
    assert sim.masters() == ["a"] and sim.holders() == ("a",)
