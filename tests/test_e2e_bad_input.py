"""Input the agent cannot read, sent to live agents in namespaces: counted, refused, logged
at a limited rate, never a traceback.

- SNMP: 3000 random 100-byte datagrams from the workstation to a node's port 161. Each
  is counted in status `bad_requests.snmp`, the log grows by a few lines (not one
  traceback per datagram), and real SNMP requests are still answered and not counted.
- Control socket: a request nested 60,000 deep, one of a megabyte, and one that is
  not JSON are each answered "bad request" (no "internal error"), counted in
  `bad_requests.control`, and logged without a traceback.
- One peer list copied to every node (each node's own address in `cluster.peers`):
  each node skips its own entry, says so once at INFO, does not send heartbeats to
  itself (so does not count them as received), and never warns about a host with
  its own name.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys

from lab.cluster import AgentCluster

from .e2e import settle
from .fixtures import lab_fixture

A, B, WS = "192.0.2.11", "192.0.2.12", "192.0.2.200"
BURST = 3000
DATAGRAM_BYTES = 100
LOG_LINES_ALLOWED = 100
SNMP = {"listen": ["0.0.0.0:161"], "community": "public"}

# Sent from the workstation: bounded in count and in time; paced in batches so that the
# kernel's receive buffer, not the agent, is never what limits the count.
GARBAGE_SENDER = """
import random, socket, sys, time
host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(161)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
deadline = time.monotonic() + 20
sent = 0
while sent < count and time.monotonic() < deadline:
    for _ in range(min(100, count - sent)):
        sock.sendto(rng.randbytes(size), (host, port))
        sent += 1
    time.sleep(0.01)
