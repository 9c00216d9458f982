"""Tests of the namespace lab itself (lab/): topology, faults, DICOM peers, probe.

They need root and build real namespaces; without root they fail with a clear
message rather than skip, so a CI run without privileges cannot look green.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # lab/ is not installed, it lives at the repo root

import lab.netns  # noqa: E402
from lab import Lab, cleanup_stale, in_namespace, unique_prefix, wait_for  # noqa: E402
from lab.dicom import echo, find_studies, start_orthanc, start_storescp, stop_orthanc  # noqa: E402
from lab.outage import failures, load, outage, successes  # noqa: E402
from lab.probe import make_ct_dataset, start_probe  # noqa: E402

NEGATIVE_PING_TIMEOUT_S = 0.3  # how long we listen for a reply that must not come


def require_root():
    if os.geteuid() != 0:
        pytest.fail("tests/test_lab.py needs root: it creates network namespaces. "
                    "Run it as root (tools/test, or .venv/bin/python -m pytest tests/test_lab.py as root).", pytrace=False)


@pytest.fixture
def net():
    require_root()
    with Lab(unique_prefix("t")) as built:
        yield built


def lab_namespaces(prefix):
    return [name for name in lab.netns.list_namespaces() if name.startswith(prefix)]


def pid_gone(pid):
    return not Path(f"/proc/{pid}").exists()


# ---- topology -------------------------------------------------------------


def test_lab_lives_only_in_its_own_namespaces(net):
    a, b = net.hosts["a"], net.hosts["b"]
    assert sorted(lab_namespaces(net.prefix)) == sorted(
        [net.prefix + "a", net.prefix + "b", net.prefix + "ws", net.prefix + "sw"])
    root_links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    assert net.prefix not in root_links, "a lab device appeared in the root namespace"
    for name in ("a", "b", "ws", "sw"):
        routes = net.exec(name, ["ip", "route", "show", "default"]).stdout
        routes6 = net.exec(name, ["ip", "-6", "route", "show", "default"]).stdout
        assert routes.strip() == routes6.strip() == "", f"{name} has a default route"
    assert (a.ifname, a.ipv4, a.ipv6) == (net.prefix + "a0", "192.0.2.11", "2001:db8::11")
    assert (b.ipv4, b.ipv6) == ("192.0.2.12", "2001:db8::12")
    assert net.addresses("a") == {"192.0.2.11/24", "2001:db8::11/64"}
    assert net.addresses("ws") == {"192.0.2.200/24", "2001:db8::200/64"}
    assert all(len(n.ifname) <= 15 and len(n.switch_port) <= 15 for n in net.nodes)
    assert net.holders("192.0.2.12") == ["b"]
    assert net.holders("2001:db8::11/64") == ["a"]
    assert net.holders("192.0.2.100") == []
    promote = net.exec("a", ["sysctl", "-n", "net.ipv4.conf.all.promote_secondaries"]).stdout
    assert promote.strip() == "1"
    shown = json.loads(net.exec("a", ["ip", "-j", "addr", "show", "dev", a.ifname]).stdout)
    assert not any(info.get("tentative") for info in shown[0]["addr_info"]), "IPv6 DAD still on"


def test_every_namespace_resolves_names_on_its_own_loopback_and_leaves_no_file_behind():
    require_root()
    with Lab(unique_prefix("t")) as built:
        namespaces = [built.ns(name) for name in ("a", "b", "ws")]
        for namespace in namespaces:
            resolv = built.exec(namespace, ["cat", "/etc/resolv.conf"]).stdout
            assert resolv.split() == ["nameserver", "127.0.0.1"], (namespace, resolv)
            assert os.path.isdir(os.path.join(lab.netns.ETC_NETNS, namespace))
        process = built.spawn("a", ["sleep", "30"])
        # The pid is the program's own: `ip netns exec` becomes it (exec, no fork).
        built.wait_for(lambda: open(f"/proc/{process.pid}/comm").read().strip() == "sleep", 2,
                       what="ip netns exec became sleep")
    assert not [n for n in namespaces if os.path.exists(os.path.join(lab.netns.ETC_NETNS, n))]


def test_hosts_and_workstation_reach_each_other_over_ipv4_and_ipv6(net):
    nodes = net.nodes
    for source in nodes:
        for target in nodes:
            if source is not target:
                for address in (target.ipv4, target.ipv6):
                    assert net.ping(source.name, address), f"{source.name} -> {address}"


def test_added_address_is_seen_by_holders(net):
    net.exec("b", ["ip", "addr", "add", "192.0.2.100/24", "dev", net.hosts["b"].ifname])
    assert net.holders("192.0.2.100/24") == ["b"]
    assert "192.0.2.100/24" in net.addresses("b")
    assert net.wait_for(lambda: net.ping("ws", "192.0.2.100"), 3, what="VIP reachable")


# ---- faults -----------------------------------------------------------------


def test_link_down_takes_carrier_from_the_host_and_link_up_restores_it(net):
    assert net.carrier("a")
    net.link_down("a")
    net.wait_for(lambda: not net.carrier("a"), 2, what="a to lose LOWER_UP")
    assert not net.ping("b", "192.0.2.11", NEGATIVE_PING_TIMEOUT_S)
    net.link_up("a")
    net.wait_for(lambda: net.carrier("a"), 2, what="a to regain LOWER_UP")
    net.wait_for(lambda: net.ping("b", "192.0.2.11"), 3, what="b to reach a again")


def test_partition_blocks_both_ways_while_the_host_keeps_carrier(net):
    net.wait_for(lambda: net.ping("a", "192.0.2.12"), 3, what="a to reach b before the cut")
    net.partition("a")
    assert net.carrier("a"), "a partition must be silent: carrier stays"
    for source, target in (("a", "192.0.2.12"), ("b", "192.0.2.11"), ("ws", "192.0.2.11"),
                           ("a", "2001:db8::200"), ("b", "2001:db8::11")):
        assert not net.ping(source, target, NEGATIVE_PING_TIMEOUT_S), f"{source} -> {target} got through"
    assert net.ping("b", "192.0.2.200"), "the rest of the LAN must keep working"
    # A carrier flap must not heal the partition behind the test's back.
    net.link_down("a")
    net.link_up("a")
    net.wait_for(lambda: net.carrier("a"), 2, what="a to regain LOWER_UP")
    assert not net.ping("b", "192.0.2.11", NEGATIVE_PING_TIMEOUT_S)
    net.heal("a")
    net.wait_for(lambda: net.ping("b", "192.0.2.11"), 3, what="b to reach a after heal")
    assert net.ping("a", "2001:db8::12")


# ---- DICOM peers ------------------------------------------------------------


def test_storescp_in_a_host_answers_echo_from_the_workstation(net):
    start_storescp(net, "a", port=104, aet="PACS")
    assert echo(net.ns("ws"), "192.0.2.11", 104, called_ae="PACS")
    assert not echo(net.ns("ws"), "192.0.2.11", 105, called_ae="PACS", timeout=1.0)


def test_orthanc_answers_echo_find_and_store_then_stops(net):
    orthanc = start_orthanc(net, "b", dicom_port=4242, http_port=8042)
    ws = net.ns("ws")
    assert echo(ws, "192.0.2.12", 4242, called_ae="ORTHANC")
    image = make_ct_dataset()
    path = Path(net.tmpdir) / "ct.dcm"
    image.save_as(path, enforce_file_format=True)
    net.exec("ws", ["/usr/bin/storescu", "-aec", "ORTHANC", "-to", "2", "192.0.2.12", "4242", str(path)])
    found = find_studies(ws, "192.0.2.12", 4242, called_ae="ORTHANC")
    assert found.returncode == 0, found.stderr
    assert image.StudyInstanceUID in found.stdout + found.stderr
    stop_orthanc(net, orthanc)
    assert orthanc.returncode is not None and pid_gone(orthanc.pid)


# ---- probe and outage ---------------------------------------------------------


def test_probe_records_successes_then_failures_after_the_server_dies(net):
    server = start_storescp(net, "a", port=104, aet="PACS")
    out = Path(net.tmpdir) / "probe.jsonl"
    probe = start_probe(net, out, vip="192.0.2.11", port=104, called_ae="PACS",
                        interval=0.02, duration=20, store=True)

    def records():
        return load(out) if out.exists() else []

    net.wait_for(lambda: len(successes(records(), 0, float("inf"), "echo")) >= 5
                 and len(successes(records(), 0, float("inf"), "store")) >= 2,
                 10, what="probe successes (echo and store)")
    fault_t = time.monotonic()
    net.stop(server)
    net.wait_for(lambda: len(failures(records(), fault_t, float("inf"), "echo")) >= 3,
                 5, what="echo failures after the kill")
    assert net.stop(probe) == 0, (Path(f"{out}.log").read_text())
    assert out.read_text().endswith("\n")
    recorded = load(out)
    assert {r["kind"] for r in recorded} == {"echo", "store"}
    for record in recorded:
        assert set(record) == {"t", "end", "kind", "ok", "ms", "err"}
        assert record["end"] >= record["t"]
        assert record["ms"] == pytest.approx((record["end"] - record["t"]) * 1000, abs=0.01)
        assert record["ok"] == (record["err"] == "")
    figures = outage(recorded, fault_t, "echo")
    assert figures["last_ok_t"] is not None and figures["last_ok_t"] < fault_t
    assert not figures["recovered"] and figures["outage_s"] is None
    assert figures["failures"] >= 3


def test_outage_figures_from_hand_made_records(tmp_path):
    def rec(t, ok, kind="echo", err=""):
        return {"t": t, "end": t + 0.5, "kind": kind, "ok": ok, "ms": 500.0, "err": "" if ok else err}

    records = [rec(0, True), rec(1, True), rec(2, True),  # ends at 2.5: started before the fault
               rec(3, False, err="refused"), rec(4, False, err="refused"), rec(4.5, False, err="timeout"),
               rec(5, True), rec(6, False, err="late"), rec(7, True),
               rec(2.4, True, "store"), rec(3.5, False, "store", "refused"), rec(6.5, True, "store")]
    figures = outage(records, fault_t=2.5)
    assert figures["last_ok_t"] == 2 and figures["first_ok_t"] == 5
    # In answer time: the last answer before the fault came at 2.5, the first after at 5.5.
    assert figures["outage_s"] == 3 and figures["recovery_s"] == 3 and figures["recovered"]
    assert figures["failures"] == 3 and figures["failures_after"] == 4
    assert figures["errors"] == {"refused": 2, "timeout": 1}
    stores = outage(records, fault_t=2.5, kind="store")
    assert (stores["outage_s"], stores["failures"]) == (pytest.approx(4.5), 1)
    # A request started early but answered late (its SYN sent again a second later) is
    # service only when it is answered: the earlier answer of a later request counts.
    late = dict(rec(2.6, True), end=6.0)
    again = outage([rec(1, True), late, rec(3, True)], fault_t=2.5)
    assert again["first_ok_t"] == 3 and again["served_again_t"] == 3.5 and again["outage_s"] == 2.0
    never = outage(records[:5], fault_t=2.5)
    assert never["recovered"] is False and never["outage_s"] is None and never["failures"] == 2
    assert outage(records, fault_t=-1)["last_ok_t"] is None
    assert [r["t"] for r in failures(records, 3, 5)] == [3, 3.5, 4, 4.5]
    assert [r["t"] for r in failures(records, 3, 5, kind="store")] == [3.5]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:3]) + '{"t": 9, "en')
    assert load(path) == records[:3], "a partly written last line is skipped"


# ---- lifecycle -----------------------------------------------------------------


def test_teardown_removes_namespaces_and_processes_even_when_the_body_raises():
    require_root()
    prefix = unique_prefix("t")
    ignore_term = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(30)")
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(prefix) as net:
            sleeper = net.spawn("a", ["sleep", "30"])
            stubborn = net.spawn("b", [sys.executable, "-c", ignore_term], stdout=subprocess.PIPE)
            assert stubborn.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
            # Started around the lab, not through spawn: teardown must find it anyway.
            stray = subprocess.Popen(["nsenter", f"--net=/run/netns/{net.ns('ws')}", "--",
                                      "sleep", "30"])
            net.wait_for(lambda: in_namespace(stray.pid, net.ns("ws")), 2, what="stray in ws")
            pids = [sleeper.pid, stubborn.pid, stray.pid]
            raise RuntimeError("boom")
    stubborn.stdout.close()
    assert lab_namespaces(prefix) == []
    assert sleeper.returncode == -15 and stubborn.returncode == -9
    assert all(pid_gone(pid) for pid in pids), "a lab process survived teardown"


def test_cleanup_stale_removes_what_a_crashed_run_left():
    require_root()
    prefix = unique_prefix("t")
    crashed = [prefix + "sw", prefix + "a"]
    stray = None
    try:
        for name in crashed:
            subprocess.run(["ip", "netns", "add", name], check=True)
        stray = subprocess.Popen(["nsenter", f"--net=/run/netns/{prefix}a", "--", "sleep", "30"])
        wait_for(lambda: in_namespace(stray.pid, prefix + "a"), 2, what="stray in the namespace")
        with pytest.raises(RuntimeError, match="cleanup_stale"):
            Lab(prefix)
        assert sorted(cleanup_stale(prefix)) == sorted(crashed)
        assert lab_namespaces(prefix) == []
        assert pid_gone(stray.pid)
    finally:
        for name in lab_namespaces(prefix):
            subprocess.run(["ip", "netns", "del", name])
        if stray is not None and stray.poll() is None:
            stray.kill()
            stray.wait()


def test_names_are_validated_before_anything_is_built():
    with pytest.raises(ValueError, match="prefix"):
        Lab("toolong7")
    with pytest.raises(ValueError, match="prefix"):
        Lab("Bad-1")
    with pytest.raises(ValueError, match="'ws'"):
        Lab("ab", hosts=("a", "ws"))
    with pytest.raises(ValueError, match="too long"):
        Lab("abcdef", hosts=("abcdefghi",))
    first, second = unique_prefix("t"), unique_prefix("t")
    assert len(first) == len(second) == 6 and first != second and first.startswith("t")


def test_missing_root_or_tools_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(lab.netns.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(lab.netns.shutil, "which", lambda tool: None if tool == "nsenter" else "/x")
    with pytest.raises(RuntimeError, match=r"root privileges.*'nsenter'"):
        Lab(unique_prefix("t"))
