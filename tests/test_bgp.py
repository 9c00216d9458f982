"""Routed VIPs and the BGP session gate without BIRD: the configuration, the reading of BIRD's
control protocol (real Unix sockets answering garbage), and the gate on a fake clock."""

from __future__ import annotations

import asyncio
import os
import textwrap

import pytest

from hapacs import config as cfg
from hapacs.bgpgate import Protocol, SessionGate
from hapacs.bird import BirdAnswerError, BirdClient, BirdUnreachable, parse_protocols, reply_lines

from .fixtures import config_problems, load_config

BASE = """\
node: {name: pacs-a, priority: 150}
cluster: {id: 51, interface: eth0, peers: [198.51.100.75], auth_key_file: KEY}
"""

SHOW_PROTOCOLS = [
    "2002-Name       Proto      Table      State  Since         Info",
    "1002-device1    Device     ---        up     01:38:57.630  ",
    " vips       Direct     ---        up     01:38:57.630  ",
    " uplink     BGP        ---        up     01:38:58.449  Established   ",
    " backup     BGP        ---        start  01:38:59.001  Active        Socket: Connection refused",
    " off        BGP        ---        down   01:38:59.001  ",
    "0000 ",
]


def load(tmp_path, key, text: str) -> cfg.Config:
    return load_config(tmp_path, BASE.replace("KEY", key) + textwrap.dedent(text))


def problems(tmp_path, key, text: str) -> list[str]:
    return config_problems(tmp_path, BASE.replace("KEY", key) + textwrap.dedent(text))


# --- configuration ---------------------------------------------------------------------------

def test_a_routed_vip_lives_on_lo_and_the_bgp_section_has_defaults(tmp_path, key):
    loaded = load(tmp_path, key, """\
        vips:
          - {address: 203.0.113.100/32, mode: routed}
          - {address: 2001:db8:100::100/128, mode: routed}
          - address: 198.51.100.100/26
        bgp: {protocols: [uplink]}
        """)
    routed, routed6, arp = loaded.vips
    assert (routed.interface, routed.mode, routed.routed) == ("lo", "routed", True)
    assert (routed6.interface, str(routed6.address)) == ("lo", "2001:db8:100::100/128")
    assert (arp.interface, arp.mode, arp.routed) == ("eth0", "arp", False)
    assert loaded.bgp.socket == "/run/bird/bird.ctl" and loaded.bgp.protocols == ("uplink",)
    assert loaded.bgp.stable_for_s == 5.0 and loaded.bgp.poll_interval_s == 0.5
    assert "lo" in loaded.interfaces


@pytest.mark.parametrize("vip, expected", [
    ("{address: 203.0.113.100/24, mode: routed}",
     "hapacs.yaml:4: vips[0].mode: a routed VIP is one host route: write 203.0.113.100/32, not /24 "
     "(allowed: /32 for IPv4, /128 for IPv6)"),
    ("{address: 2001:db8::100/64, mode: routed}", "vips[0].mode: a routed VIP is one host route: write "
     "2001:db8::100/128, not /64"),
    ("{address: 203.0.113.100/32, mode: routed, interface: eth0}",
     "hapacs.yaml:4: vips[0].mode: a routed VIP lives on lo (the BGP speaker announces it from there): leave out "
     "interface"),
    ("{address: 203.0.113.100/32, mode: bgp}", "hapacs.yaml:4: vips[0].mode: "),
])
def test_a_routed_vip_that_is_not_one_host_route_on_lo_is_refused_with_its_line(tmp_path, key, vip, expected):
    found = problems(tmp_path, key, f"vips:\n  - {vip}\n")
    assert any(expected in line for line in found), found


def test_bad_mode_names_what_is_allowed(tmp_path, key):
    found = problems(tmp_path, key, "vips:\n  - {address: 203.0.113.100/32, mode: bgp}\n")
    assert any("arp" in line and "routed" in line for line in found), found