print(sent)
"""


lab = lab_fixture("ms", hosts=("a", "b"))


def log_text(cluster, host) -> str:
    with open(cluster.log_path(host)) as handle:
        return handle.read()


def snmp_get(lab, oid="1.3.6.1.2.1.1.5.0"):
    assert shutil.which("snmpget"), "install the Debian package snmp (snmpget)"
    directory = lab.mkdtemp("snmp-client")
    return lab.exec("ws", ["env", f"SNMP_PERSISTENT_DIR={directory}", "snmpget", "-v2c", "-c", "public",
                           "-t", "1", "-r", "2", A, oid], check=False, timeout=15)


def test_snmp_garbage_burst_is_counted_and_logged_a_few_times(lab):
    cluster = AgentCluster(lab)
    cluster.add("a", 150, snmp=SNMP)
    cluster.start_all()
    lab.wait_for(lambda: cluster.state("a") == "MASTER", 15, what="a MASTER")
    lab.wait_for(lambda: snmp_get(lab).returncode == 0, 15, what="a answers SNMP")
    status = cluster.status("a")
    assert status["bad_requests"]["snmp"] == 0, "a valid GET is not a bad request"
    lines_before = len(log_text(cluster, "a").splitlines())

    sent = lab.exec("ws", [sys.executable, "-c", GARBAGE_SENDER, A, "161", str(BURST), str(DATAGRAM_BYTES)],
                    timeout=40)
    assert int(sent.stdout) == BURST
    lab.wait_for(lambda: cluster.status("a")["bad_requests"]["snmp"] == BURST, 30,
                 what=f"all {BURST} datagrams counted as bad SNMP requests")

    text = log_text(cluster, "a")
    added = text.splitlines()[lines_before:]
    assert len(added) < LOG_LINES_ALLOWED, f"{len(added)} log lines for {BURST} datagrams:\n" + "\n".join(added[:40])
    assert "Traceback" not in text and " ERROR " not in text, "\n".join(added[:40])
    assert any(f"SNMP: dropped a datagram from {WS}" in line for line in added), "\n".join(added[:40])

    answer = snmp_get(lab)
    assert answer.returncode == 0 and "pacs-a" in answer.stdout, answer.stderr
    status = cluster.status("a")
    assert status["bad_requests"]["snmp"] == BURST, "the real request after the burst is not counted"
    assert status["state"] == "MASTER"


def control_exchange(path: str, payload: bytes, timeout_s: float = 20.0) -> dict:
    """Send raw bytes to the control socket and return the reply (the agent must answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def test_control_socket_refuses_deep_huge_and_garbage_requests_as_bad_requests(lab):
    cluster = AgentCluster(lab)
    cluster.add("a", 150)
    cluster.start_all()
    lab.wait_for(lambda: cluster.state("a") == "MASTER", 15, what="a MASTER")
    path = cluster.socket_path("a")
    requests = {
        "deep": (b"[" * 60000 + b"\n", "nested deeper"),
        "deep object": (b'{"command": "status", "x": ' + b'{"y": ' * 30000 + b"1" + b"}" * 30000 + b"}\n",
                        "longer than"),
        "huge": (b'{"command": "status", "x": "' + b"a" * 1_000_000 + b'"}\n', "longer than"),
        "not json": (b"status please\n", "not JSON"),
    }
    for name, (payload, expected) in requests.items():
        reply = control_exchange(path, payload)
        assert reply["ok"] is False and reply["message"].startswith("bad request: "), (name, reply)
        assert expected in reply["message"], (name, reply)
    # Connecting and closing without a word (how a second agent sees that one runs) is no bad request.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(path)
    # The nesting check itself, under the size limit: 30,000 deep in 60 kB.
    reply = control_exchange(path, b'{"command": "status", "x": ' + b"[" * 30000 + b"]" * 30000 + b"}\n")
    assert reply["ok"] is False and "nested deeper" in reply["message"], reply

    status = cluster.status("a")
    assert status["bad_requests"]["control"] == len(requests) + 1
    assert status["state"] == "MASTER"
    text = log_text(cluster, "a")
    assert "Traceback" not in text and "internal error" not in text and " ERROR " not in text, text[-3000:]
    refusals = [line for line in text.splitlines() if "control socket: bad request" in line]
    assert 1 <= len(refusals) <= 2, refusals            # limited: one line per 10 s, the held-back count after

    # A well-formed command still works.
    assert cluster.cli("a", "status").returncode == 0


def test_own_address_in_a_shared_peer_list_is_skipped_quietly(lab):
    cluster = AgentCluster(lab)
    shared = {"peers": [A, B]}                          # the same list on both nodes
    cluster.add("a", 150, cluster=shared)
    cluster.add("b", 100, cluster=shared)
    cluster.start_all()
    settle(lab, cluster, "a", timeout=15)

    def heard_only_the_other() -> bool:
        a, b = cluster.status("a"), cluster.status("b")
        # What a received can only come from b: at most what b sent by then.
        return (a["counters"]["adverts_received"] > 30 and b["counters"]["adverts_received"] > 30
                and a["counters"]["adverts_received"] <= b["counters"]["adverts_sent"]
                and b["counters"]["adverts_received"] <= a["counters"]["adverts_sent"])
    lab.wait_for(heard_only_the_other, 10, what="each node counting only the other's heartbeats")
    for host, own in (("a", A), ("b", B)):
        status = cluster.status(host)
        assert [p["name"] for p in status["peers"]] == [{"a": "pacs-b", "b": "pacs-a"}[host]], status["peers"]
        assert not any(status["drops"].values()), status["drops"]
        text = log_text(cluster, host)
        assert "carries this node's name" not in text, text[-3000:]
        skipped = [line for line in text.splitlines() if f"lists this node's own address {own}: skipped" in line]
        assert len(skipped) == 1 and " INFO " in skipped[0], skipped
        assert " WARNING " not in text and " ERROR " not in text, text[-3000:]

    # A reload of the same file changes nothing: the skipped entry stays skipped.
    reloaded = cluster.cli("a", "reload")
    assert reloaded.returncode == 0 and "nothing changed" in reloaded.stdout, reloaded.stdout + reloaded.stderr
