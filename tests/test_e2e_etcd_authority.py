"""End to end: `cluster.authority: etcd` with real agents and a real 3-member etcd 3.4.

The agents run in hosts a and b (one segment, one VIP); the etcd members in hosts
c, d and e (192.0.2.13-15), shared by the module, each test with its own key prefix.
The lease decides who may hold the VIP: the holder of the key, renewed from the time
each request was sent, dropping the VIP before etcd could expire its lease.
TTL 2 s (etcd's minimum) keeps the waits short. Timings are measured in bench/etcd.py.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
import sys
import time

import pytest

from lab.cluster import AgentCluster
from lab.dicom import start_storescp
from lab.etcd import CLIENT_PORT, make_certificates, require_etcd_tools, start_etcd_cluster
from lab.outage import load
from lab.probe import start_probe
from lab.sampling import HolderSampler

from .e2e import VIP, settle, workstation_echo
from .fixtures import lab_fixture

TTL = 2
ETCD_HOSTS = ("c", "d", "e")
NOT_ETCD_PORT = 8080
TLS_PORT = 8443

lab = lab_fixture("ea", before=require_etcd_tools, scope="module", hosts=("a", "b", "c", "d", "e"))


@pytest.fixture(scope="module")
def etcd(lab):
    return start_etcd_cluster(lab, ETCD_HOSTS)


@pytest.fixture(scope="module")
def pacs(lab):
    """A DICOM server on a and b, for the workstation's C-ECHOes to the VIP."""
    for host in ("a", "b"):
        start_storescp(lab, lab.ns(host), port=104, aet="PACS")


def etcd_cluster(lab, etcd, prefix: str, endpoints=None, hosts=(("a", 150), ("b", 100)), **etcd_extra) -> AgentCluster:
    cluster = AgentCluster(lab, preempt_delay=0.5)
    for host, priority in hosts:
        cluster.add(host, priority, cluster={"authority": "etcd"},
                    etcd={"endpoints": endpoints or etcd.endpoints, "prefix": prefix, "ttl": TTL, **etcd_extra},
                    # The PACS port is drained (new associations held) before a handover, as with a
                    # DICOM check configured; without it an association open on the old MASTER is cut.
                    handover={"drain_timeout": 2, "shutdown_drain_timeout": 1, "drain_ports": [104]})
    return cluster


def stop_agents(cluster: AgentCluster) -> None:
    for host, proc in cluster.procs.items():
        if proc.poll() is None:
            cluster.kill(host, signal.SIGKILL)
    print(cluster.logs())


def master_since(cluster, host) -> float | None:
    """The monotonic time of `host`'s last transition to MASTER."""
    became = [t["monotonic"] for t in cluster.transitions(host) if t["to"] == "MASTER"]
    return became[-1] if became else None


def cut_from_etcd(lab, host: str, on: bool) -> None:
    """Drop `host`'s traffic to every etcd member (its peer still hears it), with nftables in its namespace."""
    if not on:
        lab.exec(host, ["nft", "delete", "table", "inet", "ea_cut"])
        return
    members = ", ".join(lab.node(h).ipv4 for h in ETCD_HOSTS)
    rules = (f"table inet ea_cut {{\n chain out {{\n  type filter hook output priority 0;\n"
             f"  ip daddr {{ {members} }} tcp dport {CLIENT_PORT} drop\n }}\n}}\n")
    lab.exec(host, ["nft", "-f", "-"], input=rules)



def remove_cut(lab, host: str) -> None:
    """Take `host`'s cut from etcd away if it is still there (a test that failed while cut)."""
    if "ea_cut" in lab.exec(host, ["nft", "list", "tables"]).stdout:
        cut_from_etcd(lab, host, False)

