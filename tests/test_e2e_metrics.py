"""Prometheus end to end: a real Prometheus (Debian's) on the workstation scrapes a live
two-node cluster in namespaces, its query API shows the MASTER before and after a failover,
and the shipped alert rules evaluate on the live series. The endpoint binds only where told,
refuses writes and garbage, and changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import yaml

from lab.cluster import AgentCluster

from .e2e import VIP, settle
from .fixtures import lab_fixture

ROOT = Path(__file__).resolve().parent.parent
PROBE = str(ROOT / "lab" / "httpprobe.py")
RULES = ROOT / "etc" / "prometheus" / "hapacs-rules.yml"
PORT = 9641
PROMETHEUS = "http://127.0.0.1:9090"      # inside the workstation namespace


def _need_prometheus():
    missing = [t for t in ("prometheus", "promtool") if not shutil.which(t)]
    assert not missing, f"install the Debian package prometheus (missing: {', '.join(missing)})"


lab = lab_fixture("pm", before=_need_prometheus)


def probe(lab, where: str, *args: str, timeout: float = 20) -> dict:
    completed = lab.exec(where, [sys.executable, PROBE, *args], timeout=timeout)
    return json.loads(completed.stdout)


def start_prometheus(lab, targets: list[str]):
    directory = lab.mkdtemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "hapacs", "static_configs": [{"targets": targets}]}],
    }
    path = os.path.join(directory, "prometheus.yml")
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    log = open(os.path.join(directory, "prometheus.log"), "w")
    proc = lab.spawn("ws", ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={directory}/data",
                            "--web.listen-address=127.0.0.1:9090"], stdout=log, stderr=log)
    log.close()
    lab.wait_for(lambda: probe(lab, "ws", "get", f"{PROMETHEUS}/-/ready")["status"] == 200, 20,
                 interval=0.3, what="Prometheus ready")
    return proc, os.path.join(directory, "prometheus.log")


def masters_seen_by_prometheus(lab) -> list[str]:
    answer = probe(lab, "ws", "query", PROMETHEUS, 'hapacs_state{state="MASTER"} == 1')
    return sorted(series["metric"]["node"] for series in answer["result"])


def firing_or_pending(lab, alert: str) -> list[dict]:
    return [a for a in probe(lab, "ws", "alerts", PROMETHEUS)["alerts"] if a["labels"]["alertname"] == alert]


def test_prometheus_scrapes_the_cluster_and_follows_a_failover(lab):
    cluster = AgentCluster(lab)
    for host, priority in (("a", 150), ("b", 100)):
        cluster.add(host, priority, metrics={"listen": f"{lab.node(host).ipv4}:{PORT}"})
    cluster.start_all()
    targets = [f"{lab.node(h).ipv4}:{PORT}" for h in ("a", "b")]
    prometheus, prometheus_log = start_prometheus(lab, targets)
    try:
        settle(lab, cluster, "a")
        lab.wait_for(lambda: masters_seen_by_prometheus(lab) == ["pacs-a"], 20, interval=0.5,
                     what="Prometheus sees pacs-a as the MASTER")
        up = probe(lab, "ws", "query", PROMETHEUS, 'up{job="hapacs"}')["result"]
        assert sorted((s["metric"]["instance"], s["value"][1]) for s in up) == [(t, "1") for t in targets]
        held = probe(lab, "ws", "query", PROMETHEUS, "hapacs_vip_held == 1")["result"]
        assert [(s["metric"]["node"], s["metric"]["address"]) for s in held] == [("pacs-a", "192.0.2.100/24")]
        # An evaluation that ran before pacs-a's first MASTER sample was scraped leaves HapacsNoMaster
        # pending until the next one (1 s): wait out the evaluations of the start, then hold.
        def no_master_alert() -> bool:
            return not firing_or_pending(lab, "HapacsNoMaster") and not firing_or_pending(lab, "HapacsTwoMasters")
        lab.wait_for(no_master_alert, 3, interval=0.25, what="no HapacsNoMaster/TwoMasters once pacs-a is MASTER")
        lab.hold_for(no_master_alert, 2.0, what="no HapacsNoMaster/TwoMasters while pacs-a is MASTER")

        cluster.kill("a", signal.SIGKILL)
        settle(lab, cluster, "b")
        lab.wait_for(lambda: masters_seen_by_prometheus(lab) == ["pacs-b"], 20, interval=0.5,
                     what="Prometheus sees pacs-b as the MASTER after the failover")
        reasons = probe(lab, "ws", "query", PROMETHEUS,
                        'hapacs_transitions_total{node="pacs-b",reason="master-down"}')["result"]
        assert [s["value"][1] for s in reasons] == ["1"]
        # The shipped rules run on the live series: pacs-b has lost its peer (pending: for 10 s).
        lab.wait_for(lambda: any(a["labels"].get("peer") == "pacs-a" for a in firing_or_pending(lab, "HapacsPeerLost")),
                     15, interval=0.5, what="HapacsPeerLost for pacs-a, pending or firing")
    finally:
        lab.stop(prometheus)
        print(cluster.logs())
        with open(prometheus_log) as handle:
            print(handle.read()[-3000:])


def test_endpoint_binds_where_told_is_read_only_and_shrugs_off_garbage(lab):
    cluster = AgentCluster(lab)
    cluster.add("a", 150, metrics={"listen": f"192.0.2.11:{PORT}"})
    cluster.add("b", 100)
    cluster.start_all()
    try:
        settle(lab, cluster, "a")
        url = f"http://192.0.2.11:{PORT}/metrics"
        page = probe(lab, "ws", "get", url)
        assert page["status"] == 200 and page["headers"]["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'hapacs_state{cluster_id="51",node="pacs-a",state="MASTER"} 1.0' in page["body"]
        # Bound to 192.0.2.11 only: not on the VIP, not on loopback, not on IPv6, though all are this host's.
        listening = lab.exec("a", ["ss", "-Htln", f"sport = :{PORT}"]).stdout.split()
        assert f"192.0.2.11:{PORT}" in listening and len([w for w in listening if w.endswith(f":{PORT}")]) == 1
        for elsewhere, where in ((f"http://{VIP}:{PORT}/metrics", "ws"), (f"http://127.0.0.1:{PORT}/metrics", "a"),
                                 (f"http://[2001:db8::11]:{PORT}/metrics", "ws")):
            refused = probe(lab, where, "get", elsewhere)
            assert refused["status"] is None and "refused" in refused["error"], (elsewhere, refused)
        # Writes are refused and change nothing.
        before = cluster.status("a")
        for method in ("POST", "PUT", "DELETE"):
            answer = probe(lab, "ws", "get", url, method)
            assert answer["status"] == 405 and answer["headers"]["Allow"] == "GET, HEAD", (method, answer)
        # Garbage, bounded: 200 requests of four kinds.
        kinds = [b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" * 4, b"GET /../../etc/shadow HTTP/1.1\r\n\r\n",
                 b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 10000 + b"\r\n\r\n", b"\r\n\r\n"]
        for data in kinds:
            answers = probe(lab, "ws", "raw", "192.0.2.11", str(PORT), data.hex(), "50")["answers"]
            assert len(answers) == 50 and not any(a.startswith("HTTP/1.1 200") for a in answers), answers[:3]
        after = cluster.status("a")
        assert after["state"] == "MASTER" and after["priority"] == before["priority"]
        assert after["counters"]["transitions"] == before["counters"]["transitions"]
        assert after["maintenance"] is False and after["vips"] == before["vips"]
        assert probe(lab, "ws", "get", url)["status"] == 200
        lab.wait_for(lambda: 'hapacs_metrics_bad_requests_total{cause="method",cluster_id="51",node="pacs-a"} 3.0'
                     in probe(lab, "ws", "get", url)["body"], 5, interval=0.2, what="refusals counted")
        with open(cluster.log_path("a")) as handle:
            refusals = [line for line in handle if "metrics: refused" in line]
        # At most one line per cause every 10 s: the flood does not flood the log.
        assert 1 <= len(refusals) <= 8, refusals
        assert "Traceback" not in open(cluster.log_path("a")).read()

        # Moving the endpoint needs a restart: a reload that tries is refused and changes nothing.
        cluster.specs["a"].extra["metrics"] = {"listen": f"192.0.2.11:{PORT + 1}"}
        cluster.write("a")
        reload = cluster.cli("a", "reload")
        assert reload.returncode == 1 and "changing metrics.listen needs a restart" in reload.stderr, reload
        assert probe(lab, "ws", "get", url)["status"] == 200

        # A planned release shows as a drain and as transitions by reason, on both nodes.
        assert cluster.cli("a", "release", "--drain-timeout", "2").returncode == 0
        settle(lab, cluster, "b")

        def counted(body: str) -> bool:
            return ('hapacs_drains_total{cluster_id="51",node="pacs-a"} 1.0' in body
                    and 'hapacs_transitions_total{cluster_id="51",node="pacs-a",reason="handed-over"} 1.0' in body
                    and 'hapacs_state{cluster_id="51",node="pacs-a",state="BACKUP"} 1.0' in body)
        lab.wait_for(lambda: counted(probe(lab, "ws", "get", url)["body"]), 5, interval=0.2,
                     what="the release in pacs-a's metrics")
        assert cluster.status("b")["transitions_by_reason"].get("handover-to-me") == 1
    finally:
        print(cluster.logs())


def test_a_taken_metrics_port_stops_the_agent_with_a_clear_message(lab):
    blocker = lab.spawn("a", [sys.executable, "-c", "import socket, time\n"
                              "s = socket.socket(); s.bind(('192.0.2.11', 9641)); s.listen(); time.sleep(60)"])
    lab.wait_for(lambda: ":9641" in lab.exec("a", ["ss", "-Htln"]).stdout, 10, what="the port taken")
    cluster = AgentCluster(lab)
    cluster.add("a", 150, metrics={"listen": f"192.0.2.11:{PORT}"})
    proc = cluster.start("a")
    try:
        assert proc.wait(30) == 1
        with open(cluster.log_path("a")) as handle:
            log = handle.read()
        assert "cannot start: cannot listen for metrics on 192.0.2.11:9641 (metrics.listen): Address already in use" \
            in log, log
        assert lab.holders(VIP) == []
    finally:
        lab.stop(blocker)
