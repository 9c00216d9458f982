"""A private 3-member etcd 3.4 cluster in a lab: the leadership authority of the etcd tests.

What it is for: hapacs's etcd client (`hapacs/etcd.py`) and, later, the agents'
lease-based leadership need a real etcd cluster whose members can be killed and
cut off. `start_etcd_cluster(lab, ["a", "b", "c"])` runs Debian's etcd-server
(/usr/bin/etcd) in those lab hosts, each listening on its host's IPv4 address
(client port 2379, peer port 2380), its data directory under the lab's tmpdir,
and returns once every member reports health. With `tls=True` the client URLs are
https with client-certificate authentication: a CA, one server certificate per
member (its IP in subjectAltName) and a client certificate, made with openssl in
the lab's tmpdir. Peer traffic stays plain http inside the lab.

What it must never do: touch the system's etcd (/var/lib/etcd, the systemd unit)
or listen outside the lab's namespaces. Members are started with lab.spawn and
killed by pid (kill_member, and the lab's teardown even when a test fails).

etcd 3.4 is run with --pre-vote=true: without it a member that rejoins after a
partition forces a new election (and a new leader extends every lease).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lab.netns import log_tail, wait_for

ETCD, ETCDCTL, OPENSSL, FAKETIME = "/usr/bin/etcd", "/usr/bin/etcdctl", "/usr/bin/openssl", "faketime"
CLIENT_PORT, PEER_PORT = 2379, 2380
CLUSTER_TOKEN = "hapacs-lab"
START_TIMEOUT_S = 20.0
HEALTH_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class TlsFiles:
    ca_file: str
    cert_file: str      # the client's certificate, signed by the CA
    key_file: str
    directory: Path


@dataclass
class EtcdCluster:
    """A running lab etcd: members by host, their client URLs, the TLS files if any."""

    lab: object
    processes: dict[str, subprocess.Popen]
    argvs: dict[str, list[str]]       # host -> the member's command line, for restart_member
    urls: dict[str, str]            # host -> client URL
    directory: Path
    tls: TlsFiles | None = None
    logs: dict[str, Path] = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    @property
    def endpoints(self) -> list[str]:
        return list(self.urls.values())

    def log_tail(self, host: str, lines: int = 15) -> str:
        return log_tail(self.logs[host], lines) if host in self.logs else "(no log)"


def require_etcd_tools(tls: bool = False):
    """Fail clearly (RuntimeError) when etcd, etcdctl or (for TLS) openssl is missing."""
    wanted = [ETCD, ETCDCTL] + ([OPENSSL] if tls else [])
    missing = [tool for tool in wanted if not os.access(tool, os.X_OK)]
    if missing:
        raise RuntimeError("the lab's etcd needs the Debian packages etcd-server and etcd-client"
                           + (" and openssl" if tls else "") + ": missing " + ", ".join(missing))


def _openssl(*args, cwd: Path, days_ago: int = 0):
    """Run openssl; with `days_ago` under faketime, so what it signs starts (and ends) in the past."""
    argv = [OPENSSL, *args]
    if days_ago:
        if not shutil.which(FAKETIME):
            raise RuntimeError("an expired lab certificate needs faketime (Debian package faketime)")
        argv = [FAKETIME, "-f", f"-{days_ago}d", *argv]
    completed = subprocess.run(argv, check=False, cwd=cwd, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=30)
    if completed.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {completed.stderr.strip()}")


def make_certificates(directory: Path, addresses: list[str], name: str = "ca", days: int = 2,
                      leaves_expired: bool = False) -> dict[str, str]:
    """A CA `name` and, signed by it: server.pem (subjectAltName = every address) and client.pem.
    EC P-256 keys, quick to make. With `leaves_expired` the server and client certificates were
    valid for one day, three days ago (the CA is valid now). Returns the paths by role."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-days", str(days),
             "-subj", f"/CN=hapacs lab {name}", cwd=directory)
    san = ",".join(f"IP:{address}" for address in addresses)
    # The server certificate needs clientAuth too: etcd 3.4's JSON gateway dials the member's own
    # gRPC port presenting --cert-file; without it every gateway call fails "connection closed".
    for role, extension in (("server", f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth"),
                            ("client", "extendedKeyUsage=clientAuth")):
        (directory / f"{role}.ext").write_text(extension + "\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{role}-key.pem", "-out", f"{role}.csr", "-subj", f"/CN=hapacs-{role}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{role}.csr", "-CA", f"{name}.pem", "-CAkey", f"{name}-key.pem",
                 "-CAcreateserial", "-out", f"{role}.pem", "-days", "1" if leaves_expired else str(days),
                 "-extfile", f"{role}.ext", cwd=directory, days_ago=3 if leaves_expired else 0)
    return {"ca": str(directory / f"{name}.pem"), "server": str(directory / "server.pem"),
            "server_key": str(directory / "server-key.pem"), "client": str(directory / "client.pem"),
            "client_key": str(directory / "client-key.pem")}


@dataclass(frozen=True)
class RaftTimers:
    """etcd's --heartbeat-interval and --election-timeout (milliseconds); etcd's defaults 100/1000.
    etcd's tuning guide: heartbeat about the round trip between members, election timeout about
    ten times that. A lease's minimum TTL is 1.5 x the election timeout (rounded up to seconds)."""
    heartbeat_ms: int = 100
    election_ms: int = 1000


def _member_argv(name: str, ipv4: str, data: Path, initial_cluster: str, scheme: str, certs: dict | None,
                 timers: RaftTimers | None = None):
    argv = [ETCD, "--name", name, "--data-dir", str(data),
            "--listen-client-urls", f"{scheme}://{ipv4}:{CLIENT_PORT}",
            "--advertise-client-urls", f"{scheme}://{ipv4}:{CLIENT_PORT}",
            "--listen-peer-urls", f"http://{ipv4}:{PEER_PORT}",
            "--initial-advertise-peer-urls", f"http://{ipv4}:{PEER_PORT}",
            "--initial-cluster", initial_cluster, "--initial-cluster-token", CLUSTER_TOKEN,
            "--initial-cluster-state", "new", "--pre-vote=true",
            "--logger", "zap", "--log-outputs", "stderr"]
    if timers is not None:
        argv += ["--heartbeat-interval", str(timers.heartbeat_ms), "--election-timeout", str(timers.election_ms)]
    if certs:
        argv += ["--cert-file", certs["server"], "--key-file", certs["server_key"],
                 "--client-cert-auth", "--trusted-ca-file", certs["ca"]]
    return argv


def start_etcd_cluster(lab, hosts=("a", "b", "c"), tls: bool = False,
                       start_timeout_s: float = START_TIMEOUT_S, timers: RaftTimers | None = None) -> EtcdCluster:
    """Run one etcd member in each host; return when all report health (AssertionError with
    the logs' tails if not within start_timeout_s, RuntimeError if a member exits)."""
    require_etcd_tools(tls)
    directory = Path(lab.mkdtemp("etcd"))
    nodes = [lab.node(host) for host in hosts]
    certs = make_certificates(directory / "tls", [node.ipv4 for node in nodes]) if tls else None
    scheme = "https" if tls else "http"
    initial_cluster = ",".join(f"{node.name}=http://{node.ipv4}:{PEER_PORT}" for node in nodes)
    cluster = EtcdCluster(lab=lab, processes={}, argvs={}, urls={}, directory=directory,
                          tls=TlsFiles(certs["ca"], certs["client"], certs["client_key"], directory / "tls")
                          if certs else None)
    # etcd 3.4 refuses to start on an architecture it does not support unless told; amd64 needs nothing.
    env = {"ETCD_UNSUPPORTED_ARCH": os.uname().machine} if os.uname().machine not in ("x86_64",) else {}
    for node in nodes:
        log = directory / f"{node.name}.log"
        argv = _member_argv(node.name, node.ipv4, directory / f"{node.name}.etcd", initial_cluster, scheme, certs,
                            timers)
        cluster.argvs[node.name], cluster.env = argv, env
        with open(log, "ab") as log_file:
            cluster.processes[node.name] = lab.spawn(node.ns, argv, env=env, stdout=log_file,
                                                     stderr=subprocess.STDOUT)
        cluster.urls[node.name] = f"{scheme}://{node.ipv4}:{CLIENT_PORT}"
        cluster.logs[node.name] = log
    # etcd exits at once on SIGTERM; SIGKILL is kinder to a loaded machine's teardown.
    lab.at_close(lambda: [lab.kill(process, signal.SIGKILL) for process in list(cluster.processes.values())])

    def all_healthy():
        for host, process in cluster.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"etcd in {host} exited with {process.returncode}:\n{cluster.log_tail(host)}")
        return healthy(cluster, hosts[0], list(cluster.urls.values()))

    try:
        wait_for(all_healthy, start_timeout_s, interval=0.1, what="the lab's etcd members to report health")
    except AssertionError as error:
        tails = "\n".join(f"--- {host}\n{cluster.log_tail(host)}" for host in cluster.processes)
        raise AssertionError(f"{error}\n{tails}") from None
    return cluster


