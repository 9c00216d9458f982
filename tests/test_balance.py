"""Load balancing without namespaces: the balance: section, the haproxy.cfg written from it
(accepted by the real `haproxy -c`), the DICOM health-check bytes, the agent-check answers,
and the real HAProxy obeying them on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket

import pytest
from pynetdicom.pdu import A_ASSOCIATE_RQ

from hapacs import config as cfg, haproxy
from hapacs.agentcheck import MAX_REQUEST_BYTES, AgentCheckServer
from hapacs.balanceconfig import BalanceConfig, ServiceConfig
from hapacs.balancer import agent_answer, member_state
from hapacs.control import validate
from hapacs.model import ElectionView
from hapacs.reload import describe, restart_needed
from hapacs.states import State

from .fixtures import config_problems, drain_command, load_config

BASE = """\
node: {{name: pacs-a}}
cluster:
  interface: eth0
  peers: [192.0.2.12]
  auth_key_file: {key}
vips:
  - address: 192.0.2.100/24
checks:
  - {{name: pacs-dicom, type: dicom-echo, port: 11112, called_ae: PACS}}
  - {{name: web, type: tcp, host: 127.0.0.1, port: 80}}
balance:
{balance}
"""

SERVICE = """\
  services:
    - name: dicom
      address: 192.0.2.100
      port: 104
      target_port: 11112
      health: pacs-dicom
