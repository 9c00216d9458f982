"""Health checks end to end: real agents, real DICOM servers (dcmtk storescp, Orthanc),
a real small file system. The VIP follows the healthy PACS."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

from lab.cluster import AgentCluster
from lab.dicom import start_orthanc, start_storescp

from .e2e import HOLD_ASSOCIATION, assert_served, settle
from .fixtures import lab_fixture

ECHO = {"name": "pacs-dicom", "type": "dicom-echo", "port": 104, "called_ae": "PACS",
        "interval": 0.2, "timeout": 0.5, "fall": 2, "rise": 2}


lab = lab_fixture("hc")


def cluster_with(lab, checks_a, checks_b=None, **kwargs) -> AgentCluster:
    cluster = AgentCluster(lab, checks={"a": checks_a, "b": checks_b or []}, **kwargs)
    cluster.add("a", 150)
    cluster.add("b", 100)
    return cluster


def check_of(cluster, host, name) -> dict:
    return next(c for c in cluster.status(host)["checks"] if c["name"] == name)


def shell_script(directory: str, name: str, body: str) -> str:
    """An executable /bin/sh script `name` with `body` in `directory` (a lab.mkdtemp, removed at teardown)."""
    path = os.path.join(directory, name)
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\n" + body)
    os.chmod(path, stat.S_IRWXU)
    return path


def test_pacs_killed_on_master_vip_moves_and_returns_after_rise(lab):
    scp = {h: start_storescp(lab, lab.ns(h), port=104, aet="PACS") for h in ("a", "b")}
    cluster = cluster_with(lab, [ECHO], [ECHO], preempt_delay=0.5)
    cluster.start_all()
    try:
        settle(lab, cluster, "a")
        lab.stop(scp["a"], timeout=1.0)
        lab.wait_for(lambda: cluster.state("a") == "FAULT", 5, what="a FAULT")
        settle(lab, cluster, "b")
        assert_served(lab, "b")
        status = cluster.status("a")
        assert "pacs-dicom" in status["faults"][0] and "connection refused" in status["faults"][0]
        assert check_of(cluster, "a", "pacs-dicom")["ok"] is False
        # The archive comes back: up after `rise` successes, then preempt returns the VIP.
        start_storescp(lab, lab.ns("a"), port=104, aet="PACS")
        lab.wait_for(lambda: check_of(cluster, "a", "pacs-dicom")["ok"] is True, 5, what="check up again")
        settle(lab, cluster, "a")
        assert_served(lab, "a")
    finally:
        print(cluster.logs())


def test_hung_pacs_sigstop_is_a_failure_after_the_timeout(lab):
    scp = {h: start_storescp(lab, lab.ns(h), port=104, aet="PACS") for h in ("a", "b")}
    cluster = cluster_with(lab, [ECHO], [ECHO])
    cluster.start_all()
    try:
        settle(lab, cluster, "a")
        scp["a"].send_signal(signal.SIGSTOP)
        try:
            settle(lab, cluster, "b", timeout=6)
            assert cluster.state("a") == "FAULT"
            message = check_of(cluster, "a", "pacs-dicom")["message"]
            assert "0.5 s" in message or "no answer" in message or "timed out" in message, message
            # Heartbeats kept their rhythm while the check hung: no false loss of a peer.
            assert cluster.status("b")["counters"]["peers_lost"] == 0
        finally:
            scp["a"].send_signal(signal.SIGCONT)
        assert_served(lab, "b")
    finally:
        print(cluster.logs())


def test_dicom_find_against_orthanc_moves_vip_when_orthanc_dies(lab):
    find = {"name": "pacs-db", "type": "dicom-find", "port": 4242, "called_ae": "ORTHANC",
            "interval": 0.2, "timeout": 1.0, "fall": 2, "rise": 2}
    orthanc = start_orthanc(lab, lab.ns("a"), dicom_port=4242, http_port=8042)
    start_orthanc(lab, lab.ns("b"), dicom_port=4242, http_port=8042)
    cluster = cluster_with(lab, [find], [find])
    cluster.start_all()
    try:
        settle(lab, cluster, "a", timeout=15)
        assert check_of(cluster, "a", "pacs-db")["message"].startswith("C-FIND ok")
        orthanc.send_signal(signal.SIGKILL)
        lab.wait_for(lambda: cluster.state("a") == "FAULT", 5, what="a FAULT")
        settle(lab, cluster, "b")
        assert lab.holders("192.0.2.100") == ["b"]
    finally:
        print(cluster.logs())


def test_disk_check_on_a_full_file_system(lab):
    mount = lab.mkdtemp("archive")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "hapacs-test", mount], check=True)
    try:
        disk = {"name": "archive-disk", "type": "disk", "path": mount, "min_free_percent": 50,
                "interval": 0.2, "timeout": 1.0, "fall": 2, "rise": 2}
        cluster = cluster_with(lab, [disk])
        cluster.start_all()
        try:
            settle(lab, cluster, "a")
            with open(os.path.join(mount, "filler"), "wb") as handle:
                handle.write(b"\0" * (700 * 1024))     # 70% used: under 50% free
            lab.wait_for(lambda: cluster.state("a") == "FAULT", 5, what="a FAULT on a full disk")
            settle(lab, cluster, "b")
            assert "free" in check_of(cluster, "a", "archive-disk")["message"]
        finally:
            print(cluster.logs())
            cluster.kill("a", signal.SIGTERM)
    finally:
        subprocess.run(["umount", "-l", mount], check=False)


def test_flapping_check_does_not_flap_the_vip(lab):
    directory = lab.mkdtemp("flap")
    state_file = os.path.join(directory, "count")
    # Alternates: success, failure, success, ... never two failures in a row.
    script = shell_script(directory, "flap.sh",
                          f"n=$(cat {state_file} 2>/dev/null || echo 0)\necho $((n+1)) > {state_file}\n"
                          "[ $((n % 2)) -eq 0 ] && { echo ok; exit 0; }\necho flap; exit 1\n")
    flap = {"name": "flappy", "type": "script", "command": [script], "interval": 0.1, "timeout": 1.0,
            "fall": 2, "rise": 2}
    cluster = cluster_with(lab, [flap])
    cluster.start_all()
    try:
        settle(lab, cluster, "a")
        transitions = len(cluster.transitions("a"))
        lab.hold_for(lambda: cluster.state("a") == "MASTER" and len(cluster.transitions("a")) == transitions,
                     3.0, what="a stays MASTER while its check flaps")
        # It really ran, and really flapped. The script may be rewriting the count (`>` empties the
        # file first, then writes): an empty read is waited out, not taken as an answer.
        def runs() -> int:
            with open(state_file) as handle:
                text = handle.read().strip()
            return int(text) if text.isdigit() else 0
        lab.wait_for(lambda: runs() >= 10, 2, what="the flapping check ran at least 10 times")
    finally:
        print(cluster.logs())


def test_negative_weight_on_the_master_hands_over_drained_to_a_healthier_backup(lab):
    # README: "weight: -N: while it is down the node's priority is N lower, so a healthier BACKUP
    # with preempt takes over through a drained handover". a is MASTER and healthy first; then its
    # DICOMweb service (a second storescp standing in) dies while a viewer keeps an association open.
    web = start_storescp(lab, lab.ns("a"), port=8080, aet="WEB")
    start_storescp(lab, lab.ns("a"), port=104, aet="PACS")
    soft = {"name": "dicomweb", "type": "tcp", "host": "127.0.0.1", "port": 8080, "interval": 0.2,
            "timeout": 0.5, "fall": 2, "rise": 2, "weight": -100}
    cluster = AgentCluster(lab, checks={"a": [soft]}, preempt_delay=0.5)
    cluster.add("a", 150, handover={"drain_ports": [104], "drain_timeout": 1.5})
    cluster.add("b", 100)
    cluster.start_all()
    viewer_log = os.path.join(lab.tmpdir, "viewer")
    try:
        settle(lab, cluster, "a", timeout=10)
        assert cluster.status("a")["effective_priority"] == 150
        viewer = lab.spawn("ws", [sys.executable, "-c", HOLD_ASSOCIATION, "192.0.2.100"],
                           env={"PYTHONPATH": os.getcwd()}, stdout=open(viewer_log, "w"))
        lab.wait_for(lambda: "established" in open(viewer_log).read(), 10, what="a viewer's association open")
        lab.stop(web, timeout=1.0)
        lab.wait_for(lambda: cluster.status("a")["effective_priority"] == 50, 5, what="a's priority 150 - 100")
        settle(lab, cluster, "b", timeout=10)
        status = cluster.status("a")
        assert status["state"] == "BACKUP" and status["priority"] == 150 and status["faults"] == []
        assert status["transitions"][-1]["code"] == "handed-over", status["transitions"][-1]
        assert cluster.transitions("b")[-1]["code"] == "handover-to-me"
        # Drained: it waited for the open association (up to drain_timeout), then cut it.
        drain = status["last_drain"]
        assert drain is not None and drain["open_at_start"] == 1 and drain["cut"] == 1, drain
        assert drain["waited_s"] >= 1.4, drain
        lab.stop(viewer)
    finally:
        print(cluster.logs())


def test_weight_zero_check_down_gives_fault_even_alone(lab):
    dead = {"name": "pacs-port", "type": "tcp", "host": "127.0.0.1", "port": 9, "interval": 0.2,
            "timeout": 0.5, "fall": 2, "rise": 2, "weight": 0}
    cluster = AgentCluster(lab, checks={"a": [dead]})
    cluster.add("a", 150)
    cluster.start_all()
    try:
        lab.wait_for(lambda: cluster.state("a") == "FAULT", 5, what="a FAULT")
        lab.hold_for(lambda: cluster.state("a") == "FAULT" and not lab.holders("192.0.2.100"), 1.0,
                     what="FAULT holds no VIP")
        assert lab.holders("192.0.2.100") == []
    finally:
        print(cluster.logs())


def test_a_node_does_not_become_master_before_its_checks_gave_a_first_result(lab):
    # README: "At start, a node does not become MASTER before its checks have given a first
    # result." Alone, a would be MASTER 0.3 s after start; its check takes 2 s to answer.
    script = shell_script(lab.mkdtemp("slow"), "slow.sh", "sleep 2\necho ok\n")
    slow = {"name": "slow-pacs", "type": "script", "command": [script], "interval": 0.5, "timeout": 5.0,
            "fall": 2, "rise": 2}
    cluster = AgentCluster(lab, checks={"a": [slow]})
    cluster.add("a", 150)
    cluster.start_all()
    held: list[str] = []

    def not_master_while_pending() -> bool:
        status = cluster.status("a")
        if status is None or status["checks"][0]["ok"] is not None:
            return True
        held.append(status["state"])
        return status["state"] != "MASTER"

    try:
        lab.wait_for(lambda: cluster.status("a") is not None, 10, what="a answering")
        lab.hold_for(not_master_while_pending, 1.5, what="a not MASTER while its check is pending")
        assert "BACKUP" in held, held     # it listened past its 0.3 s and was held back, not still starting
        lab.wait_for(lambda: cluster.state("a") == "MASTER", 5, what="a MASTER once the check passed")
        status = cluster.status("a")
        # Both ages are taken at the same instant: the check was up before a became MASTER.
        assert status["transitions"][-1]["to"] == "MASTER" and status["checks"][0]["ok"] is True
        assert status["checks"][0]["since_s"] >= status["since_s"] - 0.002, status
    finally:
        print(cluster.logs())


def test_a_reload_that_removes_every_check_frees_a_node_waiting_for_their_first_result(lab):
    # Shape issue, behaviour 2: a's only check never answers (its probe sleeps past the test);
    # a is held back, as it should be. The operator removes the check and reloads: nothing is
    # left to wait for, so a must become MASTER, not stay held until a restart.
    script = shell_script(lab.mkdtemp("hang"), "hang.sh", "sleep 60\n")
    hanging = {"name": "never-answers", "type": "script", "command": [script], "interval": 30, "timeout": 50}
    cluster = AgentCluster(lab, checks={"a": [hanging]})
    cluster.add("a", 150)
    cluster.start_all()
    try:
        lab.wait_for(lambda: cluster.state("a") == "BACKUP", 10, what="a listening, held by its pending check")
        lab.hold_for(lambda: cluster.state("a") == "BACKUP", 1.0, what="a held while its check is pending")
        cluster.checks = {}
        cluster.write("a")
        reload = cluster.cli("a", "reload")
        assert reload.returncode == 0, reload.stderr
        lab.wait_for(lambda: cluster.state("a") == "MASTER", 5, what="a MASTER once no check is left")
        assert cluster.status("a")["checks"] == []
    finally:
        print(cluster.logs())
