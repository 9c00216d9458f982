"""Key rotation, node by node, with no outage: the key file holds the current and the next key;
a node signs with the first and accepts both."""

from __future__ import annotations

import os
import secrets

from lab import Lab, unique_prefix
from lab.cluster import AgentCluster

from .e2e import one_holder, settle


def write_key(path: str, *keys: str) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write("".join(k + "\n" for k in keys))


def test_rotating_the_key_one_node_at_a_time_moves_nothing():
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    with Lab(unique_prefix("ky"), workstation=False) as lab:
        cluster = AgentCluster(lab)
        key = {h: os.path.join(cluster.dir, f"{h}.key") for h in ("a", "b")}
        for host, priority in (("a", 150), ("b", 100)):
            write_key(key[host], old)
            cluster.add(host, priority, cluster={"auth_key_file": key[host]})
        cluster.start_all()
        try:
            settle(lab, cluster, "a")
            history = {h: len(cluster.transitions(h)) for h in ("a", "b")}

            def step(host: str, *keys: str) -> None:
                write_key(key[host], *keys)
                result = cluster.cli(host, "reload")
                assert result.returncode == 0 and "keys changed" in result.stdout, result.stdout + result.stderr
                received = cluster.status(host)["counters"]["adverts_received"]
                lab.wait_for(lambda: cluster.status(host)["counters"]["adverts_received"] > received + 5, 3,
                             what=f"{host} still hears its peer")

            step("a", old, new)     # 1. every node learns the next key (still signing with the old one)
            step("b", old, new)
            step("a", new, old)     # 2. node by node, sign with the new key
            step("b", new, old)
            step("a", new)          # 3. drop the old key
            step("b", new)
            for host in ("a", "b"):
                status = cluster.status(host)
                assert len(status["transitions"]) == history[host], status["transitions"]
                assert status["drops"]["auth"] == 0 and status["counters"]["peers_lost"] == 0
            assert cluster.masters() == ["a"] and one_holder(lab) == "a"

            # And a node left behind on the old key is refused, and says why.
            write_key(key["b"], old)
            assert cluster.cli("b", "reload").returncode == 0
            lab.wait_for(lambda: cluster.status("a")["drops"]["auth"] > 5, 3, what="a drops b's old-key heartbeats")
        finally:
            print(cluster.logs())