"""


def load(tmp_path, key, balance: str = SERVICE) -> cfg.Config:
    return load_config(tmp_path, BASE.format(key=key, balance=balance))


def problems(tmp_path, key, balance: str) -> list[str]:
    return config_problems(tmp_path, BASE.format(key=key, balance=balance))


def test_a_service_with_defaults(tmp_path, key):
    balance = load(tmp_path, key).balance
    assert (balance.mode, balance.client_address, balance.members) == ("proxy", "snat", ())
    assert (balance.agent_port, balance.check_interval_s) == (5406, 2.0)
    service = balance.services[0]
    assert (service.name, str(service.address), service.port, service.target_port) == ("dicom", "192.0.2.100", 104, 11112)
    assert (service.schedule, service.health, service.called_ae, service.calling_ae) == \
        ("leastconn", "pacs-dicom", "PACS", "HAPACS")
    assert load(tmp_path, key, SERVICE.replace("      health: pacs-dicom\n", "")).balance.services[0].called_ae is None


def test_no_balance_section_no_balancing(tmp_path, key):
    assert load_config(tmp_path, BASE.format(key=key, balance="").replace("balance:\n", ""), "plain.yaml").balance is None


# (the balance section, the expected FILE:LINE: key: message ending)
BROKEN = [
    (SERVICE.replace("192.0.2.100", "192.0.2.101"), 14, "balance.services[0].address",
     "192.0.2.101 is not one of the VIPs (192.0.2.100); a service is served on a VIP"),
    (SERVICE.replace("health: pacs-dicom", "health: pacs"), 17, "balance.services[0].health",
     "no check named 'pacs' in checks: (known: pacs-dicom, web)"),
    (SERVICE.replace("port: 104", "port: 0"), 15, "balance.services[0].port", "0 is out of range; allowed: 1 to 65535"),
    (SERVICE + "      schedule: fastest\n", 18, "balance.services[0].schedule",
     "'fastest' is not allowed; use one of: leastconn, source, roundrobin"),
    ("  mode: direct\n" + SERVICE, 17, "balance.services[0].target_port", "11112 differs from port 104: direct "
     "routing delivers the packets unchanged"),
    ("  client_address: transparent\n" + SERVICE, 12, "balance.client_address",
     "client_address: transparent needs workstations: the networks the workstations are in"),
    ("  agent_port: 104\n" + SERVICE, 12, "balance.agent_port", "104 is also a service port"),
    ("  agnet_port: 5407\n" + SERVICE, 12, "balance.agnet_port", "unknown key (did you mean agent_port?)"),
    ("  members: [{address: 192.0.2.11}, {address: 192.0.2.11}]\n" + SERVICE, 12, "balance.members",
     "192.0.2.11 is given twice"),
    ("  services: []\n", 12, "balance.services", "needs at least 1 entry"),
    ("  mode: proxy\n", 11, "balance.services", "is required but missing"),
    (SERVICE + SERVICE.replace("  services:\n", "").replace("104", "105"), 18, "balance.services",
     "dicom is given twice; each entry needs its own name"),
]


@pytest.mark.parametrize("balance, line, key_path, message", BROKEN, ids=[b[2] + str(i) for i, b in enumerate(BROKEN)])
def test_every_bad_balance_key_is_a_config_error_with_file_line_and_key(tmp_path, key, balance, line, key_path,
                                                                        message):
    found = problems(tmp_path, key, balance)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path}/hapacs.yaml:{line}: {key_path}: "), found
    assert message in found[0], found


def test_with_multicast_heartbeats_the_members_must_be_listed(tmp_path, key):
    text = BASE.format(key=key, balance=SERVICE).replace("  peers: [192.0.2.12]\n", "")
    assert config_problems(tmp_path, text, "multicast.yaml") == [
        f"{tmp_path}/multicast.yaml:10: balance.members: with multicast heartbeats (no cluster.peers) the members "
        "cannot be known in advance: list every node here, such as members: [{name: pacs-a, address: 192.0.2.11}, ...]"]
    listed = text.replace("  services:", "  members: [{address: 192.0.2.11}]\n  services:")
    assert load_config(tmp_path, listed, "multicast.yaml").balance.members[0].name is None


def test_reload_reloads_haproxy_for_a_changed_service_and_needs_a_restart_for_agent_port(tmp_path, key):
    old = load(tmp_path, key)
    changed = load(tmp_path, key, SERVICE.replace("health: pacs-dicom", "schedule: source"))
    assert restart_needed(old, changed) == [] and "balance changed (HAProxy reloaded)" in describe(old, changed)
    moved = load(tmp_path, key, "  agent_port: 5500\n" + SERVICE)
    assert restart_needed(old, moved) == ["balance.agent_port"]


def test_the_drain_command_is_validated_like_maintenance():
    assert validate({"command": "drain", "on": True}) is None
    assert validate({"command": "drain", "on": "yes"}) == 'drain needs "on": true or false'


# --- haproxy.cfg ---------------------------------------------------------------------------------

def test_the_association_request_is_what_pynetdicom_reads_and_sends():
    pdu = haproxy.associate_rq("PACS", "HAPACS")
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(pdu)
    assert decoded.called_ae_title == "PACS" and decoded.calling_ae_title == "HAPACS"
    context = decoded.presentation_context[0]
    assert (context.context_id, context.abstract_syntax, context.transfer_syntax) == \
        (1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])
    assert decoded.encode() == pdu
    assert haproxy.accepted_context_item().hex() == "2100001901000000"


def members() -> tuple[haproxy.Member, ...]:
    return (haproxy.Member("192.0.2.11", "pacs-a", ipaddress.ip_address("192.0.2.11")),
            haproxy.Member("192.0.2.12", None, ipaddress.ip_address("192.0.2.12")))


def test_the_written_configuration_is_accepted_by_haproxy(tmp_path, key):
    assert shutil.which("haproxy"), "install HAProxy (Debian: apt install haproxy)"
    text = haproxy.render(load(tmp_path, key).balance, members(), str(tmp_path / "state"))
    assert "bind ipv4@192.0.2.100:104 transparent" in text and "balance leastconn" in text
    assert "option redispatch 1" in text and "retries 2" in text
    assert f"send-binary {haproxy.associate_rq('PACS', 'HAPACS').hex()}" in text
    assert "expect binary 06000000000400000000" in text and "07000000" not in text   # released, never aborted
    assert 'server 192.0.2.12 ipv4@192.0.2.12:11112 weight 100 check' in text
    assert 'agent-check agent-addr 192.0.2.12 agent-port 5406 agent-inter 200 agent-send "dicom\\n"' in text
    assert f"stats socket {tmp_path}/state/haproxy/admin.sock mode 600 level admin" in text
    proxy = haproxy.HAProxy(str(tmp_path / "state"))
    asyncio.run(proxy.check(text))
    installed = tmp_path / "state" / "haproxy" / "haproxy.cfg"
    assert installed.read_text() == text
    # A reload asks first (install=False): accepted or not, the running configuration stays.
    asyncio.run(proxy.check(text.replace("balance leastconn", "balance source"), install=False))
    with pytest.raises(haproxy.HAProxyError, match="haproxy.cfg.new"):     # kept there to be read
        asyncio.run(proxy.check(text + "    no-such-keyword\n", install=False))
    assert installed.read_text() == text


def test_a_configuration_haproxy_refuses_is_an_error_naming_the_reason(tmp_path):
    proxy = haproxy.HAProxy(str(tmp_path))
    with pytest.raises(haproxy.HAProxyError, match="HAProxy refuses the configuration.*unknown keyword"):
        asyncio.run(proxy.check("global\n    no-such-keyword\n"))
    missing = haproxy.HAProxy(str(tmp_path), binary="no-haproxy-here")
    with pytest.raises(haproxy.HAProxyError, match="no-haproxy-here is not installed"):
        asyncio.run(missing.check("global\n"))


def test_a_haproxy_check_that_hangs_is_killed_and_an_error(tmp_path, monkeypatch):
    """A stand-in for `haproxy -c` that never answers (the real one answers at once: a hang cannot be
    provoked with it here): the start or reload that asked gets an error, the process is reaped."""
    hung = tmp_path / "haproxy"
    hung.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 30\n")
    hung.chmod(0o755)
    monkeypatch.setattr(haproxy, "CHECK_TIMEOUT_S", 0.5)
    proxy = haproxy.HAProxy(str(tmp_path / "state"), binary=str(hung))
    with pytest.raises(haproxy.HAProxyError, match=r"haproxy -c did not answer within 0.5 s"):
        asyncio.run(proxy.check("global\n"))
    pid = int((tmp_path / "pid").read_text())
    assert not os.path.exists(f"/proc/{pid}"), "the hung check is killed and reaped, not left behind"
    assert not os.path.exists(proxy.config_path), "nothing installed"


def test_show_stat_rows_and_member_states():
    text = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,status\n"
            "fe_dicom,FRONTEND,,,3,5,4096,120,OPEN\n"
            "be_dicom,192.0.2.11,0,0,2,4,,80,UP\n"
            "be_dicom,192.0.2.12,0,0,1,3,,40,DRAIN\n"
            "be_dicom,BACKEND,0,0,3,5,,120,UP\n")
    rows = haproxy.parse_stat(text)
    assert [(r.server, r.status, r.current, r.total) for r in rows] == \
        [("192.0.2.11", "UP", 2, 80), ("192.0.2.12", "DRAIN", 1, 40)]
    assert [member_state(s) for s in ("UP", "UP 1/2", "no check", "DRAIN", "NOLB", "MAINT", "MAINT (via x/y)",
                                      "DOWN", "DOWN 1/2", "")] == \
        ["up", "up", "up", "drain", "drain", "maint", "maint", "down", "down", "down"]


# --- the agent-check -----------------------------------------------------------------------------

def view(state=State.BACKUP, maintenance=False, faults=(), handover_target=None) -> ElectionView:
    return ElectionView(state=state, since_s=1.0, priority=100, effective_priority=100, master="pacs-a",
                        maintenance=maintenance, sticky=False, term=1, faults=faults, holds=(), peers=(),
                        handover_target=handover_target, alone=False)


@pytest.mark.parametrize("election, health_ok, drain_on, expected", [
    (view(), True, False, "up ready"),
    (view(state=State.MASTER), None, False, "up ready"),          # no result yet: HAProxy's own check decides
    (view(), True, True, "up drain #hapacs drain on"),
    (view(maintenance=True), True, False, "up drain #maintenance"),
    (view(state=State.MASTER, handover_target="pacs-b"), True, False, "up drain #handing over to pacs-b"),
    (view(), False, False, "down #check pacs-dicom is down"),
    (view(), False, True, "down #check pacs-dicom is down"),       # down beats drain
    (view(state=State.FAULT, faults=("link eth0 down (lowerlayerdown)",)), True, False,
     "down #FAULT: link eth0 down (lowerlayerdown)"),
])
def test_the_agent_answers(election, health_ok, drain_on, expected):
    assert agent_answer(election, "pacs-dicom", health_ok, drain_on) == expected


def test_a_fault_of_this_node_s_own_haproxy_does_not_take_its_pacs_out():
    own = "HAProxy exited (killed by signal 9)"
    assert agent_answer(view(state=State.FAULT, faults=(own,)), "pacs-dicom", True, False, own) == "up ready"
    both = view(state=State.FAULT, faults=(own, "link eth0 down (lowerlayerdown)"))
    assert agent_answer(both, "pacs-dicom", True, False, own) == "down #FAULT: link eth0 down (lowerlayerdown)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def ask(port: int, data: bytes, close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if close:
        writer.write_eof()
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def test_the_agent_check_server_answers_one_line_and_shrugs_off_garbage():
    async def scenario():
        server = AgentCheckServer("127.0.0.1", free_port(), lambda name: "up ready" if name == "dicom" else None)
        await server.start()
        try:
            assert await ask(server.port, b"dicom\n") == b"up ready\n"
            assert await ask(server.port, b"other\n") == b""                       # unknown service: no news
            assert await ask(server.port, b"x" * (MAX_REQUEST_BYTES * 4) + b"\n") == b""
            assert await ask(server.port, b"\xff\x00garbage", close=True) == b""   # no whole line
            assert await ask(server.port, b"dicom\n") == b"up ready\n"             # still serving
            return server.bad_requests, server.answered
        finally:
            await server.stop()
    assert asyncio.run(scenario()) == (3, 2)


# --- the real HAProxy obeys the answers ----------------------------------------------------------

def test_haproxy_follows_the_agent_up_drain_down_and_up_again(tmp_path):
    """On loopback: one member (a plain TCP listener), its agent-check served by AgentCheckServer."""
    assert shutil.which("haproxy"), "install HAProxy (Debian: apt install haproxy)"
    front, target, agent_port = free_port(), free_port(), free_port()
    service = ServiceConfig("dicom", ipaddress.ip_address("127.0.0.1"), front, target, "leastconn", None)
    balance = BalanceConfig("proxy", "snat", (), (service,), agent_port, 0.2)
    member = haproxy.Member("127.0.0.1", "pacs-a", ipaddress.ip_address("127.0.0.1"))
    answer = {"line": "up ready"}

    async def scenario():
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", target)
        agent = AgentCheckServer("127.0.0.1", agent_port, lambda name: answer["line"])
        proxy = haproxy.HAProxy(str(tmp_path))
        seen = []
        try:        # the listener and the agent-check server are closed even when HAProxy does not start
            await agent.start()
            await proxy.start(haproxy.render(balance, (member,), str(tmp_path)))
            for line, state in (("up ready", "up"), ("up drain #test", "drain"), ("down #check down", "down"),
                                ("up ready", "up")):
                answer["line"] = line
                for _ in range(100):      # 10 s at most
                    stats = await proxy.stats()
                    if stats and member_state(stats[0].status) == state:
                        break
                    await asyncio.sleep(0.1)
                seen.append(stats[0].status)
        finally:
            await proxy.stop()
            await agent.stop()
            listener.close()
        return seen, proxy.running
    seen, running = asyncio.run(scenario())
    assert seen == ["UP", "DRAIN (agent)", "DOWN (agent)", "UP"] and not running


def test_the_status_table_shows_the_balance_and_drain_is_refused_where_nothing_balances():
    from types import SimpleNamespace

    from hapacs.status import balance_lines
    balance = {"mode": "proxy", "active": True, "drain": False, "services": [
        {"name": "dicom", "address": "192.0.2.100", "port": 104, "active": True, "members": [
            {"name": "pacs-a", "address": "192.0.2.11", "state": "up", "associations": 3, "total": 120},
            {"name": "pacs-b", "address": "192.0.2.12", "state": "drain", "associations": 1, "total": 80}]}]}
    lines = balance_lines(balance)
    assert lines[1] == "balancing (proxy): this node serves"
    assert lines[3].split() == ["dicom", "192.0.2.100:104", "(here)", "pacs-a", "192.0.2.11", "up", "3", "120"]
    assert balance_lines(None) == []
    agent = SimpleNamespace(balancer=None, config=SimpleNamespace(path="/etc/hapacs/hapacs.yaml"))
    reply = drain_command(agent)
    assert reply == {"ok": False, "message": "refused: this node does not balance (no balance: section in "
                     "/etc/hapacs/hapacs.yaml)"}


def test_a_reload_gives_haproxy_the_new_members_and_keeps_its_process(tmp_path):
    assert shutil.which("haproxy"), "install HAProxy (Debian: apt install haproxy)"
    front, target, agent_port = free_port(), free_port(), free_port()
    service = ServiceConfig("dicom", ipaddress.ip_address("127.0.0.1"), front, target, "leastconn", None)
    balance = BalanceConfig("proxy", "snat", (), (service,), agent_port, 1.0)
    one = (haproxy.Member("127.0.0.1", "pacs-a", ipaddress.ip_address("127.0.0.1")),)
    two = one + (haproxy.Member("127.0.0.2", "pacs-b", ipaddress.ip_address("127.0.0.2")),)

    async def scenario():
        proxy = haproxy.HAProxy(str(tmp_path))
        await proxy.start(haproxy.render(balance, one, str(tmp_path)))
        pid = proxy.process.pid
        try:
            before = [s.server for s in await proxy.stats()]
            await proxy.reload(haproxy.render(balance, two, str(tmp_path)))
            for _ in range(100):     # 10 s at most for the new worker
                try:
                    after = [s.server for s in await proxy.stats()]
                except OSError:
                    after = []
                if len(after) == 2:
                    break
                await asyncio.sleep(0.1)
            with pytest.raises(haproxy.HAProxyError):
                await proxy.reload("global\n    no-such-keyword\n")     # refused: the running one stays
            still = [s.server for s in await proxy.stats()]
            return before, after, still, proxy.process.pid == pid and proxy.running
        finally:
            await proxy.stop()
    assert asyncio.run(scenario()) == (["127.0.0.1"], ["127.0.0.1", "127.0.0.2"], ["127.0.0.1", "127.0.0.2"], True)