def test_the_best_node_holds_the_lease_and_a_kill_9_moves_it(lab, etcd, pacs):
    cluster = etcd_cluster(lab, etcd, "/hapacs/kill/")
    sampler = None
    try:
        cluster.start_all()
        settle(lab, cluster, "a", timeout=15)
        lab.wait_for(lambda: cluster.status("a")["authority"]["endpoints_up"] == 3, 10, what="3 endpoints up")
        authority = cluster.status("a")["authority"]
        assert authority["kind"] == "etcd" and authority["holder"] == "pacs-a" and authority["lease_ttl_s"] == TTL
        assert 0 < authority["lease_left_s"] <= TTL
        assert cluster.status("b")["authority"]["holder"] == "pacs-a"
        assert cluster.status("b")["authority"]["lease_left_s"] is None
        table = cluster.cli("a", "status")
        assert "authority etcd: lease held by pacs-a" in table.stdout, table.stdout
        assert workstation_echo(lab)

        sampler = HolderSampler(lab, VIP, interval_s=0.02, limit_s=60, hosts=("a", "b")).start()
        killed = time.monotonic()
        cluster.kill("a", signal.SIGKILL)
        lab.wait_for(lambda: cluster.state("b") == "MASTER", TTL + 3, what="b MASTER")
        took_over = master_since(cluster, "b") - killed
        lab.wait_for(lambda: lab.holders(VIP) == ["b"], 5, what="b the only holder")
        sampler.stop()
        samples = sampler.samples
        overlap = [t for t, _ in sampler.doubles()]
        print(f"kill -9: b MASTER {took_over:.2f} s later; {len(samples)} samples, the dead agent's address "
              f"beside b's for {overlap[-1] - overlap[0] if overlap else 0:.2f} s")
        assert took_over <= TTL + 1.0, f"b took over {took_over:.2f} s after the kill"
        # A killed agent's address stays until its kernel lease (valid_lft) ends: the only
        # overlap allowed, and it never outlasts that lease (2 s at these timers).
        last_a = max((t for t, h in samples if "a" in h), default=killed)
        assert last_a - killed <= 2.5, f"a's address stayed {last_a - killed:.2f} s"
        assert workstation_echo(lab)
        assert cluster.status("b")["authority"]["holder"] == "pacs-b"
    finally:
        if sampler is not None:
            sampler.stop()
        stop_agents(cluster)


def test_a_master_cut_from_etcd_drops_the_vip_before_the_other_gets_the_key(lab, etcd):
    cluster = etcd_cluster(lab, etcd, "/hapacs/cut/")
    sampler = None
    try:
        cluster.start_all()
        settle(lab, cluster, "a", timeout=15)
        sampler = HolderSampler(lab, VIP, interval_s=0.02, limit_s=60, hosts=("a", "b")).start()
        cut_at = time.monotonic()
        cut_from_etcd(lab, "a", True)
        lab.wait_for(lambda: cluster.state("b") == "MASTER", TTL + 5, what="b MASTER")
        lab.wait_for(lambda: lab.holders(VIP) == ["b"], 3, what="b the only holder")
        sampler.stop()
        samples = sampler.samples
        left = [t for t in cluster.transitions("a") if t["from"] == "MASTER"][-1]
        dropped = left["monotonic"]
        b_master = master_since(cluster, "b")
        print(f"cut: a dropped {dropped - cut_at:.2f} s after the cut, b MASTER {b_master - cut_at:.2f} s after, "
              f"{b_master - dropped:.2f} s apart")
        assert left["to"] == "FAULT" and left["code"] == "lease-lost", left
        assert "lost the etcd lease: no renewal since" in left["reason"], left
        assert dropped < b_master, "b became MASTER before a dropped the VIP"
        assert dropped - cut_at <= TTL, f"a held on {dropped - cut_at:.2f} s after the cut"
        assert sampler.doubles() == [], sampler.doubles()[:3]
        assert len(samples) > 20
        status = cluster.status("a")
        assert status["state"] == "FAULT" and status["authority"]["lease_left_s"] is None
        cut_from_etcd(lab, "a", False)
        lab.wait_for(lambda: cluster.state("a") in ("BACKUP", "MASTER"), 10, what="a out of FAULT")
        settle(lab, cluster, "a", timeout=15)      # preempts back, through a handover of the lease
    finally:
        if sampler is not None:
            sampler.stop()
        remove_cut(lab, "a")
        stop_agents(cluster)


