"""systemd: the notify protocol (hapacs.sdnotify) and the unit (systemd/hapacs.service).

systemd is not PID 1 on the test machine, so the unit is checked by
`systemd-analyze verify`, by its keys, and by running a real agent the way
the unit would: with exactly its capabilities, no new privileges and
real-time scheduling reset on fork, and under strace to show every system
call it makes is allowed by the unit's SystemCallFilter. The notify
protocol is checked against a real datagram socket standing in for systemd.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hapacs import sdnotify
from hapacs.effects import Reason, Transition, Why
from hapacs.states import State
from hapacs.status import Counters, Status, VipStatus
from lab.cluster import REPO, AgentCluster
from lab.dicom import start_storescp
from .fixtures import lab_fixture

UNIT = Path(REPO) / "systemd" / "hapacs.service"
VIP = "192.0.2.100"


def require(*programs: str) -> None:
    if os.geteuid() != 0:
        raise AssertionError("these tests need root: they build network namespaces")
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise AssertionError(f"missing programs needed by this test: {', '.join(missing)}")


# --- the notify protocol, in this process -------------------------------------------------


class FakeSystemd:
    """A NOTIFY_SOCKET listener: every datagram with the sender's pid (SCM_CREDENTIALS)."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address if address[0] != "@" else "\0" + address[1:])
        self.address = address

    def receive(self, timeout: float) -> tuple[str, int] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancillary, _flags, _address = self.sock.recvmsg(65536, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = next(struct.unpack("3i", body)[0] for level, kind, body in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        return data.decode(), pid

    def wait_for(self, predicate, timeout: float, what: str, seen: list | None = None) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; got {seen}")
            got = self.receive(left)
            if got is None:
                continue
            if seen is not None:
                seen.append(got)
            if predicate(got[0]):
                return got

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_reaches_a_path_or_abstract_socket(tmp_path, monkeypatch, abstract):
    address = f"@hapacs-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    systemd = FakeSystemd(address)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert sdnotify.notify("READY=1\nSTATUS=hello")
        assert systemd.receive(2) == ("READY=1\nSTATUS=hello", os.getpid())
    finally:
        systemd.close()


def test_notify_without_systemd_does_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False


def test_watchdog_period_is_half_of_watchdog_usec_for_this_process_only(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_period_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "5000000")
    assert sdnotify.watchdog_period_s() == 2.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_period_s() == 2.5
    monkeypatch.setenv("WATCHDOG_PID", "1")   # meant for another process (we inherited it)
    assert sdnotify.watchdog_period_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert sdnotify.watchdog_period_s() is None


def _status(state: str, since_s: float, held: bool, **extra) -> Status:
    fields = dict(node="pacs-a", cluster_id=51, state=state, since_s=since_s, priority=150,
                  effective_priority=150, master=None, maintenance=False,
                  vips=(VipStatus("192.0.2.100/24", "eth0", held),), peers=(), checks=(), transitions=(),
                  counters=Counters())
    fields.update(extra)
    return Status(**fields)


def test_status_line_reads_like_systemctl_status():
    since = (datetime.datetime.now() - datetime.timedelta(seconds=90)).strftime("%H:%M:%S")
    assert sdnotify.status_line(_status("MASTER", 90, True)) == f"MASTER since {since}, VIPs held"
    assert sdnotify.status_line(_status("BACKUP", 90, False, master="pacs-b")) == \
        f"BACKUP since {since}, MASTER is pacs-b"
    assert sdnotify.status_line(_status("FAULT", 90, False, faults=("link eth0 down (NO-CARRIER)",),
                                        maintenance=True)) == \
        f"FAULT since {since}: link eth0 down (NO-CARRIER), maintenance on"


def test_notifier_sends_status_on_transition_and_falls_back_when_status_fails(tmp_path, monkeypatch):
    address = str(tmp_path / "notify")
    systemd = FakeSystemd(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    try:
        notifier = sdnotify.SystemdNotifier(lambda: _status("MASTER", 0, True))
        notifier.listener(Transition(State.BACKUP, State.MASTER, Reason(Why.MASTER_DOWN, "pacs-b silent")))
        assert systemd.receive(2)[0].startswith("STATUS=MASTER since ")
        notifier.listener(Transition(State.BACKUP, State.MASTER, Reason(Why.MASTER_DOWN, "pacs-b silent")))
        assert systemd.receive(0.2) is None, "an unchanged STATUS= line is not sent again"

        def broken():
            raise RuntimeError("no status yet")
        notifier = sdnotify.SystemdNotifier(broken)
        notifier.listener(Transition(State.INIT, State.BACKUP, Reason(Why.MASTER_HEARD, "pacs-b is MASTER")))
        assert systemd.receive(2)[0] == "STATUS=BACKUP: pacs-b is MASTER"
    finally:
        systemd.close()


# --- a real agent talking to a fake systemd ------------------------------------------------


lab = lab_fixture("sd", before=lambda: require("nsenter", "ip"), hosts=("a",))


def test_agent_notifies_ready_status_watchdog_and_stopping(lab, monkeypatch):
    address = os.path.join(lab.tmpdir, "notify.sock")
    systemd = FakeSystemd(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")   # ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cluster = AgentCluster(lab, multicast=True)
    cluster.add("a", 150)
    seen: list = []
    try:
        agent = cluster.start("a")
        message, pid = systemd.wait_for(lambda m: "READY=1" in m, 20, "READY=1", seen)
        assert cluster.status("a") is not None, "READY=1 came before the control socket answered"
        assert pid == agent.pid, "NotifyAccess=main: messages must come from the agent's own pid"
        assert "\nSTATUS=" in message
        assert not any("READY=1" in m for m, _ in seen[:-1])

        systemd.wait_for(lambda m: m.startswith("STATUS=MASTER since ") and m.endswith("VIPs held"), 10,
                         "STATUS= MASTER with VIPs held", seen)

        pings = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            got = systemd.receive(deadline - time.monotonic())
            if got and got[0] == "WATCHDOG=1":
                assert got[1] == agent.pid
                pings.append(time.monotonic())
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        # Every 0.2 s; the test VM alone stalls a process 100-150 ms now and then.
        assert len(pings) >= 6 and max(gaps) < 0.7, f"pings every 0.2 s expected, gaps {gaps}"

        agent.send_signal(signal.SIGSTOP)
        try:
            while systemd.receive(0.05) is not None:   # what was sent before the stop
                pass
            got = systemd.receive(1.0)
            assert got is None, f"a stopped agent must not ping, got {got}"
        finally:
            agent.send_signal(signal.SIGCONT)
        systemd.wait_for(lambda m: m == "WATCHDOG=1", 2, "pings after SIGCONT")

        agent.send_signal(signal.SIGTERM)
        message, pid = systemd.wait_for(lambda m: "STOPPING=1" in m, 5, "STOPPING=1", seen)
        assert pid == agent.pid
        assert agent.wait(timeout=20) == 0
    finally:
        systemd.close()
        print(cluster.logs())


# --- the unit file --------------------------------------------------------------------------


def unit_keys(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def test_unit_verifies_clean(tmp_path):
    require("systemd-analyze")
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/hapacs run -c /etc/hapacs/hapacs.yaml\n" in text
    # verify needs an executable that exists here; hapacs is not in /usr/local/bin on the test machine.
    copy = tmp_path / "hapacs.service"
    copy.write_text(text.replace("/usr/local/bin/hapacs", f"{sys.executable} -m hapacs"))
    completed = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True,
                               timeout=60, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == "", f"systemd-analyze verify warned:\n{completed.stderr}"


def test_unit_security_keys():
    keys = unit_keys(UNIT.read_text())

    def one(key: str) -> str:
        assert len(keys.get(key, [])) == 1, f"{key}: expected exactly once, got {keys.get(key)}"
        return keys[key][0]

    expected = {
        "Type": "notify", "NotifyAccess": "main", "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "5", "Restart": "on-failure", "RestartPreventExitStatus": "2",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
        "RuntimeDirectory": "hapacs", "StateDirectory": "hapacs", "Environment": "TMPDIR=/var/lib/hapacs",
        "CPUSchedulingPolicy": "rr", "CPUSchedulingResetOnFork": "yes", "KillMode": "mixed",
        "SystemCallFilter": "@system-service", "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert one(key) == value, key
    capabilities = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}
    assert set(one("CapabilityBoundingSet").split()) == capabilities
    assert set(one("AmbientCapabilities").split()) == capabilities
    assert 1 <= int(one("CPUSchedulingPriority")) <= 99
    assert 0 < float(one("RestartSec")) <= 5
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK",
                                                           "AF_PACKET"}
    # The agent writes promote_secondaries (hapacs/hostsetup.py promote_secondaries).
    assert "/proc/sys/net/ipv4/conf" in keys["ReadWritePaths"]
    for absent in ("ProtectProc", "RestrictRealtime", "MemoryDenyWriteExecute", "PrivateNetwork", "User",
                   "DynamicUser"):
        assert absent not in keys, f"{absent} breaks the agent; see the comments in the unit"


# --- a real agent in the unit's process environment ---------------------------------------

CAPABILITY_NUMBERS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}


def _unit_capabilities() -> list[str]:
    return unit_keys(UNIT.read_text())["CapabilityBoundingSet"][0].split()


def _as_the_unit_would(argv: list[str], groups: list[int] | None = None) -> list[str]:
    """The agent with the unit's capabilities (root keeps exactly its bounding set across exec),
    no new privileges, and SCHED_RR reset on fork."""
    bounding = ",".join(["-all"] + ["+" + c.removeprefix("CAP_").lower() for c in _unit_capabilities()])
    groups_option = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return (["chrt", "--rr", "--reset-on-fork", "10", "setpriv", f"--bounding-set={bounding}",
             "--inh-caps=-all", *groups_option, "--no-new-privs", "--"] + argv)


def _agent_argv(cluster: AgentCluster, host: str) -> list[str]:
    return [sys.executable, "-m", "hapacs", "run", "-c", cluster.write(host)]


def _thread_policies(pid: int) -> dict[int, int]:
    policies = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as handle:
            policies[int(tid)] = int(handle.read().rsplit(")", 1)[1].split()[38])   # field 41: policy
    return policies


def _neighbour_mac(lab, ns: str, ip: str) -> str | None:
    shown = lab.exec(ns, ["ip", "-j", "neigh", "show", ip], check=False).stdout
    entries = json.loads(shown or "[]")
    return entries[0].get("lladdr") if entries else None


def test_agent_works_with_exactly_the_units_capabilities(lab):
    require("chrt", "setpriv", "storescp")
    start_storescp(lab, lab.ns("a"), port=104, aet="PACS")
    cluster = AgentCluster(lab, multicast=True, checks={"a": [
        {"name": "pacs", "type": "dicom-echo", "host": "127.0.0.1", "port": 104, "called_ae": "PACS"}]})
    cluster.add("a", 150)
    ws = lab.node("ws")
    # A stale entry for the VIP: only the agent's gratuitous ARP (CAP_NET_RAW) can correct it.
    lab.exec("ws", ["ip", "neigh", "replace", VIP, "lladdr", "02:00:00:00:00:01", "dev", ws.ifname, "nud", "stale"])
    log = open(cluster.log_path("a"), "a")
    agent = lab.spawn("a", _as_the_unit_would(_agent_argv(cluster, "a")), stdout=log, stderr=log)
    log.close()
    try:
        cluster.wait_state("a", "MASTER", timeout=15)
        lab.wait_for(lambda: lab.holders(VIP) == ["a"], 5, what="VIP added over netlink (CAP_NET_ADMIN)")
        mac = json.loads(lab.exec("a", ["ip", "-j", "link", "show", lab.node("a").ifname]).stdout)[0]["address"]
        lab.wait_for(lambda: _neighbour_mac(lab, "ws", VIP) == mac, 5,
                     what="the workstation's ARP entry corrected by gratuitous ARP (CAP_NET_RAW)")
        with open(f"/proc/{agent.pid}/status") as handle:
            fields = dict(line.split(":\t", 1) for line in handle.read().splitlines() if ":\t" in line)
        wanted = sum(1 << CAPABILITY_NUMBERS[c] for c in _unit_capabilities())
        assert int(fields["CapEff"], 16) == wanted and int(fields["CapBnd"], 16) == wanted
        assert fields["NoNewPrivs"].strip() == "1"
        lab.wait_for(lambda: cluster.status("a")["checks"][0]["ok"], 10, what="the DICOM check passes")
        policies = _thread_policies(agent.pid)
        assert policies.pop(agent.pid) == 2, "the event loop thread runs SCHED_RR"
        assert policies and set(policies.values()) == {0}, \
            f"check threads must not inherit SCHED_RR (CPUSchedulingResetOnFork=): {policies}"
        logged = Path(cluster.log_path("a")).read_text()
        assert "cannot announce" not in logged and "cannot set" not in logged, logged
    finally:
        lab.stop(agent, timeout=20)
        print(cluster.logs())


@pytest.fixture
def control_group():
    name = f"hpg{os.getpid() % 100000}"
    subprocess.run(["groupadd", "-r", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], capture_output=True)


def test_control_group_needs_supplementary_groups_under_the_units_capabilities(lab, control_group):
    """Without CAP_CHOWN the agent may give its socket only to a group it is in (the unit's
    SupplementaryGroups= comment)."""
    require("chrt", "setpriv")
    import grp
    gid = grp.getgrnam(control_group).gr_gid
    cluster = AgentCluster(lab, multicast=True)
    cluster.add("a", 150, control={"group": control_group})
    refused = lab.exec("a", _as_the_unit_would(_agent_argv(cluster, "a")), check=False, timeout=30)
    assert refused.returncode == 1
    assert "cannot create the control socket" in refused.stderr, refused.stderr
    log = open(cluster.log_path("a"), "a")
    agent = lab.spawn("a", _as_the_unit_would(_agent_argv(cluster, "a"), groups=[gid]), stdout=log, stderr=log)
    log.close()
    try:
        lab.wait_for(lambda: cluster.status("a") is not None, 15, what="the agent answers")
        info = os.stat(cluster.socket_path("a"))
        assert info.st_gid == gid and info.st_mode & 0o777 == 0o660
    finally:
        lab.stop(agent, timeout=20)
        print(cluster.logs())


# --- every system call the agent makes is allowed by SystemCallFilter= ---------------------


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(word) for word in handle.read().split()]


def expand_syscall_set(name: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    shown = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name], capture_output=True,
                           text=True, check=True, timeout=30).stdout
    calls: set[str] = set()
    for line in shown.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            calls |= expand_syscall_set(word, seen)
        else:
            calls.add(word)
    return calls


def test_every_system_call_of_a_working_agent_is_allowed_by_the_unit(lab, tmp_path):
    """Start, checks of every kind, SNMP, MASTER with VIPs and GARP, status, a notify script,
    SIGTERM with release: strace lists the system calls; all must be in the unit's SystemCallFilter."""
    require("strace", "systemd-analyze", "storescp")
    keys = unit_keys(UNIT.read_text())
    allowed: set[str] = set()
    for group in keys["SystemCallFilter"][0].split():
        allowed |= expand_syscall_set(group) if group.startswith("@") else {group}
    families = set(keys["RestrictAddressFamilies"][0].split())
    start_storescp(lab, lab.ns("a"), port=104, aet="PACS")
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\necho \"$HAPACS_STATE\" >> \"$0.out\"\n")
    script.chmod(0o755)
    cluster = AgentCluster(lab, multicast=True, checks={"a": [
        {"name": "pacs", "type": "dicom-echo", "host": "127.0.0.1", "port": 104, "called_ae": "PACS"},
        {"name": "port", "type": "tcp", "host": "127.0.0.1", "port": 104},
        {"name": "proc", "type": "process", "process_name": "storescp"},
        {"name": "disk", "type": "disk", "path": str(tmp_path)},
        {"name": "script", "type": "script", "command": ["/bin/true"]},
    ]})
    cluster.add("a", 150, notify={"command": [str(script)]},
                snmp={"listen": ["127.0.0.1:16161"], "community": "public"})
    trace = tmp_path / "strace.out"
    log = open(cluster.log_path("a"), "a")
    agent = lab.spawn("a", ["strace", "-f", "-qq", "-C", "-o", str(trace), "-e", "trace=all"]
                      + _agent_argv(cluster, "a"), stdout=log, stderr=log)
    log.close()
    try:
        cluster.wait_state("a", "MASTER", timeout=30)
        lab.wait_for(lambda: all(c["ok"] for c in cluster.status("a")["checks"]), 20, what="all checks pass")
        lab.wait_for(lambda: Path(f"{script}.out").exists(), 10, what="the notify script ran")
        assert cluster.cli("a", "status").returncode == 0
        assert "SNMP listening on 127.0.0.1:16161" in Path(cluster.log_path("a")).read_text()
        traced = _children(agent.pid)   # the agent itself; SIGTERM to strace would only detach it
        assert len(traced) == 1, traced
        os.kill(traced[0], signal.SIGTERM)
        agent.wait(timeout=30)
    finally:
        lab.stop(agent, timeout=20)
        print(cluster.logs())
    text = trace.read_text()
    used = set(re.findall(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+\s+(?:\d+\s+)?(\w+)\s*$", text, re.MULTILINE))
    used.discard("total")
    assert len(used) > 30, f"strace summary not understood:\n{text[-3000:]}"
    assert used <= allowed, f"system calls outside SystemCallFilter=: {sorted(used - allowed)}"
    opened = set(re.findall(r"\bsocket\((AF_\w+)", text))
    assert opened and opened <= families, f"address families outside RestrictAddressFamilies=: {opened - families}"
