"""keepalived (the Debian package) in a Lab, configured to match hapacs, for comparison.

What it is for: bench/failover runs every scenario against hapacs and against
keepalived in the same lab. This module writes one keepalived.conf per host
(VRRPv3, the same advert interval, priorities, VIP, unicast peers and a
dcmtk echoscu health check), starts keepalived in the host's namespace,
records its state changes with time.monotonic() timestamps, and signals all
of its processes by the pids in its pid files.

State changes come from keepalived's notify FIFO (`notify_fifo`): keepalived
writes one line per transition (`INSTANCE "VI_1" MASTER 150`) at the moment
it changes state, and a reader thread here stamps each line as it arrives.
CLOCK_MONOTONIC is shared by all namespaces, so these stamps compare with the
workstation probe's and with hapacs's own transition times.

What it must never do: leave a keepalived running. Every process is started
through lab.spawn (the Lab stops it at teardown); hung (SIGSTOPped) ones are
killed by pid.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

KEEPALIVED = "/usr/sbin/keepalived"
ECHOSCU = "/usr/bin/echoscu"
INSTANCE = "VI_1"
VIRTUAL_ROUTER_ID = 51
# keepalived 2.2 takes vrrp_script interval and timeout in whole seconds only
# ("invalid number '0.5'"): 1 s is the shortest interval it accepts.
SCRIPT_INTERVAL_S = 1
STOP_TIMEOUT_S = 5.0


@dataclass
class KeepalivedHost:
    host: str
    priority: int
    dir: str
    proc: subprocess.Popen | None = None
    events: list[tuple[float, str]] = field(default_factory=list)   # (monotonic, state), in order
    reader: threading.Thread | None = None


class KeepalivedCluster:
    """One keepalived per lab host, sharing one VIP; the counterpart of lab.cluster.AgentCluster."""

    name = "keepalived"

    def __init__(self, lab, vip="192.0.2.100/24", advert_interval=0.1, preempt=True, preempt_delay=0.0,
                 check=True, check_fall=2, check_rise=3, snmp=False):
        self.lab = lab
        self.vip = vip
        self.advert_interval = advert_interval
        self.preempt = preempt
        self.preempt_delay = preempt_delay
        self.check = check
        self.check_fall, self.check_rise = check_fall, check_rise
        self.snmp = snmp
        self.hosts: dict[str, KeepalivedHost] = {}
        self._stop = threading.Event()

    # ---- configuration ----------------------------------------------------

    def add(self, host: str, priority: int) -> None:
        self.hosts[host] = KeepalivedHost(host, priority, self.lab.mkdtemp(f"keepalived-{host}"))

    def path(self, host: str, name: str) -> str:
        return os.path.join(self.hosts[host].dir, name)

    def config(self, host: str) -> str:
        spec, node = self.hosts[host], self.lab.node(host)
        peers = " ".join(self.lab.node(h).ipv4 for h in self.hosts if h != host)
        check = "-aet HAPACS -aec PACS -to 1 -ta 1 -td 1 127.0.0.1 104"
        lines = [
            "global_defs {",
            f"  router_id pacs-{host}",
            "  script_user root",
            "  enable_script_security",
            f"  notify_fifo {self.path(host, 'notify.fifo')}",
        ]
        if self.snmp:
            lines += ["  enable_snmp_vrrp", f"  snmp_socket unix:{self.path(host, 'agentx.sock')}"]
        lines += ["}"]
        if self.check:
            lines += [
                "vrrp_script pacs_dicom {",
                f'  script "{ECHOSCU} {check}"',
                f"  interval {SCRIPT_INTERVAL_S}",
                f"  fall {self.check_fall}",
                f"  rise {self.check_rise}",
                "}",
            ]
        lines += [
            f"vrrp_instance {INSTANCE} {{",
            "  state BACKUP",
            f"  interface {node.ifname}",
            f"  virtual_router_id {VIRTUAL_ROUTER_ID}",
            f"  priority {spec.priority}",
            f"  advert_int {self.advert_interval:g}",
            "  version 3",
            f"  unicast_src_ip {node.ipv4}",
            f"  unicast_peer {{ {peers} }}",
            f"  virtual_ipaddress {{ {self.vip} dev {node.ifname} }}",
        ]
        if not self.preempt:
            lines.append("  nopreempt")
        elif self.preempt_delay:
            lines.append(f"  preempt_delay {self.preempt_delay:g}")
        if self.check:
            lines.append("  track_script { pacs_dicom }")   # weight 0: a failing check means FAULT
        lines += ["}"]
        return "\n".join(lines) + "\n"

    # ---- running ------------------------------------------------------------

    def start(self, host: str) -> subprocess.Popen:
        """Start keepalived on `host` in the foreground (-n), logging to its console (-l -D)."""
        spec = self.hosts[host]
        conf = self.path(host, "keepalived.conf")
        with open(conf, "w") as handle:
            handle.write(self.config(host))
        if spec.reader is None:
            fifo = self.path(host, "notify.fifo")
            os.mkfifo(fifo, 0o600)
            spec.reader = threading.Thread(target=self._read_fifo, args=(spec, fifo), daemon=True)
            spec.reader.start()
        for pidfile in ("keepalived.pid", "vrrp.pid", "checkers.pid"):
            try:
                os.unlink(self.path(host, pidfile))
            except FileNotFoundError:
                pass
        argv = [KEEPALIVED, "-n", "-l", "-D", "-f", conf, "-p", self.path(host, "keepalived.pid"),
                "-r", self.path(host, "vrrp.pid"), "-c", self.path(host, "checkers.pid")]
        if self.snmp:
            argv.append("-x")
        with open(self.path(host, "keepalived.log"), "ab") as log:
            spec.proc = self.lab.spawn(host, argv, stdout=log, stderr=subprocess.STDOUT)
        return spec.proc

    def _read_fifo(self, spec: KeepalivedHost, fifo: str) -> None:
        # Opened read-write so that a keepalived restart (writer closing) never means EOF.
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        pending = b""
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                arrived = time.monotonic()
                pending += os.read(fd, 4096)
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    words = line.decode(errors="replace").split()
                    # INSTANCE "VI_1" MASTER 150; the FIFO also carries MASTER_RX_LOWER_PRI
                    if len(words) >= 3 and words[0] == "INSTANCE" and words[2] in (
                            "MASTER", "BACKUP", "FAULT", "STOP"):
                        spec.events.append((arrived, words[2]))
        finally:
            os.close(fd)

    def pids(self, host: str) -> list[int]:
        """keepalived's processes on `host`: the VRRP (and checker) children first, then the parent."""
        found = []
        for name in ("vrrp.pid", "checkers.pid", "keepalived.pid"):
            try:
                with open(self.path(host, name)) as handle:
                    found.append(int(handle.read().split()[0]))
            except (FileNotFoundError, ValueError, IndexError):
                pass
        proc = self.hosts[host].proc
        if proc is not None and proc.poll() is None and proc.pid not in found:
            found.append(proc.pid)
        return found

    def signal(self, host: str, sig) -> float:
        """Send `sig` to every keepalived process of `host` (children first); return when it was sent."""
        pids = self.pids(host)
        sent_t = time.monotonic()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGKILL:
            self._reap(host)
        return sent_t

    def _reap(self, host: str) -> None:
        proc = self.hosts[host].proc
        if proc is not None:
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, host: str) -> int | None:
        """SIGTERM keepalived (it sends priority 0 and removes the VIP), wait for it to exit."""
        proc = self.hosts[host].proc
        if proc is None:
            return None
        return self.lab.stop(proc, timeout=STOP_TIMEOUT_S)

    def close(self) -> None:
        """End the FIFO reader threads (the Lab stops the processes)."""
        self._stop.set()
        for spec in self.hosts.values():
            if spec.reader is not None:
                spec.reader.join(1.0)

    # ---- observing ------------------------------------------------------------

    def state(self, host: str) -> str | None:
        events = self.hosts[host].events
        proc = self.hosts[host].proc
        if proc is None or proc.poll() is not None:
            return None
        return events[-1][1] if events else "INIT"

    def transitions(self, host: str) -> list[dict]:
        """Like hapacs status transitions: [{"from", "to", "monotonic"}, ...]."""
        result, previous = [], "INIT"
        for at, state in list(self.hosts[host].events):
            result.append({"from": previous, "to": state, "monotonic": at})
            previous = state
        return result

    def masters(self) -> list[str]:
        return [h for h in self.hosts if self.state(h) == "MASTER"]
