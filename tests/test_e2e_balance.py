"""Load balancing end to end: real HAProxy started by the agents, real dcmtk storescp members
(forking, as a PACS serves many workstations), real associations from the workstation.

A two-node cluster: the VIP on the MASTER (pacs-a), where HAProxy serves. Held associations
spread leastconn over both PACS; `hapacs drain on` on a member stops new associations
reaching it while its open ones carry on; a member's PACS killed loses no new association
and is out of the rotation within about a second; the status JSON shows it all."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from lab.cluster import AgentCluster
from lab.dicom import HOLD_ASSOCIATIONS_SCRIPT as HOLDER, echo, kill_with_children, start_storescp

from .e2e import VIP, settle
from .fixtures import lab_fixture

PACS_PORT = 11112
HELD = 8


def _need_haproxy():
    assert shutil.which("haproxy"), "the load-balancing tests need HAProxy (Debian: apt install haproxy)"


lab = lab_fixture("lb", before=_need_haproxy)


def balance_config(check_interval: float = 0.2, **extra) -> dict:
    return {**extra, "services": [{"name": "dicom", "address": VIP, "port": 104, "target_port": PACS_PORT,
                          "schedule": "leastconn", "health": "pacs-dicom"}],
            "check_interval": check_interval}


CHECK = [{"name": "pacs-dicom", "type": "dicom-echo", "port": PACS_PORT, "called_ae": "PACS",
          "interval": 0.2, "timeout": 1.0, "fall": 2, "rise": 2}]


def members(cluster, host: str) -> dict[str, dict]:
    status = cluster.status(host) or {}
    services = status.get("balance", {}).get("services", [])
    return {m["name"]: m for m in services[0]["members"]} if services else {}


def states(cluster, host: str) -> dict[str, str]:
    return {name: m["state"] for name, m in members(cluster, host).items()}


def echoes(lab, count: int) -> list[bool]:
    return [echo(lab.ns("ws"), VIP, 104, called_ae="PACS", timeout=2.0) for _ in range(count)]


def haproxy_pid(cluster, host: str) -> int:
    """The HAProxy master's PID from its pid file.

    HAProxy truncates and rewrites the file when it reloads, so an empty read
    is waited out (a deadline, not a sleep) rather than taken as an answer."""
    path = Path(cluster.dir, f"{host}-state", "haproxy", "haproxy.pid")
    found: list[int] = []

    def written() -> bool:
        words = path.read_text().split() if path.exists() else []
        found[:] = [int(words[0])] if words else []
        return bool(found)

    cluster.lab.wait_for(written, 5, what=f"{path} written")
    return found[0]


def holder_lines(path: str) -> list[str]:
    with open(path) as handle:
        return handle.read().splitlines()


def test_associations_spread_drain_and_a_dead_member(lab):
    pacs = {host: start_storescp(lab, lab.ns(host), port=PACS_PORT, aet="PACS", fork=True) for host in "ab"}
    cluster = AgentCluster(lab, checks={"a": CHECK, "b": CHECK})
    for host, priority in (("a", 150), ("b", 100)):
        cluster.add(host, priority, balance=balance_config())
    cluster.start_all()
    try:
        settle(lab, cluster, "a", timeout=15)
        lab.wait_for(lambda: states(cluster, "a") == {"pacs-a": "up", "pacs-b": "up"}, 10,
                     what="HAProxy on pacs-a sees both PACS up")
        status_a, status_b = cluster.status("a"), cluster.status("b")
        assert status_a["balance"]["mode"] == "proxy" and status_a["balance"]["active"] is True
        assert status_b["balance"]["active"] is False      # HAProxy runs there too, hot standby
        assert members(cluster, "a")["pacs-b"]["address"] == "192.0.2.12"

        # Held associations spread leastconn: neither PACS has more than one above the other.
        output = Path(lab.mkdtemp("holder")) / "out"
        with open(output, "w") as out:
            holder = lab.spawn("ws", [sys.executable, HOLDER, VIP, "104", str(HELD)], stdout=out, stderr=out)
        lab.wait_for(lambda: f"established {HELD} of {HELD}" in holder_lines(output), 20,
                     what=f"{HELD} associations held through the VIP")
        lab.wait_for(lambda: sum(m["associations"] for m in members(cluster, "a").values()) == HELD, 5,
                     what="the status JSON counts the held associations")
        held = {name: m["associations"] for name, m in members(cluster, "a").items()}
        assert abs(held["pacs-a"] - held["pacs-b"]) <= 1, held

        # Drain pacs-b: no new association reaches it; its open ones carry on.
        drained = cluster.cli("b", "drain", "on")
        assert drained.returncode == 0 and "drain on" in drained.stdout, drained.stderr
        lab.wait_for(lambda: states(cluster, "a")["pacs-b"] == "drain", 5, what="pacs-b draining")
        total_b = members(cluster, "a")["pacs-b"]["total"]
        assert all(echoes(lab, 4))
        assert members(cluster, "a")["pacs-b"]["total"] == total_b
        lab.kill(holder, signal.SIGUSR1)
        lab.wait_for(lambda: f"echo {HELD} of {HELD}" in holder_lines(output), 10,
                     what="every held association still answers C-ECHO")
        assert cluster.cli("b", "drain", "off").returncode == 0
        lab.wait_for(lambda: states(cluster, "a")["pacs-b"] == "up", 5, what="pacs-b back in the rotation")

        # pacs-b's PACS dies (its listener and its children): associations that had reached it are
        # lost, but every new one succeeds, and it is out of the rotation within about a second.
        lab.stop(holder)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            during = pool.submit(echoes, lab, 8)
            kill_with_children(lab, pacs["b"])
            killed = time.monotonic()
            lab.wait_for(lambda: states(cluster, "a")["pacs-b"] == "down", 5, what="pacs-b down in HAProxy")
            print(f"pacs-b's PACS out of the rotation {time.monotonic() - killed:.2f} s after the kill")
            assert all(during.result(timeout=60))
        total_b = members(cluster, "a")["pacs-b"]["total"]
        assert all(echoes(lab, 4))
        assert members(cluster, "a")["pacs-b"]["total"] == total_b

        # pacs-b's PACS back (its node left FAULT); then HAProxy dies on the MASTER: pacs-a goes to
        # FAULT, pacs-b's HAProxy serves the VIP; pacs-a's agent starts HAProxy again and leaves FAULT.
        start_storescp(lab, lab.ns("b"), port=PACS_PORT, aet="PACS", fork=True)
        lab.wait_for(lambda: cluster.state("b") == "BACKUP" and states(cluster, "a")["pacs-b"] == "up"
                     and states(cluster, "b") == {"pacs-a": "up", "pacs-b": "up"}, 10, what="pacs-b healthy again")
        os.kill(haproxy_pid(cluster, "a"), signal.SIGKILL)
        settle(lab, cluster, "b", timeout=10)
        assert any("HAProxy exited" in t["reason"] for t in cluster.transitions("a"))
        # pacs-a's PACS is fine: its agent keeps saying so while pacs-a is in FAULT for its HAProxy alone.
        lab.hold_for(lambda: states(cluster, "b") == {"pacs-a": "up", "pacs-b": "up"}, 1.0,
                     what="pacs-b's HAProxy sees both PACS up")
        assert all(echoes(lab, 3))
        lab.wait_for(lambda: cluster.state("a") in ("BACKUP", "MASTER"), 10, what="pacs-a out of FAULT")

        # The agent killed outright: its HAProxy does not outlive it.
        orphan = haproxy_pid(cluster, "b")
        cluster.kill("b", signal.SIGKILL)
        lab.wait_for(lambda: not Path(f"/proc/{orphan}").exists(), 5, what="pacs-b's HAProxy gone with its agent")
    finally:
        print(cluster.logs())


def test_an_agent_whose_haproxy_cannot_start_does_not_start_and_claims_no_vip(lab):
    """Port 104 of the VIP taken by another program: HAProxy refuses to bind, the agent stops."""
    start_storescp(lab, lab.ns("a"), port=PACS_PORT, aet="PACS", fork=True)
    cluster = AgentCluster(lab, checks={"a": CHECK})
    cluster.add("a", 150, balance=balance_config(members=[{"address": "192.0.2.11"}]))
    squatter = lab.spawn("a", [sys.executable, "-c", "import socket, time; s = socket.socket(); "
                               "s.setsockopt(socket.SOL_IP, 19, 1); s.bind(('192.0.2.100', 104)); s.listen(); "
                               "time.sleep(60)"])   # 19: IP_TRANSPARENT, to bind an address not (yet) here
    lab.wait_for(lambda: "192.0.2.100:104" in lab.exec("a", ["ss", "-Htln"]).stdout, 5, what="port taken")
    proc = cluster.start("a")
    assert proc.wait(timeout=30) == 1
    log = cluster.logs()
    assert "cannot start: balance: HAProxy" in log, log
    assert lab.holders(VIP) == []
    lab.stop(squatter)


def test_reload_reloads_haproxy_in_place_and_agent_port_needs_a_restart(lab):
    start_storescp(lab, lab.ns("a"), port=PACS_PORT, aet="PACS", fork=True)
    cluster = AgentCluster(lab, checks={"a": CHECK})
    cluster.add("a", 150, balance=balance_config(members=[{"address": "192.0.2.11"}]))
    cluster.start_all()
    try:
        settle(lab, cluster, "a", timeout=15)
        lab.wait_for(lambda: states(cluster, "a") == {"pacs-a": "up"}, 10, what="pacs-a up in HAProxy")
        pid = haproxy_pid(cluster, "a")
        cluster.specs["a"].extra["balance"]["services"][0]["schedule"] = "roundrobin"
        cluster.write("a")
        reloaded = cluster.cli("a", "reload")
        assert reloaded.returncode == 0 and "balance changed (HAProxy reloaded)" in reloaded.stdout, reloaded.stderr
        cfg = Path(cluster.dir, "a-state", "haproxy", "haproxy.cfg").read_text()
        assert "balance roundrobin" in cfg and haproxy_pid(cluster, "a") == pid
        lab.wait_for(lambda: states(cluster, "a") == {"pacs-a": "up"}, 10, what="the new worker serving")
        assert all(echoes(lab, 2))

        cluster.specs["a"].extra["balance"]["agent_port"] = 5500
        cluster.write("a")
        refused = cluster.cli("a", "reload")
        assert refused.returncode == 1 and "changing balance.agent_port needs a restart" in refused.stderr
        drain = cluster.cli("a", "drain", "maybe")
        assert drain.returncode == 2 and "invalid choice: 'maybe'" in drain.stderr
    finally:
        print(cluster.logs())