@pytest.mark.parametrize("section, expected", [
    ("bgp: {protocols: []}", "hapacs.yaml:4: bgp.protocols: needs at least 1 entry"),
    ("bgp: {protocols: [up-link]}", "hapacs.yaml:4: bgp.protocols[0]: 'up-link' is not a BIRD protocol name"),
    ("bgp: {protocols: [uplink, uplink]}", "bgp.protocols: lists a protocol twice"),
    ("bgp: {protocols: [uplink], socket: run/bird.ctl}", "bgp.socket: "),
    ("bgp: {protocols: [uplink], stable_for: -1}", "bgp.stable_for: "),
    ("bgp: {protocols: [uplink], stable: 5}", "bgp.stable: unknown key (did you mean stable_for?)"),
    ("bgp: {socket: /run/bird/bird.ctl}", "bgp.protocols: is required but missing"),
])
def test_bgp_section_errors_name_the_key_and_line(tmp_path, key, section, expected):
    found = problems(tmp_path, key, f"vips: [{{address: 203.0.113.100/32, mode: routed}}]\n{section}\n")
    assert any(expected in line for line in found), found


# --- BIRD's control protocol ------------------------------------------------------------------

def test_show_protocols_gives_the_bgp_states_and_sessions():
    protocols = parse_protocols(reply_lines(SHOW_PROTOCOLS))
    assert set(protocols) == {"uplink", "backup", "off"}
    assert protocols["uplink"] == Protocol("uplink", "Established", "01:38:58.449")
    assert protocols["backup"].state == "Active" and protocols["off"].state == "Down"


@pytest.mark.parametrize("lines, message", [
    (["hello there"], "not BIRD's reply format"),
    (["9001 syntax error, unexpected CF_SYM_UNDEFINED"], "BIRD refused `show protocols`: syntax error"),
    (["1002-x", "0000 "], "fewer than 4 columns"),
])
def test_answers_not_in_birds_shape_are_refused_with_a_reason(lines, message):
    with pytest.raises(BirdAnswerError, match=message):
        parse_protocols(reply_lines(lines))


def serve(path: str, answer: bytes | None):
    """A Unix server at `path` that greets like BIRD (or not) and answers `answer` to anything."""
    async def handle(reader, writer):
        if answer is None:
            return      # accepts, says nothing: a hung speaker
        writer.write(answer)
        await writer.drain()
        await reader.read(100)
        writer.close()
    return asyncio.start_unix_server(handle, path)


@pytest.mark.parametrize("answer, error, message", [
    (b"0001 BIRD 2.0.12 ready.\n" + "\n".join(SHOW_PROTOCOLS).encode() + b"\n", None, None),
    (b"HTTP/1.1 200 OK\r\n\r\n", BirdAnswerError, "not BIRD's reply format"),
    (b"0001 BIRD ready.\n\xff\xfe garbage\n", BirdAnswerError, "not ASCII"),
    (b"0001 BIRD ready.\n" + b"1002-" + b"x" * 10000 + b"\n", BirdAnswerError, "longer than 4096 bytes"),
    (b"0001 BIRD ready.\n" + b"1002-uplink BGP --- up now Established\n" * 5000, BirdAnswerError, "longer than"),
    (b"0001 BIRD 2.0.12 ready.\n1002-half a repl", BirdUnreachable, "closed"),
    (None, BirdUnreachable, "no whole answer"),
])
def test_the_client_reads_birds_socket_and_refuses_garbage(tmp_path, answer, error, message):
    path = str(tmp_path / "bird.ctl")

    async def scenario():
        server = await serve(path, answer)
        client = BirdClient(path)
        try:
            if error is None:
                return await client.show_protocols()
            with pytest.raises(error, match=message):
                await client.show_protocols()
            assert client.writer is None       # dropped: the next poll starts afresh
        finally:
            client.close()
            server.close()

    result = asyncio.run(scenario())
    if error is None:
        assert result["uplink"].state == "Established"


def test_a_missing_socket_is_unreachable_with_its_path(tmp_path):
    path = str(tmp_path / "nothing.ctl")
    with pytest.raises(BirdUnreachable, match=f"{path}: No such file or directory"):
        asyncio.run(BirdClient(path).show_protocols())
    os.mkfifo(tmp_path / "fifo.ctl")
    with pytest.raises(BirdUnreachable, match="fifo.ctl"):
        asyncio.run(BirdClient(str(tmp_path / "fifo.ctl")).show_protocols())


