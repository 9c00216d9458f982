"""hapacs's etcd client against a real 3-member etcd 3.4 cluster in namespaces.

The cluster runs in hosts a, b, c (192.0.2.11-13, lab/etcd.py); the client runs in the
workstation's namespace through lab/etcdprobe.py, which prints what it saw as JSON.
Tests that break a member come last in this file: the cluster is shared by the module.
The answer checks without etcd are in tests/test_etcd_answers.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lab.etcd import (CLIENT_PORT, etcdctl_argv, follower, kill_member, make_certificates, require_etcd_tools,
                      start_etcd_cluster)
from lab.netns import wait_for
from tests.fixtures import lab_fixture

PROBE = str(Path(__file__).resolve().parent.parent / "lab" / "etcdprobe.py")
NOT_ETCD_PORT = 8080

lab = lab_fixture("et", before=require_etcd_tools, scope="module", hosts=("a", "b", "c"))


@pytest.fixture(scope="module")
def etcd(lab):
    return start_etcd_cluster(lab, ("a", "b", "c"))


def probe(lab, *args, tls=None, timeout_s=1.0) -> dict:
    options = ["--timeout", str(timeout_s)]
    if tls:
        options += ["--ca", tls["ca"], "--cert", tls["cert"], "--key", tls["key"]]
    completed = lab.exec("ws", [sys.executable, PROBE, *options, *args], check=False, timeout=60)
    assert completed.returncode == 0, f"etcdprobe {args} failed:\n{completed.stderr}"
    return json.loads(completed.stdout)


def endpoints(etcd, *hosts) -> str:
    return ",".join(etcd.urls[host] for host in hosts)


def test_a_lease_is_granted_renewed_and_revoked(lab, etcd):
    answer = probe(lab, "lease", etcd.endpoints[0], "3")
    assert answer["ttl_s"] == 3
    assert answer["left_s"] == [3] * 5                  # each keepalive renews to the full TTL
    assert answer["left_after_revoke_s"] == 0


def test_the_key_is_taken_once_and_only_its_holder_may_delete_it(lab, etcd):
    answer = probe(lab, "take", ",".join(etcd.endpoints), "/hapacs/51/leader")
    assert answer["first"] is True and answer["second"] is False
    assert answer["second_sees"] == "node-a"            # the loser learns who holds it
    assert answer["retry"] is False and answer["retry_holder_is_own_lease"] is True
    assert answer["held"] == "node-a" and answer["held_lease_is_mine"] is True
    assert answer["wrong_delete"] is False              # a rival's value deletes nothing
    assert answer["right_delete"] is True and answer["absent_after_delete"] is True


def test_a_watch_sees_the_put_and_the_delete(lab, etcd):
    answer = probe(lab, "watch", endpoints(etcd, "b", "c", "a"), "/hapacs/51/watched")
    assert answer["events"] == [["PUT", "holder"], ["DELETE", ""]]


def test_the_key_goes_when_its_lease_is_not_renewed(lab, etcd):
    answer = probe(lab, "expire", ",".join(etcd.endpoints), "/hapacs/51/expiring", "2")
    assert answer["events"] == [["PUT", "holder"], ["DELETE", ""]]
    assert answer["ttl_s"] == 2
    assert answer["expired_after_s"] >= 1.5             # not before its TTL (minus timer granularity)


def test_an_http_server_that_is_not_etcd_is_named_and_skipped(lab, etcd):
    web = lab.spawn("ws", [sys.executable, "-m", "http.server", str(NOT_ETCD_PORT), "--bind", "192.0.2.200"])
    not_etcd = f"http://192.0.2.200:{NOT_ETCD_PORT}"
    try:
        wait_for(lambda: f":{NOT_ETCD_PORT} " in lab.exec("ws", ["ss", "-ltnH"]).stdout, 10,
                 what="python -m http.server to listen")
        alone = probe(lab, "get", not_etcd, "k")
        assert alone["error"] == "not-etcd"
        assert f"{not_etcd}: get: answered HTTP 501" in alone["reason"] and \
            "not etcd's JSON gateway" in alone["reason"]
        with_etcd = probe(lab, "get", f"{not_etcd},{etcd.urls['a']}", "k")
        assert with_etcd["answered_by"] == etcd.urls["a"] and with_etcd["failed"] == {not_etcd: "not-etcd"}
    finally:
        lab.stop(web)        # the module's lab goes on: leave no server on the workstation


def test_a_silent_follower_costs_one_attempt_then_another_answers(lab, etcd):
    # A follower: cutting the leader would make the others elect a new one first (1-2 s).
    cut = follower(etcd)
    others = [host for host in etcd.urls if host != cut]
    lab.partition(cut)
    try:
        answer = probe(lab, "get", endpoints(etcd, cut, *others), "k", timeout_s=0.5)
    finally:
        lab.heal(cut)
    assert answer.get("answered_by") == etcd.urls[others[0]], answer
    assert answer["failed"] == {etcd.urls[cut]: "unreachable"}
    assert answer["elapsed_s"] >= 0.5


def test_a_killed_follower_is_passed_over_at_once(lab, etcd):
    killed = follower(etcd)
    others = [host for host in etcd.urls if host != killed]
    kill_member(etcd, killed)
    answer = probe(lab, "get", endpoints(etcd, killed, *others), "k")
    assert answer.get("answered_by") == etcd.urls[others[0]], answer
    assert answer["failed"] == {etcd.urls[killed]: "unreachable"}
    every_member_gone = probe(lab, "get", etcd.urls[killed], "k")
    assert every_member_gone["error"] == "unreachable" and "connection refused" in every_member_gone["reason"]


def test_tls_works_with_the_right_files_and_each_wrong_one_is_named(lab, etcd):
    kill_member(etcd, "b")          # the TLS member reuses b's address and port
    secure = start_etcd_cluster(lab, ("b",), tls=True)
    files = {"ca": secure.tls.ca_file, "cert": secure.tls.cert_file, "key": secure.tls.key_file}
    assert secure.urls["b"] == f"https://192.0.2.12:{CLIENT_PORT}"
    answer = probe(lab, "lease", secure.urls["b"], "3", tls=files)
    assert answer.get("ttl_s") == 3 and answer["left_after_revoke_s"] == 0, answer

    other = make_certificates(Path(lab.mkdtemp("otherca")), ["192.0.2.12"], name="other")
    wrong_ca = probe(lab, "get", secure.urls["b"], "k", tls={**files, "ca": other["ca"]})
    assert wrong_ca.get("error") == "tls", wrong_ca
    assert "etcd's certificate was refused" in wrong_ca["reason"] and "ca_file" in wrong_ca["reason"]

    stranger = probe(lab, "get", secure.urls["b"], "k",
                     tls={**files, "cert": other["client"], "key": other["client_key"]})
    assert stranger.get("error") == "tls", stranger
    assert "refused this client's certificate" in stranger["reason"]

    # Authentication on: etcd 3.4's gateway refuses every request that carries a client certificate.
    etcdctl = etcdctl_argv(secure, [secure.urls["b"]])
    for command in (["user", "add", "root:lab-only"], ["user", "grant-role", "root", "root"], ["auth", "enable"]):
        lab.exec("b", etcdctl + command)
    refused = probe(lab, "get", secure.urls["b"], "/hapacs/51/leader", tls=files)
    assert refused.get("error") == "permission", refused
    assert "authentication on" in refused["reason"] and "CommonName" in refused["reason"]