def etcdctl_argv(cluster: EtcdCluster, endpoints: list[str]) -> list[str]:
    argv = [ETCDCTL, "--endpoints", ",".join(endpoints), "--dial-timeout", "1s",
            "--command-timeout", f"{HEALTH_TIMEOUT_S:g}s"]
    if cluster.tls:
        argv += ["--cacert", cluster.tls.ca_file, "--cert", cluster.tls.cert_file, "--key", cluster.tls.key_file]
    return argv


def healthy(cluster: EtcdCluster, from_host: str, endpoints: list[str]) -> bool:
    """True when every endpoint answers `etcdctl endpoint health` (a linearizable read) from `from_host`."""
    completed = cluster.lab.exec(from_host, etcdctl_argv(cluster, endpoints) + ["endpoint", "health"],
                                 check=False, timeout=HEALTH_TIMEOUT_S + 5)
    return completed.returncode == 0


def kill_member(cluster: EtcdCluster, host: str) -> None:
    """SIGKILL one member by pid, as a crash, and reap it."""
    process = cluster.processes[host]
    cluster.lab.kill(process, signal.SIGKILL)
    process.wait(5)


def restart_member(cluster: EtcdCluster, host: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Start a killed member again on its data directory (it rejoins as it was); return once every
    living member reports health."""
    node = cluster.lab.node(host)
    with open(cluster.logs[host], "ab") as log_file:
        cluster.processes[host] = cluster.lab.spawn(node.ns, cluster.argvs[host], env=cluster.env,
                                                    stdout=log_file, stderr=subprocess.STDOUT)
    wait_for(lambda: healthy(cluster, host, [cluster.urls[host]]), timeout_s, interval=0.1,
             what=f"etcd member {host} back")


def _endpoint_status(cluster: EtcdCluster, from_host: str | None) -> str:
    """`etcdctl endpoint status -w json` of the living members, asked from `from_host` (by default
    the first living one): its output."""
    living = [host for host, process in cluster.processes.items() if process.poll() is None]
    completed = cluster.lab.exec(from_host or living[0], etcdctl_argv(cluster, [cluster.urls[h] for h in living])
                                 + ["endpoint", "status", "-w", "json"], check=False, timeout=HEALTH_TIMEOUT_S + 5)
    return completed.stdout


def leader(cluster: EtcdCluster, from_host: str | None = None) -> str | None:
    """The host whose member is the Raft leader, as the living members report it (None if none does)."""
    try:
        statuses = json.loads(_endpoint_status(cluster, from_host))
    except json.JSONDecodeError:
        return None
    for status in statuses:
        header = status.get("Status", {}).get("header", {})
        if header.get("member_id") is not None and header.get("member_id") == status["Status"].get("leader"):
            return next((host for host, url in cluster.urls.items() if url == status.get("Endpoint")), None)
    return None


def member_ids(cluster: EtcdCluster, from_host: str) -> dict[str, int]:
    """The living members' Raft ids by host."""
    ids = {}
    for status in json.loads(_endpoint_status(cluster, from_host) or "[]"):
        host = next((h for h, url in cluster.urls.items() if url == status.get("Endpoint")), None)
        if host is not None:
            ids[host] = status["Status"]["header"]["member_id"]
    return ids


def move_leader(cluster: EtcdCluster, to_host: str) -> None:
    """A planned etcd leader change (`etcdctl move-leader`): the leader hands over to `to_host`."""
    now = leader(cluster)
    if now is None or now == to_host:
        raise RuntimeError(f"cannot move the etcd leader from {now} to {to_host}")
    target = member_ids(cluster, now)[to_host]
    cluster.lab.exec(now, etcdctl_argv(cluster, [cluster.urls[now]]) + ["move-leader", f"{target:x}"],
                     timeout=HEALTH_TIMEOUT_S + 5)


def follower(cluster: EtcdCluster) -> str:
    """A living member that is not the leader (waits up to START_TIMEOUT_S for a leader)."""
    found = wait_for(lambda: leader(cluster), START_TIMEOUT_S, interval=0.1, what="an etcd leader")
    return next(host for host, process in cluster.processes.items() if host != found and process.poll() is None)
