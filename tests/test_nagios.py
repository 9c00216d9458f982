"""check_hapacs: every rule of judge() on status JSON from the real Status
renderer, the plugin's output line, and its exit codes against real Unix
sockets (a missing one, a dead one, one that answers garbage, refuses, or
never finishes its answer)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import threading
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from hapacs.nagios import CRITICAL, OK, UNKNOWN, WARNING, Verdict, judge, main
from hapacs.status import CheckStatus, MisconfiguredPeer, PeerStatus

from .snmp_helpers import BALANCE, DIRECT_BALANCE, ROOT, balance_with, make_status

UP = CheckStatus("pacs-dicom", "dicom-echo", True, 3.1, "C-ECHO success", 100.0, 0)
DOWN = CheckStatus("pacs-dicom", "dicom-echo", False, 0.4, "connection refused", 2.0, 0)
DISK_DOWN = CheckStatus("free-disk", "disk", False, 0.2, "4% free, need 10%", 5.0, -20)
BACKUP_B = PeerStatus("pacs-b", "192.0.2.12", "BACKUP", 100, 0.08)
MASTER_B = PeerStatus("pacs-b", "192.0.2.12", "MASTER", 100, 0.05)
LOST_B = PeerStatus("pacs-b", "192.0.2.12", "LOST", 100, 12.34)


def status(**changes) -> dict:
    """A healthy MASTER pacs-a with BACKUP pacs-b and one DICOM check, as the agent renders it."""
    base = dict(checks=(UP,), peers=(BACKUP_B,))
    return make_status(**{**base, **changes}).to_json()


def backup(**changes) -> dict:
    return status(state="BACKUP", master="pacs-b", peers=(MASTER_B,), **changes)


# --- the rules -------------------------------------------------------------------------

def test_healthy_master_and_backup_are_ok_with_perfdata():
    verdict = judge(status())
    assert verdict == Verdict(OK, "pacs-a MASTER; peer pacs-b BACKUP; checks: 1 up",
                              ("peer_pacs-b_last_seen=0.08s;;;0", "check_pacs-dicom_latency=0.0031s;;;0"))
    assert verdict.line() == ("HAPACS OK - pacs-a MASTER; peer pacs-b BACKUP; checks: 1 up | "
                              "peer_pacs-b_last_seen=0.08s;;;0 check_pacs-dicom_latency=0.0031s;;;0")
    verdict = judge(backup())
    assert verdict.code == OK
    assert verdict.text == "pacs-a BACKUP, MASTER pacs-b; peer pacs-b MASTER; checks: 1 up"


def test_fault_is_critical_and_names_its_reasons_once():
    verdict = judge(status(state="FAULT", master="pacs-b", peers=(MASTER_B,), checks=(DOWN,),
                           faults=("check pacs-dicom down: connection refused (2 failures in a row)",)))
    assert verdict.code == CRITICAL
    assert verdict.text == ("pacs-a FAULT, MASTER pacs-b: "
                            "FAULT (check pacs-dicom down: connection refused (2 failures in a row))")


def test_fault_also_names_a_down_check_with_negative_weight():
    verdict = judge(status(state="FAULT", master="pacs-b", peers=(MASTER_B,), checks=(DOWN, DISK_DOWN),
                           faults=("link eth0 down (DOWN)",)))
    assert verdict.code == CRITICAL
    assert verdict.text.endswith(": FAULT (link eth0 down (DOWN)); check free-disk down (4% free, need 10%)")


def test_backup_hearing_no_master_is_critical():
    # What the agent shows then: master null, no peer in state MASTER.
    verdict = judge(status(state="BACKUP", master=None, peers=(BACKUP_B,)))
    assert (verdict.code, verdict.text) == (CRITICAL, "pacs-a BACKUP: no MASTER heard")
    init = judge(status(state="INIT", master=None, peers=()))
    assert (init.code, init.text) == (CRITICAL, "pacs-a INIT: no MASTER heard; no peer heard: no standby")


def test_a_lost_master_is_no_master():
    verdict = judge(status(state="BACKUP", master=None, peers=(LOST_B,)))
    assert verdict.code == CRITICAL
    assert verdict.text == "pacs-a BACKUP: no MASTER heard; peer pacs-b lost (last heard 12.3 s ago)"


def test_two_masters_are_critical():
    verdict = judge(status(peers=(MASTER_B,)))
    assert (verdict.code, verdict.text) == (CRITICAL, "pacs-a MASTER: 2 MASTERs heard: pacs-a, pacs-b (split brain)")
    two_peers = judge(status(state="BACKUP", master="pacs-b",
                             peers=(MASTER_B, replace(MASTER_B, name="pacs-c", address="192.0.2.13"))))
    assert two_peers.code == CRITICAL
    assert "2 MASTERs heard: pacs-b, pacs-c (split brain)" in two_peers.text


def test_a_check_down_on_a_backup_is_a_warning():
    # In maintenance (frozen) a BACKUP stays BACKUP with a weight-0 check down; a negative weight never faults.
    frozen = judge(backup(checks=(DOWN,), maintenance=True))
    assert frozen.code == WARNING
    assert frozen.text == ("pacs-a BACKUP, MASTER pacs-b: check pacs-dicom down (connection refused); "
                           "maintenance on: no automatic transition")
    lowered = judge(backup(checks=(UP, DISK_DOWN)))
    assert (lowered.code, lowered.text) == (WARNING, "pacs-a BACKUP, MASTER pacs-b: check free-disk down "
                                                     "(4% free, need 10%)")


def test_a_check_down_on_the_master():
    lowered = judge(status(checks=(UP, DISK_DOWN)))
    assert (lowered.code, lowered.text) == (WARNING, "pacs-a MASTER: check free-disk down (4% free, need 10%)")
    # Weight 0 on a MASTER only in maintenance: the VIPs point at a dead PACS.
    frozen = judge(status(checks=(DOWN,), maintenance=True))
    assert frozen.code == CRITICAL
    assert frozen.text == ("pacs-a MASTER: check pacs-dicom down (connection refused) while this node holds "
                           "the VIPs; maintenance on: no automatic transition")


def test_maintenance_is_a_warning():
    verdict = judge(status(maintenance=True))
    assert (verdict.code, verdict.text) == (WARNING, "pacs-a MASTER: maintenance on: no automatic transition")


def test_a_lost_peer_or_none_heard_is_a_warning():
    lost = judge(status(peers=(replace(LOST_B, last_seen_s=7322.0),)))
    assert (lost.code, lost.text) == (WARNING, "pacs-a MASTER: peer pacs-b lost (last heard 2.0 h ago)")
    assert lost.perfdata[0] == "peer_pacs-b_last_seen=7322s;;;0"
    alone = judge(status(peers=()))
    assert (alone.code, alone.text) == (WARNING, "pacs-a MASTER: no peer heard: no standby")


WRONG_KEY_MASTER = MisconfiguredPeer("192.0.2.12", "auth", "pacs-b MASTER priority 100", 0.1, True,
                                     "its heartbeats fail authentication: another key in cluster.auth_key_file")


def test_a_misconfigured_peer_is_critical_on_both_nodes():
    # The node kept from becoming MASTER (it would never take over) ...
    blocked = judge(status(state="BACKUP", master=None, peers=(), misconfigured=(WRONG_KEY_MASTER,)))
    assert blocked.code == CRITICAL
    assert blocked.text == ("pacs-a BACKUP: no MASTER heard; misconfigured peer 192.0.2.12 "
                            "(auth: its heartbeats fail authentication: another key in cluster.auth_key_file); "
                            "this node will not become MASTER while it hears it; no peer heard: no standby")
    # ... and the MASTER that hears it (a node with its name, or one that cannot back it up).
    twin = replace(WRONG_KEY_MASTER, cause="name", blocking=False, claims="pacs-a BACKUP priority 100",
                   message="it uses this node's name: node.name must be unique")
    serving = judge(status(misconfigured=(twin,)))
    assert (serving.code, serving.text) == (CRITICAL, "pacs-a MASTER: misconfigured peer 192.0.2.12 "
                                            "(name: it uses this node's name: node.name must be unique)")


def test_a_status_without_misconfigured_is_read_as_none():
    older = status()
    del older["misconfigured"]       # an agent from before the field
    assert judge(older).code == OK


def test_balanced_members_all_up_are_ok_with_their_associations_as_perfdata():
    verdict = judge(status(balance=BALANCE))
    assert (verdict.code, verdict.text) == (OK, "pacs-a MASTER; peer pacs-b BACKUP; checks: 1 up")
    assert verdict.perfdata[-2:] == ("balance_dicom_pacs-a_associations=3;;;0",
                                     "balance_dicom_pacs-b_associations=2;;;0")


def test_a_balanced_member_down_drained_or_in_maint_is_a_warning_naming_it():
    verdict = judge(status(balance=balance_with("up", "down")))
    assert (verdict.code, verdict.text) == (WARNING, (
        "pacs-a MASTER: balanced member pacs-b of dicom down (its PACS fails the DICOM check, or its agent "
        "says down)"))
    verdict = judge(status(balance=balance_with("drain", "up", "maint", service="dicom-tls")))
    assert verdict.code == WARNING
    assert verdict.text == ("pacs-a MASTER: balanced member pacs-a of dicom-tls draining (no new association: "
                            "hapacs drain on, maintenance or a handover); balanced member pacs-c of dicom-tls "
                            "in maint (taken out by hand in HAProxy)")
    # On a BACKUP (standby HAProxy) too: its HAProxy checks the same members.
    assert judge(backup(balance=balance_with("down", "up"))).code == WARNING
    # Worse problems come first.
    critical = judge(status(state="BACKUP", master=None, balance=balance_with("up", "down")))
    assert critical.code == CRITICAL
    assert critical.text == ("pacs-a BACKUP: no MASTER heard; balanced member pacs-b of dicom down (its PACS "
                             "fails the DICOM check, or its agent says down)")


def test_direct_mode_members_without_association_counts_are_judged_by_state():
    verdict = judge(status(balance=DIRECT_BALANCE))
    assert verdict.code == WARNING and "balanced member pacs-b of dicom down" in verdict.text
    assert verdict.perfdata[-1] == "balance_dicom_pacs-b_associations=U;;;0"


def test_a_status_without_balance_or_with_null_is_read_as_none():
    older = status()
    assert "balance" not in older
    assert judge(older).code == OK
    assert judge({**older, "balance": None}).code == OK


def test_the_worst_wins_and_every_problem_is_named_worst_first():
    verdict = judge(status(state="BACKUP", master=None, maintenance=True, checks=(UP, DISK_DOWN),
                           peers=(LOST_B, replace(BACKUP_B, name="pacs-c"))))
    assert verdict.code == CRITICAL
    assert verdict.text == ("pacs-a BACKUP: no MASTER heard; check free-disk down (4% free, need 10%); "
                            "maintenance on: no automatic transition; peer pacs-b lost (last heard 12.3 s ago)")


def test_a_check_not_run_yet_is_no_problem_and_its_latency_is_unknown():
    pending = CheckStatus("free-disk", "disk", None, None, "", None, -20)
    verdict = judge(status(checks=(UP, pending)))
    assert verdict.code == OK
    assert verdict.text.endswith("checks: 1 up, 1 not run yet")
    assert verdict.perfdata[-1] == "check_free-disk_latency=U;;;0"


def test_labels_are_quoted_and_the_line_stays_one_line():
    odd = CheckStatus("dicom echo='x'", "script", False, 1234.5, "line one\nline two | with a pipe", 1.0, -10)
    verdict = judge(status(checks=(odd,)))
    assert verdict.perfdata[-1] == "'check_dicom echo__x__latency'=1.2345s;;;0"
    line = verdict.line()
    assert "\n" not in line and line.count("|") == 1
    assert "(line one line two / with a pipe)" in line


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("state"), "no 'state'"),
    (lambda s: s.update(peers={"pacs-b": {}}), "'peers' is {'pacs-b': {}}, not list"),
    (lambda s: s["peers"][0].update(last_seen_s="soon"), "peer 'last_seen_s' is 'soon', not a number"),
    (lambda s: s["checks"][0].update(ok="yes"), "check 'ok' is 'yes', not true, false or null"),
    (lambda s: s["checks"][0].update(ok=1), "check 'ok' is 1, not true, false or null"),
    (lambda s: s["checks"][0].update(latency_ms=float("nan")), "check 'latency_ms' is nan, not a number"),
    (lambda s: s.update(maintenance="no"), "'maintenance' is 'no', not bool"),
    (lambda s: s.update(misconfigured={}), "'misconfigured' is {}, not list"),
    (lambda s: s.update(misconfigured=[{"address": "192.0.2.12", "cause": "auth", "message": "m"}]),
     "no misconfigured peer 'blocking'"),
    (lambda s: s.update(balance={"mode": "proxy"}), "no balance 'services'"),
    (lambda s: s.update(balance={"services": [{"name": "dicom", "members": [{"name": "pacs-a", "state": "up"}]}]}),
     "no balance member 'associations'"),
    (lambda s: s.update(balance={"services": [{"name": "dicom", "members": [
        {"name": "pacs-a", "state": "up", "associations": "many"}]}]}),
     "balance member 'associations' is 'many', not a number"),
])
def test_a_malformed_status_is_unknown(change, message):
    broken = status()
    change(broken)
    verdict = judge(broken)
    assert (verdict.code, verdict.text) == (UNKNOWN, f"the agent's status is malformed: {message}")


# --- the command against real sockets -------------------------------------------------------

class FakeAgent:
    """A Unix socket served by a thread: for each connection it reads one request line, then
    answers `reply` (bytes) and closes; or with `reply=HOLD` sends nothing and keeps the
    connection open; or with `reply=TRICKLE` sends a space every 0.1 s, never ending the line.
    Holding and trickling end after 5 s or when the test closes the agent."""

    def __init__(self, path: str, reply):
        self.path, self.reply = path, reply
        self.stop = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.server.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.server.accept()
            except socket.timeout:
                continue
            with connection:
                connection.makefile("rb").readline()
                if self.reply is HOLD:
                    self.stop.wait(5)
                elif self.reply is TRICKLE:
                    self._trickle(connection)
                else:
                    connection.sendall(self.reply)

    def _trickle(self, connection: socket.socket) -> None:
        for _ in range(50):
            if self.stop.wait(0.1):
                return
            try:
                connection.sendall(b" ")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.server.close()


HOLD, TRICKLE = object(), object()


@pytest.fixture
def agent_at(tmp_path):
    agents = []

    def start(reply) -> str:
        path = str(tmp_path / f"agent{len(agents)}.sock")
        agents.append(FakeAgent(path, reply))
        return path
    yield start
    for agent in agents:
        agent.close()


def run_main(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    return code, out.rstrip("\n")


def answer(reply: dict) -> bytes:
    return json.dumps(reply).encode() + b"\n"


def test_the_verdict_and_exit_code_come_from_the_agent_over_the_socket(agent_at, capsys, tmp_path):
    healthy = agent_at(answer({"ok": True, "status": status()}))
    code, out = run_main(capsys, "--socket", healthy)
    assert (code, out) == (OK, judge(status()).line())
    fault = agent_at(answer({"ok": True, "status": status(state="FAULT", master=None, faults=("x",))}))
    code, out = run_main(capsys, "--socket", fault)
    assert code == CRITICAL and out.startswith("HAPACS CRITICAL - pacs-a FAULT: FAULT (x); no MASTER heard | ")
    warning = agent_at(answer({"ok": True, "status": status(maintenance=True)}))
    assert run_main(capsys, "--socket", warning)[0] == WARNING
    # The socket found from -c FILE, as `hapacs status -c FILE` finds it.
    config = tmp_path / "hapacs.yaml"
    config.write_text(f"control:\n  socket: {warning}\n")
    assert run_main(capsys, "-c", str(config))[0] == WARNING


def test_unknown_when_the_agent_cannot_be_asked(agent_at, capsys, tmp_path):
    missing = str(tmp_path / "none.sock")
    assert run_main(capsys, "--socket", missing) == (
        UNKNOWN, f"HAPACS UNKNOWN - no agent socket at {missing}: is hapacs running?")
    dead = str(tmp_path / "dead.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_behind:
        left_behind.bind(dead)   # the file of an agent that was killed: nobody listens
    code, out = run_main(capsys, "--socket", dead)
    assert code == UNKNOWN and out.startswith(f"HAPACS UNKNOWN - no agent answers at {dead}")
    garbage = agent_at(b"hello, this is not JSON\n")
    assert run_main(capsys, "--socket", garbage) == (
        UNKNOWN, f"HAPACS UNKNOWN - the agent at {garbage} closed the connection without a valid reply")
    a_list = agent_at(b"[1, 2]\n")
    assert run_main(capsys, "--socket", a_list) == (
        UNKNOWN, f"HAPACS UNKNOWN - the agent at {a_list} answered list, not a JSON object")
    refused = agent_at(answer({"ok": False, "message": "permission denied: only root may control this agent"}))
    assert run_main(capsys, "--socket", refused) == (
        UNKNOWN, f"HAPACS UNKNOWN - the agent at {refused} refused: permission denied: only root may control "
                 "this agent")
    empty = agent_at(answer({"ok": True}))
    assert run_main(capsys, "--socket", empty) == (
        UNKNOWN, f"HAPACS UNKNOWN - the agent at {empty} answered without a status")
    malformed = agent_at(answer({"ok": True, "status": {"node": "pacs-a"}}))
    assert run_main(capsys, "--socket", malformed) == (
        UNKNOWN, "HAPACS UNKNOWN - the agent's status is malformed: no 'state'")


def test_unknown_when_the_agent_does_not_answer_in_time(agent_at, capsys):
    # Holding the connection silent meets the socket's timeout, trickling a byte every
    # 0.1 s meets the plugin's own alarm; both end in the same sentence.
    for reply in (HOLD, TRICKLE):
        path = agent_at(reply)
        assert run_main(capsys, "--socket", path, "-t", "0.5") == (
            UNKNOWN, f"HAPACS UNKNOWN - the agent at {path} did not answer within 0.5 s")
    closing = agent_at(b"")
    assert run_main(capsys, "--socket", closing) == (
        UNKNOWN, f"HAPACS UNKNOWN - the agent at {closing} closed the connection without a valid reply")


def test_unknown_when_the_configuration_cannot_be_read(capsys, tmp_path):
    missing = str(tmp_path / "missing.yaml")
    assert run_main(capsys, "-c", missing) == (
        UNKNOWN, f"HAPACS UNKNOWN - cannot read the configuration {missing}: No such file or directory")
    assert run_main(capsys, "-c", str(tmp_path)) == (
        UNKNOWN, f"HAPACS UNKNOWN - cannot read the configuration {tmp_path}: Is a directory")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert run_main(capsys, "-c", str(binary)) == (
        UNKNOWN, f"HAPACS UNKNOWN - cannot read the configuration {binary}: not UTF-8 text")


@pytest.mark.parametrize("argv, first_line", [
    (["--version"], "check_hapacs v"),
    (["--help"], "usage: check_hapacs"),
    (["--warp"], "HAPACS UNKNOWN - unrecognized arguments: --warp (see check_hapacs --help)"),
    (["-t", "soon"], "HAPACS UNKNOWN - argument -t/--timeout: invalid float value: 'soon'"),
    (["-t", "0", "--socket", "/nonexistent"], "HAPACS UNKNOWN - --timeout must be more than 0"),
])
def test_usage_help_and_version_exit_unknown_as_the_monitoring_plugins_do(argv, first_line):
    completed = subprocess.run([sys.executable, "-m", "hapacs.nagios", *argv], capture_output=True, text=True,
                               timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert completed.returncode == UNKNOWN
    assert completed.stdout.startswith(first_line), completed.stdout + completed.stderr
    assert completed.stderr == ""


def test_the_console_script_is_check_hapacs_pointing_at_main():
    with open(Path(ROOT) / "pyproject.toml", "rb") as handle:
        scripts = tomllib.load(handle)["project"]["scripts"]
    assert scripts["check_hapacs"] == "hapacs.nagios:main"
    installed = importlib.metadata.entry_points(group="console_scripts", name="check_hapacs")
    assert [entry.value for entry in installed] == ["hapacs.nagios:main"]
    assert next(iter(installed)).load() is main


def test_readme_sudoers_line_parses_and_allows_exactly_the_nrpe_command(tmp_path):
    readme = (Path(ROOT) / "README.md").read_text()
    rule = next(line.strip() for line in readme.splitlines() if line.strip().startswith("nagios ALL=(root)"))
    command = rule.split("NOPASSWD: ", 1)[1]
    # sudo matches the arguments too: the NRPE line must be this command exactly.
    assert f"command[check_hapacs]={command}" in readme
    assert f"sudo -n {command}" in readme
    visudo = next((p for p in ("/usr/sbin/visudo", "/usr/bin/visudo") if os.access(p, os.X_OK)), None)
    assert visudo, "visudo is missing: install the Debian package sudo"
    sudoers = tmp_path / "check_hapacs"
    sudoers.write_text(rule + "\n")
    completed = subprocess.run([visudo, "-c", "-f", str(sudoers)], capture_output=True, text=True, timeout=30)
    assert completed.returncode == 0, completed.stdout + completed.stderr