# --- the gate (fake clock) ---------------------------------------------------------------------

def up(since: str = "01:00:00.000") -> dict:
    return {"uplink": Protocol("uplink", "Established", since)}


def down() -> dict:
    return {"uplink": Protocol("uplink", "Active", "01:00:09.000")}


def test_the_gate_opens_only_after_stable_for_without_a_break():
    gate = SessionGate(("uplink",), 5.0)
    assert gate.hold_text(0.0) == "BGP session state unknown: waiting for the first answer of the BGP speaker"
    assert not gate.session_down()           # unknown is not down: a fresh MASTER is not faulted for it
    gate.update(down(), 1.0)
    assert gate.session_down()
    assert gate.hold_text(4.2) == "BGP session uplink not established (Active for 3.2 s)"
    gate.update(up(), 10.0)
    assert not gate.session_down() and gate.ready_at() == 15.0
    assert gate.hold_text(12.0) == "BGP session uplink Established for 2.0 s, not yet the 5 s of bgp.stable_for"
    gate.update(up(), 14.9)
    assert not gate.ready(14.9) and gate.ready(15.0) and gate.hold_text(15.0) is None
    assert gate.snapshot(16.0)["protocols"] == [{"name": "uplink", "state": "Established", "since_s": 6.0}]


def test_a_flapping_session_never_opens_the_gate():
    gate = SessionGate(("uplink",), 5.0)
    for second in range(60):
        # Up with a new since each time, or down: every poll sees a new session or none.
        gate.update(up(f"01:00:{second:02d}.000") if second % 2 else down(), float(second))
        assert not gate.ready(second + 0.99), second
    # A restart between two polls: still Established, but BIRD's since changed.
    gate.update(up("02:00:00.000"), 100.0)
    gate.update(up("02:00:03.000"), 104.0)
    assert gate.ready_at() == 109.0


def test_one_of_several_protocols_is_enough_and_a_missing_one_is_named():
    gate = SessionGate(("uplink", "backup"), 0.0)
    gate.update(up(), 1.0)
    assert gate.ready(1.0)
    assert gate.snapshot(2.0)["protocols"][1] == {"name": "backup", "state": "missing", "since_s": 1.0}
    gate.update({}, 3.0)
    assert gate.session_down() and "uplink not established (missing for 0.0 s)" in gate.hold_text(3.0)


def test_the_hold_names_the_session_established_the_longest():
    gate = SessionGate(("uplink", "backup"), 5.0)
    gate.update({"backup": Protocol("backup", "Established", "01:00:01.000")}, 1.0)
    gate.update({**up("01:00:03.000"), "backup": Protocol("backup", "Established", "01:00:01.000")}, 3.0)
    assert gate.ready_at() == 6.0
    assert gate.hold_text(4.0) == "BGP session backup Established for 3.0 s, not yet the 5 s of bgp.stable_for"


def test_unreachable_bird_is_down_and_garbage_is_unknown():
    gate = SessionGate(("uplink",), 0.0)
    gate.update(up(), 1.0)
    gate.failed("unreadable answer of BIRD: junk", False, 2.0)
    assert not gate.ready(2.0) and not gate.session_down()
    assert gate.hold_text(2.0) == "BGP session state unknown: unreadable answer of BIRD: junk"
    gate.failed("BGP speaker not reachable: /run/bird/bird.ctl: Connection refused", True, 3.0)
    assert gate.session_down()
    assert gate.fault_text() == "BGP session down (uplink unreachable): this node cannot announce its routed VIPs"
    gate.update(up(), 4.0)
    assert gate.ready(4.0) and not gate.session_down()


# --- the shell's part, against real Unix sockets (a recording core, no BIRD) ------------------------

class RecordingCore:
    """The election's calls the BGP watch makes, and a state to report."""

    def __init__(self, state):
        self.state, self.holds, self.faults = state, {}, {}

    def view(self, now):
        return type("View", (), {"state": self.state})()

    def set_hold(self, source, text, now):
        self.holds[source] = text
        return []

    def set_fault(self, source, text, now, recovered=""):
        self.faults[source] = text
        return []


