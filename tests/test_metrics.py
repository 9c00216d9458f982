"""Prometheus metrics: config errors with lines, the page rendered from a Status, the real
promtool on a page and on the shipped rules, and the HTTP endpoint on loopback (read only,
refuses garbage, binds where told)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hapacs import config as cfg
from hapacs import metrics
from hapacs.reload import restart_needed
from hapacs.status import Counters, MisconfiguredPeer

from .snmp_helpers import BALANCE, DIRECT_BALANCE, balance_with, make_status
from .test_config import GOOD, check_config, write

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "etc" / "prometheus"


def promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, "install the Debian package prometheus (promtool is missing)"
    return tool


def samples(page: bytes) -> dict[tuple, float]:
    """{(name, sorted label items): value} of a text page, parsed by prometheus_client."""
    out = {}
    for family in text_string_to_metric_families(page.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(page_samples: dict, name: str, **labels) -> float | None:
    want = {"node": "pacs-a", "cluster_id": "51", **labels}
    found = [v for (n, items), v in page_samples.items() if n == name and all(i in items for i in want.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


# --- configuration ---------------------------------------------------------------------------

def test_metrics_config_default_off_and_valid_forms(tmp_path, key):
    assert cfg.load(write(tmp_path, GOOD, key)).metrics is None
    for given, expected in (('"127.0.0.1:9641"', ("127.0.0.1", 9641)), ('"[::1]:19641"', ("::1", 19641)),
                            ('"192.0.2.11"', ("192.0.2.11", 9641)), ('"[2001:db8::11]"', ("2001:db8::11", 9641))):
        loaded = cfg.load(write(tmp_path, GOOD + f"metrics:\n  listen: {given}\n", key))
        assert loaded.metrics.listen == expected, given
    assert cfg.load(write(tmp_path, GOOD + "metrics:\n", key)).metrics is None


def test_every_bad_metrics_key_is_an_error_with_its_line(tmp_path, key):
    cases = {
        '"localhost:9641"': "'localhost' is not an IP address of this host",
        '"::1"': "write an IPv6 address in brackets, such as [::1]:9641",
        '"127.0.0.1:99999"': "'99999' is not a port; allowed: 1 to 65535",
        '"127.0.0.1:0"': "'0' is not a port; allowed: 1 to 65535",
        '"127.0.0.1:http"': "'http' is not a port",
        '"239.1.2.3:9641"': "239.1.2.3 is a multicast address",
        '"[::1:9641"': "is not ADDRESS:PORT; write it as 127.0.0.1:9641 or [::1]:9641",
        "9641": "must be text (put it in quotes), not 9641",
        '["127.0.0.1:9641"]': "must be one ADDRESS:PORT such as 127.0.0.1:9641 or [::1]:9641, not a list",
    }
    for given, message in cases.items():
        text = GOOD + "metrics:\n  # the Prometheus endpoint\n  listen: " + given + "\n"
        result = check_config(write(tmp_path, text, key))
        assert result.returncode == 2, (given, result.stdout)
        assert result.stderr.strip().endswith(message) or message in result.stderr, (given, result.stderr)
        assert result.stderr.startswith(str(tmp_path / "hapacs.yaml") + ":13: metrics.listen: "), result.stderr

    text = GOOD + "metrics:\n  listen: \"127.0.0.1:9641\"\n  path: /metrics\n  lisen: x\n"
    result = check_config(write(tmp_path, text, key))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    assert lines[0].endswith(":13: metrics.path: unknown key; allowed: listen"), lines
    assert lines[1].endswith(":14: metrics.lisen: unknown key (did you mean listen?); allowed: listen"), lines

    result = check_config(write(tmp_path, GOOD + 'metrics: "127.0.0.1:9641"\n', key))
    assert result.returncode == 2 and ":11: metrics: must be a mapping of keys to values" in result.stderr


def test_changing_metrics_listen_needs_a_restart(tmp_path, key):
    old = cfg.load(write(tmp_path, GOOD, key))
    new = cfg.load(write(tmp_path, GOOD + "metrics:\n  listen: \"127.0.0.1:9641\"\n", key))
    assert restart_needed(old, new) == ["metrics.listen"]
    assert restart_needed(new, new) == []


def test_prometheus_client_is_imported_only_with_metrics():
    probe = ("import sys, hapacs.agent, hapacs.config, hapacs.cli; "
             "assert 'prometheus_client' not in sys.modules and 'hapacs.metrics' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr


# --- the page --------------------------------------------------------------------------------

def test_page_renders_the_status_snapshot():
    status = make_status(counters=Counters(
        transitions=3, became_master=1, adverts_sent=1000, adverts_received=2000, peers_lost=1, drains=2,
        drain_cut=1, drops={"auth": 2, "short": 1, "replay": 5, "cluster": 0},
        by_reason={"startup": 1, "master-down": 1, "handover-to-me": 1}),
        timer_late_ms_minute=12.5, timer_late_ms_max=40.0)
    page = samples(metrics.render(status))
    assert {value(page, "hapacs_state", state=s) for s in ("INIT", "BACKUP", "FAULT")} == {0.0}
    assert value(page, "hapacs_state", state="MASTER") == 1.0
    assert value(page, "hapacs_priority") == 150 and value(page, "hapacs_effective_priority") == 140
    assert value(page, "hapacs_time_in_state_seconds") == pytest.approx(12.4)
    assert value(page, "hapacs_master_info", master="pacs-a", master_address="192.0.2.11") == 1.0
    assert value(page, "hapacs_vip_held", address="192.0.2.100/24", interface="eth0") == 1.0
    assert value(page, "hapacs_peer_state", peer="pacs-b", state="BACKUP", address="192.0.2.12") == 1.0
    assert value(page, "hapacs_peer_state", peer="pacs-b", state="LOST") == 0.0
    assert value(page, "hapacs_peer_last_seen_seconds", peer="pacs-b") == pytest.approx(0.08)
    assert value(page, "hapacs_check_up", check="pacs-dicom", type="dicom-echo") == 1.0
    assert value(page, "hapacs_check_latency_seconds", check="pacs-dicom") == pytest.approx(0.0031)
    # A check without a result yet is neither up nor down.
    assert value(page, "hapacs_check_up", check="free-disk") is None
    assert value(page, "hapacs_check_weight", check="free-disk") == -20
    assert value(page, "hapacs_transitions_total", reason="master-down") == 1
    assert value(page, "hapacs_transitions_total", reason="split-brain") == 0   # every reason, from the start
    assert value(page, "hapacs_heartbeats_sent_total") == 1000
    assert value(page, "hapacs_heartbeats_received_total") == 2000
    assert value(page, "hapacs_heartbeats_dropped_total", cause="auth") == 2
    assert value(page, "hapacs_drains_total") == 2 and value(page, "hapacs_drain_cut_associations_total") == 1
    assert value(page, "hapacs_timer_lateness_seconds") == pytest.approx(0.0125)
    assert value(page, "hapacs_timer_lateness_max_seconds") == pytest.approx(0.04)
    assert value(page, "hapacs_info", version="0.1.0", address="192.0.2.11", interface="eth0") == 1.0
    for name, items in page:
        assert name.startswith("hapacs_") and ("node", "pacs-a") in items and ("cluster_id", "51") in items


MISCONFIGURED = MisconfiguredPeer("192.0.2.13", "auth", "pacs-c MASTER priority 200", 0.1, True,
                                  "its heartbeats fail authentication: another key in cluster.auth_key_file")


def test_misconfigured_peers_are_a_series_each_and_none_without():
    named = MisconfiguredPeer("192.0.2.12", "name", "pacs-a BACKUP priority 100", 0.2, False,
                              "it uses this node's name: node.name must be unique")
    page = samples(metrics.render(make_status(misconfigured=(MISCONFIGURED, named))))
    assert value(page, "hapacs_misconfigured_peers", address="192.0.2.13", cause="auth", blocking="true") == 1.0
    assert value(page, "hapacs_misconfigured_peers", address="192.0.2.12", cause="name", blocking="false") == 1.0
    assert not [n for n, _ in samples(metrics.render(make_status())) if n == "hapacs_misconfigured_peers"]


def test_balanced_members_show_their_state_and_associations_and_nothing_without_balance():
    page = samples(metrics.render(make_status(balance=BALANCE)))
    assert value(page, "hapacs_balance_active", service="dicom") == 1.0
    assert value(page, "hapacs_balance_member_state", service="dicom", member="pacs-b", state="up") == 1.0
    assert {value(page, "hapacs_balance_member_state", service="dicom", member="pacs-b", state=s)
            for s in ("drain", "down", "maint")} == {0.0}
    assert value(page, "hapacs_balance_member_associations", service="dicom", member="pacs-a") == 3
    assert value(page, "hapacs_balance_member_associations_total", service="dicom", member="pacs-b") == 118
    standby = {**balance_with("drain", "down", "maint"),
               "services": [{**balance_with("drain", "down", "maint")["services"][0], "active": False}]}
    page = samples(metrics.render(make_status(balance=standby)))
    assert value(page, "hapacs_balance_active", service="dicom") == 0.0
    for member, state in (("pacs-a", "drain"), ("pacs-b", "down"), ("pacs-c", "maint")):
        assert value(page, "hapacs_balance_member_state", service="dicom", member=member, state=state) == 1.0
        assert value(page, "hapacs_balance_member_state", service="dicom", member=member, state="up") == 0.0
    assert value(page, "hapacs_balance_member_associations", service="dicom", member="pacs-b") == 0
    assert not [n for n, _ in samples(metrics.render(make_status())) if n.startswith("hapacs_balance_")]


def test_direct_mode_members_have_a_state_but_no_association_series():
    page = samples(metrics.render(make_status(balance=DIRECT_BALANCE)))
    assert value(page, "hapacs_balance_member_state", service="dicom", member="pacs-b", state="down") == 1.0
    assert not [n for n, _ in page if n.startswith("hapacs_balance_member_associations")]


def test_page_follows_states_and_peers():
    status = make_status(state="FAULT", master="pacs-b", master_address="192.0.2.12",
                         peers=(dataclasses.replace(make_status().peers[0], state="LOST", last_seen_s=4.0),),
                         vips=tuple(dataclasses.replace(v, held=False) for v in make_status().vips))
    page = samples(metrics.render(status))
    assert value(page, "hapacs_state", state="FAULT") == 1.0 and value(page, "hapacs_state", state="MASTER") == 0.0
    assert value(page, "hapacs_peer_state", peer="pacs-b", state="LOST") == 1.0
    assert value(page, "hapacs_peer_state", peer="pacs-b", state="BACKUP") == 0.0
    assert value(page, "hapacs_vip_held", address="2001:db8::100/64") == 0.0
    assert value(page, "hapacs_master_info", master="pacs-b") == 1.0
    lonely = samples(metrics.render(make_status(master=None, peers=())))
    assert not [n for n, _ in lonely if n in ("hapacs_master_info", "hapacs_peer_state")]


def test_promtool_check_metrics_is_clean_on_a_page(tmp_path):
    server = metrics.MetricsServer(("127.0.0.1", 0), make_status, logging.getLogger("test"))
    for page in (metrics.render(make_status()), metrics.render(make_status(balance=BALANCE)),
                 server.page()):   # the server's adds process_* metrics
        result = subprocess.run([promtool(), "check", "metrics"], input=page, capture_output=True, timeout=30)
        assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
            result.stdout + result.stderr
    # promtool does see problems: a counter without _total is reported.
    bad = b"# HELP hapacs_x A counter.\n# TYPE hapacs_x counter\nhapacs_x 1\n"
    result = subprocess.run([promtool(), "check", "metrics"], input=bad, capture_output=True, timeout=30)
    assert result.returncode != 0 and b"_total" in result.stdout + result.stderr


def test_shipped_rules_pass_promtool_check_and_their_unit_tests():
    checked = subprocess.run([promtool(), "check", "rules", "hapacs-rules.yml"], cwd=RULES, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0 and "SUCCESS: 12 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(), "test", "rules", "hapacs-rules.test.yml"], cwd=RULES,
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    rules = (RULES / "hapacs-rules.yml").read_text()
    tests = (RULES / "hapacs-rules.test.yml").read_text()
    for alert in ("HapacsNoMaster", "HapacsTwoMasters", "HapacsNodeFault", "HapacsCheckDown", "HapacsPeerLost",
                  "HapacsMasterWithoutVip", "HapacsForgedHeartbeats", "HapacsAgentDown", "HapacsTimersLate",
                  "HapacsMisconfiguredPeer", "HapacsBalanceMemberDown", "HapacsEtcdEndpointDown"):
        assert f"alert: {alert}" in rules and f"alertname: {alert}" in tests, alert
    # Every metric the rules use is one the agent serves.
    etcd = {"kind": "etcd", "holder": "pacs-a", "lease_ttl_s": 3, "lease_left_s": 2.0, "endpoints_up": 3,
            "endpoints": 3, "phase": "held", "last_error": None}
    served = {name for name, _ in samples(metrics.render(make_status(misconfigured=(MISCONFIGURED,),
                                                                      balance=BALANCE, authority=etcd)))}
    used = set(re.findall(r"\b(hapacs_[a-z_]+)", rules))
    assert used and used <= served, used - served


def agent_part(page_samples: dict) -> dict:
    """The samples that describe the agent (not the endpoint's own counters, not the process)."""
    return {k: v for k, v in page_samples.items() if not k[0].startswith(("hapacs_metrics_", "process_"))}


# --- the endpoint ----------------------------------------------------------------------------

class Endpoint:
    """A MetricsServer on 127.0.0.1 (any free port) in this test's event loop."""

    def __init__(self, status=None):
        self.status = status or make_status()
        self.calls = 0
        self.log = logging.getLogger("hapacs.metrics.test")

        def read():
            self.calls += 1
            return self.status
        self.server = metrics.MetricsServer(("127.0.0.1", 0), read, self.log)

    async def __aenter__(self):
        await self.server.start()
        self.port = self.server.bound_port
        return self

    async def __aexit__(self, *exc):
        await self.server.stop()

    async def exchange(self, data: bytes, read_all: bool = True) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5) if read_all else b""
        writer.close()
        return answer


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_get_serves_the_page_and_keeps_the_connection_alive():
    async def scenario():
        async with Endpoint() as endpoint:
            reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
            for _ in range(3):
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"version=0.0.4" in head
                assert b'hapacs_state{cluster_id="51",node="pacs-a",state="MASTER"} 1.0' in body
            writer.close()
            head_only = await endpoint.exchange(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n")
            assert head_only.startswith(b"HTTP/1.1 200 OK") and head_only.endswith(b"\r\n\r\n")
            assert endpoint.server.scrapes == 4
            assert endpoint.calls == 1          # four scrapes within SNAPSHOT_TTL_S: one snapshot
    run(scenario())


def test_refuses_writes_and_garbage_changes_nothing_and_logs_little(caplog, monkeypatch):
    async def scenario():
        async with Endpoint() as endpoint:
            before = endpoint.server.page()
            answers = {
                "post": await endpoint.exchange(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nstate"),
                "put": await endpoint.exchange(b"PUT /metrics HTTP/1.1\r\n\r\n"),
                "delete": await endpoint.exchange(b"DELETE /metrics HTTP/1.1\r\n\r\n"),
                "other path": await endpoint.exchange(b"GET /-/reload HTTP/1.1\r\n\r\n"),
                "garbage": await endpoint.exchange(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
                "no version": await endpoint.exchange(b"GET /metrics\r\n\r\n"),
                "bad header": await endpoint.exchange(b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n"),
                "body": await endpoint.exchange(b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
                "huge": await endpoint.exchange(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"),
            }
            for what, answer in answers.items():
                assert answer.split(b"\r\n")[0] in (b"HTTP/1.1 405 Method Not Allowed", b"HTTP/1.1 404 Not Found",
                                                    b"HTTP/1.1 400 Bad Request",
                                                    b"HTTP/1.1 431 Request Header Fields Too Large"), (what, answer)
            assert b"405" in answers["post"] and b"Allow: GET, HEAD" in answers["post"]
            assert b"read only" in answers["put"]
            assert b"404" in answers["other path"] and b"the metrics are at /metrics" in answers["other path"]
            assert b"431" in answers["huge"]
            # A client that closes half way, and a flood of one kind: counted, logged once.
            await endpoint.exchange(b"GET /met", read_all=False)
            for _ in range(50):
                await endpoint.exchange(b"BREW /pot HTTP/1.1\r\n\r\n")
            bad = endpoint.server.bad_requests
            assert bad["method"] == 53 and bad["not_found"] == 1 and bad["malformed"] >= 3 and bad["body"] == 1 \
                and bad["too_large"] == 1, bad
            assert endpoint.server.scrapes == 0
            # Still serving, and nothing changed: the same snapshot renders the same page.
            ok = await endpoint.exchange(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK")
            monkeypatch.setattr(metrics, "SNAPSHOT_TTL_S", 0.0)   # a fresh render, not the cached page
            after = samples(endpoint.server.page())
            assert after[("hapacs_metrics_bad_requests_total",
                          (("cause", "method"), ("cluster_id", "51"), ("node", "pacs-a")))] == 53
            assert agent_part(samples(before)) == agent_part(after)
    with caplog.at_level(logging.WARNING, logger="hapacs.metrics.test"):
        run(scenario())
    method_lines = [r for r in caplog.records if "(method)" in r.getMessage()]
    assert len(method_lines) == 1, [r.getMessage() for r in caplog.records]
    assert not any(r.exc_info for r in caplog.records)


def test_binds_only_where_told_and_a_taken_port_is_an_error():
    async def scenario():
        async with Endpoint() as endpoint:
            # 127.0.0.2 is this host too (all of 127/8 is on lo), but not where the server was told.
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.2", endpoint.port)
            with pytest.raises(OSError):
                await asyncio.open_connection("::1", endpoint.port)
            second = metrics.MetricsServer(("127.0.0.1", endpoint.port), make_status, endpoint.log)
            with pytest.raises(OSError):
                await second.start()
        # IPv6 means IPv6 only: "[::]" would not take IPv4 connections either.
        six = metrics.MetricsServer(("::1", 0), make_status, logging.getLogger("test"))
        await six.start()
        try:
            _, writer = await asyncio.open_connection("::1", six.bound_port)
            writer.close()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", six.bound_port)
        finally:
            await six.stop()
    run(scenario())


def test_sample_config_documents_metrics():
    sample = (REPO / "etc" / "hapacs.yaml").read_text()
    assert "# metrics:" in sample and 'listen: "127.0.0.1:9641"' in sample
    readme = (REPO / "README.md").read_text()
    assert "## Prometheus" in readme and "hapacs-rules.yml" in readme


def test_silent_idle_crowding_and_unread_clients_are_dropped(monkeypatch):
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT_S", 0.2)
    monkeypatch.setattr(metrics, "IDLE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(metrics, "MAX_CONNECTIONS", 3)
    monkeypatch.setattr(metrics, "MAX_UNREAD_BYTES", 100_000)

    async def scenario():
        async with Endpoint() as endpoint:
            # Silent: closed after REQUEST_TIMEOUT_S and counted; idle after a scrape: closed, not counted.
            silent_reader, _ = await asyncio.open_connection("127.0.0.1", endpoint.port)
            assert await asyncio.wait_for(silent_reader.read(), 5) == b""
            idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
            idle_writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            assert (await asyncio.wait_for(idle_reader.read(), 5)).startswith(b"HTTP/1.1 200 OK")
            assert endpoint.server.bad_requests["timeout"] == 1 and endpoint.server.scrapes == 1
            # Crowding: the connection over MAX_CONNECTIONS gets 503 at once.
            held = [await asyncio.open_connection("127.0.0.1", endpoint.port) for _ in range(3)]
            crowded, _ = await asyncio.open_connection("127.0.0.1", endpoint.port)
            assert (await asyncio.wait_for(crowded.read(), 5)).startswith(b"HTTP/1.1 503")
            assert endpoint.server.bad_requests["too_many_connections"] == 1
            for _, writer in held:
                writer.close()
            await until(lambda: not endpoint.server.connections)
            # Pipelined requests whose answers are never read: dropped, not buffered without end.
            reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n" * 3000)
            await writer.drain()
            await until(lambda: endpoint.server.bad_requests["slow_reader"] == 1)
            await until(lambda: not endpoint.server.connections)   # aborted: its buffer is gone
            writer.close()
    run(scenario())


async def until(condition, timeout_s: float = 10.0) -> None:
    """Poll the server's state (on this loop) until `condition` holds; fail after timeout_s."""
    async def poll():
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout_s)