def test_release_passes_the_lease_at_once_with_no_failed_echo(lab, etcd, pacs):
    cluster = etcd_cluster(lab, etcd, "/hapacs/release/")
    try:
        cluster.start_all()
        settle(lab, cluster, "a", timeout=15)
        records = os.path.join(lab.tmpdir, "release.jsonl")
        probe = start_probe(lab, records, VIP, interval=0.02, duration=30, timeout=5.0)
        lab.wait_for(lambda: sum(1 for r in safe_load(records) if r["ok"]) >= 20, 15, what="workstation served")
        asked = time.monotonic()
        # What `hapacs release` sends, on the control socket: a new python process would add its
        # start (up to 2 s on a loaded machine) to what is measured.
        reply = cluster.command("a", {"command": "release", "drain_timeout_s": 30.0})
        assert reply.get("ok"), reply
        settle(lab, cluster, "b")
        passed = master_since(cluster, "b") - asked
        since = time.monotonic()
        lab.wait_for(lambda: sum(1 for r in safe_load(records) if r["ok"] and r["t"] > since) >= 20, 15,
                     what="workstation served by b")
        lab.stop(probe, timeout=5)
        failed = [r for r in safe_load(records) if not r["ok"]]
        print(f"release: b MASTER {passed:.2f} s after the command; {len(safe_load(records))} echoes")
        assert failed == [], [(r["t"] - asked, r["ms"], r["err"]) for r in failed[:5]]
        assert passed < TTL / 2, f"the lease took {passed:.2f} s to pass: it waited for the TTL"
        assert cluster.status("b")["authority"]["holder"] == "pacs-b"
    finally:
        stop_agents(cluster)


def safe_load(path) -> list:
    try:
        return load(path)
    except OSError:
        return []


NOT_ETCD_SERVER = """
import http.server, sys
class Garbage(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = b"<html>hello, I am not etcd</html>"
        self.send_response(200); self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Garbage)
if len(sys.argv) > 3:    # TLS with this certificate and key
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def test_no_usable_etcd_at_start_is_a_fault_without_vip_until_etcd_answers(lab, etcd):
    address = lab.node("c").ipv4
    served = make_certificates(Path(lab.mkdtemp("served")), [address], name="served-ca")
    other_ca = make_certificates(Path(lab.mkdtemp("other")), [address], name="other-ca")["ca"]
    server = lab.spawn("c", [sys.executable, "-c", NOT_ETCD_SERVER, address, str(NOT_ETCD_PORT)])
    tls_server = lab.spawn("c", [sys.executable, "-c", NOT_ETCD_SERVER, address, str(TLS_PORT),
                                 served["server"], served["server_key"]])
    garbage = f"http://{address}:{NOT_ETCD_PORT}"
    nothing = f"http://{lab.node('d').ipv4}:{CLIENT_PORT + 7}"
    wrong_ca = f"https://{address}:{TLS_PORT}"
    cluster = etcd_cluster(lab, etcd, "/hapacs/start/", hosts=(("a", 150),))
    wrong = etcd_cluster(lab, etcd, "/hapacs/start/", endpoints=[garbage, nothing, wrong_ca], hosts=(("b", 100),),
                         ca_file=other_ca)
    try:
        lab.wait_for(lambda: server.poll() is None and tls_server.poll() is None and lab.exec(
            "c", ["ss", "-ltn"]).stdout.count(f"{address}:") >= 2, 5, what="the garbage servers")
        cut_from_etcd(lab, "a", True)
        cluster.start("a")
        wrong.start("b")
        lab.wait_for(lambda: cluster.state("a") == "FAULT" and wrong.state("b") == "FAULT", 10,
                     what="both in FAULT")
        lab.hold_for(lambda: lab.holders(VIP) == [] and cluster.state("a") == "FAULT", 2.0,
                     what="no VIP while etcd cannot be reached")
        faults_a = " ".join(cluster.status("a")["faults"])
        faults_b = " ".join(wrong.status("b")["faults"])
        assert "cannot use etcd" in faults_a and "no answer within" in faults_a, faults_a
        assert "the answer is not JSON" in faults_b and "connection refused" in faults_b, faults_b
        assert "etcd's certificate was refused" in faults_b and "check etcd.ca_file" in faults_b, faults_b
        with open(wrong.log_path("b")) as handle:
            log_b = handle.read()
        assert "etcd watch failed (not-etcd)" in log_b or "etcd watch failed (unreachable)" in log_b, log_b[-2000:]
        assert "Traceback" not in log_b
        cut_from_etcd(lab, "a", False)
        lab.wait_for(lambda: cluster.state("a") == "MASTER" and lab.holders(VIP) == ["a"], 10,
                     what="a MASTER once etcd answers")
        assert wrong.procs["b"].poll() is None and wrong.state("b") == "FAULT"
    finally:
        stop_agents(cluster)
        stop_agents(wrong)
        remove_cut(lab, "a")      # the lab is the module's: a test failed while cut must not cut the next
        lab.kill(server, signal.SIGKILL)
        lab.kill(tls_server, signal.SIGKILL)
