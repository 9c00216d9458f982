"""hapacs agents in a Lab: write their configs and key, start, stop, ask their status.

Used by the end-to-end tests, the benchmarks and the demo. Each agent runs
as a real process (`python -m hapacs run`) inside its host's namespace;
its control socket is a file under the lab's temporary directory, so the
test process talks to it directly.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hapacs.control import ControlError, request

REPO = str(Path(__file__).resolve().parent.parent)


@dataclass
class AgentSpec:
    host: str
    priority: int
    extra: dict = field(default_factory=dict)   # merged into the YAML (per section)


class AgentCluster:
    def __init__(self, lab, vips=("192.0.2.100/24",), advert_interval=0.1, dead_after=3,
                 preempt=True, preempt_delay=0.5, multicast=False, cluster_id=51, checks=None, realtime=False):
        self.lab = lab
        self.vips = list(vips)
        self.base = dict(advert_interval=advert_interval, dead_after=dead_after, preempt=preempt,
                         preempt_delay=preempt_delay)
        self.multicast = multicast
        self.cluster_id = cluster_id
        self.checks = checks or {}
        self.realtime = realtime   # run agents SCHED_RR like systemd/hapacs.service (CPUSchedulingPolicy=rr)
        self.dir = lab.mkdtemp("agents")
        self.key_file = os.path.join(self.dir, "cluster.key")
        with open(os.open(self.key_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        self.specs: dict[str, AgentSpec] = {}
        self.procs: dict[str, subprocess.Popen] = {}

    def config_path(self, host: str) -> str:
        return os.path.join(self.dir, f"{host}.yaml")

    def socket_path(self, host: str) -> str:
        return os.path.join(self.dir, f"{host}.sock")

    def log_path(self, host: str) -> str:
        return os.path.join(self.dir, f"{host}.log")

    def config(self, host: str) -> dict:
        spec = self.specs[host]
        node = self.lab.node(host)
        peers = [self.lab.node(h).ipv4 for h in self.specs if h != host]
        cluster = dict(id=self.cluster_id, interface=node.ifname, auth_key_file=self.key_file, **self.base)
        if not self.multicast:
            cluster["peers"] = peers
        config = {
            "node": {"name": f"pacs-{host}", "priority": spec.priority,
                     "state_dir": os.path.join(self.dir, f"{host}-state")},
            "cluster": cluster,
            "vips": [{"address": v} for v in self.vips],
            "control": {"socket": self.socket_path(host)},
        }
        if self.checks.get(host):
            config["checks"] = self.checks[host]
        for section, values in spec.extra.items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
        return config

    def add(self, host: str, priority: int, **extra) -> None:
        self.specs[host] = AgentSpec(host, priority, extra)

    def write(self, host: str) -> str:
        path = self.config_path(host)
        with open(path, "w") as handle:
            yaml.safe_dump(self.config(host), handle, sort_keys=False)
        return path

    def start(self, host: str, log_level: str = "info", env: dict | None = None) -> subprocess.Popen:
        """Start the agent of `host`; `env` adds variables to its environment (PATH, ...)."""
        path = self.write(host)
        log = open(self.log_path(host), "a")
        env = {**(env or {}), "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        argv = [sys.executable, "-m", "hapacs", "run", "-c", path, "--log-level", log_level]
        if self.realtime:
            argv = ["chrt", "-r", "10", *argv]   # chrt execs: the pid stays the agent's
        proc = self.lab.spawn(host, argv, env=env, stdout=log, stderr=log)
        log.close()
        self.procs[host] = proc
        return proc

    def start_all(self) -> None:
        for host in self.specs:
            self.start(host)

    def kill(self, host: str, sig=signal.SIGKILL) -> None:
        self.procs[host].send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                self.procs[host].wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.procs[host].kill()
                self.procs[host].wait(timeout=5)

    def status(self, host: str) -> dict | None:
        """The agent's status JSON, or None while it does not answer."""
        try:
            reply = request(self.socket_path(host), {"command": "status"}, timeout_s=2.0)
        except ControlError:
            return None
        return reply.get("status") if reply.get("ok") else None

    def state(self, host: str) -> str | None:
        status = self.status(host)
        return status["state"] if status else None

    def command(self, host: str, message: dict, timeout_s: float = 60.0) -> dict:
        return request(self.socket_path(host), message, timeout_s=timeout_s)

    def cli(self, host: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the real `hapacs` command against this agent's socket."""
        return subprocess.run([sys.executable, "-m", "hapacs", *args, "-c", self.config_path(host),
                               "--socket", self.socket_path(host)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHONPATH": REPO})

    def wait_state(self, host: str, state: str, timeout: float = 10.0) -> None:
        self.lab.wait_for(lambda: self.state(host) == state, timeout, what=f"{host} {state}")

    def masters(self) -> list[str]:
        return [h for h in self.specs if self.state(h) == "MASTER"]

    def logs(self) -> str:
        parts = []
        for host in self.specs:
            try:
                with open(self.log_path(host)) as handle:
                    parts.append(f"--- {host} ---\n{handle.read()[-6000:]}")
            except OSError:
                pass
        return "\n".join(parts)

    def transitions(self, host: str) -> list[dict]:
        status = self.status(host)
        return status["transitions"] if status else []


def dumps(data: dict) -> str:
    return json.dumps(data, indent=1)