def watch_for(tmp_path, state):
    from hapacs.bgpconfig import BgpConfig
    from hapacs.bird import BgpWatch

    class Agent:
        loop = asyncio.get_running_loop()
        config = type("Config", (), {"bgp": BgpConfig(str(tmp_path / "bird.ctl"), ("uplink",), 0.0, 0.1)})()
        core = RecordingCore(state)

        def feed(self, call):
            return call(self.loop.time())

    return BgpWatch(Agent())


def test_a_master_without_bird_is_faulted_a_backup_only_held_and_garbage_faults_nobody(tmp_path, caplog):
    from hapacs.states import State
    greeting = b"0001 BIRD 2.0.12 ready.\n"
    established = greeting + "\n".join(SHOW_PROTOCOLS).encode() + b"\n"

    async def scenario():
        master, backup = watch_for(tmp_path, State.MASTER), watch_for(tmp_path, State.BACKUP)
        for _ in range(3):                       # no socket: logged once, not three times
            await master.poll()
        await backup.poll()
        assert master.agent.core.faults["bgp"].startswith("BGP session down (uplink unreachable)")
        assert backup.agent.core.faults["bgp"] is None
        assert "not reachable" in backup.agent.core.holds["bgp"]
        server = await serve(str(tmp_path / "bird.ctl"), b"SSH-2.0-OpenSSH_9.2\n")
        await master.poll()                      # garbage: unknown, not down; the fault stays until Established
        assert master.agent.core.holds["bgp"].startswith("BGP session state unknown: unreadable answer")
        server.close()
        await server.wait_closed()
        os.unlink(tmp_path / "bird.ctl")
        server = await serve(str(tmp_path / "bird.ctl"), established)
        await master.poll()
        assert master.agent.core.faults["bgp"] is None and master.agent.core.holds["bgp"] is None
        server.close()
        master.client.close()
        backup.client.close()

    with caplog.at_level("WARNING", logger="hapacs.bgp"):
        asyncio.run(scenario())
    unreachable = [r for r in caplog.records if "cannot ask BIRD" in r.getMessage()]
    assert len(unreachable) == 2, [r.getMessage() for r in caplog.records]   # one per watch, rate-limited
    assert any("unreadable answer on" in r.getMessage() and "SSH-2.0" in r.getMessage() for r in caplog.records)


def test_no_gratuitous_arp_or_na_for_a_routed_vip():
    import ipaddress
    from hapacs.config import VipConfig
    from hapacs.netlink import Link
    from hapacs.vips import VipManager

    class Announcer:
        bursts = []

        def burst(self, key, targets):
            self.bursts.append(targets)

    vips = (VipConfig(ipaddress.ip_interface("203.0.113.100/32"), "lo", "routed"),
            VipConfig(ipaddress.ip_interface("198.51.100.100/26"), "eth0"))
    manager = VipManager(None, Announcer(), vips, 3, lambda text: None)
    for index, name in ((1, "lo"), (2, "eth0")):
        manager.set_link(Link(index=index, name=name, mac=b"\x02" * 6, up=True, state="UP"))
    manager.held = {v.label: True for v in vips}
    manager.announce()
    assert [[target[3] for target in burst] for burst in Announcer.bursts] == [[ipaddress.ip_address("198.51.100.100")]]


def test_the_status_table_json_and_metrics_show_the_session():
    from hapacs.metrics import render
    from hapacs.status import render_table
    from tests.snmp_helpers import make_status
    gate = SessionGate(("uplink",), 5.0)
    gate.update(down(), 1.0)
    status = make_status(bgp=gate.snapshot(4.2))
    assert status.to_json()["bgp"] == {"protocols": [{"name": "uplink", "state": "Active", "since_s": 3.2}],
                                       "ready": False, "stable_for_s": 5.0,
                                       "hold": "BGP session uplink not established (Active for 3.2 s)"}
    table = render_table(status)
    assert "BGP gate closed: BGP session uplink not established (Active for 3.2 s)" in table
    assert "uplink       Active" in table
    page = render(status).decode()
    assert 'hapacs_bgp_session_up{cluster_id="51",node="pacs-a",protocol="uplink"} 0.0' in page
    assert "hapacs_bgp_ready" in page
    assert "hapacs_bgp" not in render(make_status()).decode()
