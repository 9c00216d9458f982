"""BIRD 2 instances in a lab: the BGP speakers of the sites lab (lab/sites.py).

What it is for: routed VIPs are announced by the PACS host's BGP speaker to its
site router, and from there to the core router. `start_bird(lab, ns, config)`
runs Debian's bird2 (/usr/sbin/bird) in a lab namespace with its own config
file, control socket, pid file and log in a fresh directory under the lab's
tmpdir, and returns once its control socket answers. `Bird.birdc(...)` asks it
(birdc reaches the socket by its path, from any namespace); `Bird.routes(net)`
names the protocols through which a prefix is known.

What it must never do: touch the system's BIRD (/etc/bird, /run/bird, the
systemd unit). Instances are started with lab.spawn in the foreground (`-f`, so
the pid is BIRD's own), stopped or killed by that pid, and the lab stops them
at close even when a test fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.netns import log_tail, wait_for

BIRD, BIRDC = "/usr/sbin/bird", "/usr/sbin/birdc"
START_TIMEOUT_S = 10.0
BIRDC_TIMEOUT_S = 5.0
# A route line of `show route`: "203.0.113.100/32     unicast [site_a 01:50:12.345] * (100) [AS64601i]";
# the continuation of a prefix starts with blanks.
_ROUTE = re.compile(r"^(\S+)?\s+\w+\s+\[(\w+)\s")


def require_bird():
    """Fail clearly (RuntimeError) when bird or birdc is missing."""
    missing = [tool for tool in (BIRD, BIRDC) if not os.access(tool, os.X_OK)]
    if missing:
        raise RuntimeError("the lab's BGP routers need the Debian package bird2: missing " + ", ".join(missing))


@dataclass
class Bird:
    """One running BIRD: where its files are and how to ask it."""

    lab: object
    name: str
    ns: str
    directory: Path
    config_text: str
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return str(self.directory / "bird.ctl")

    @property
    def config_path(self) -> Path:
        return self.directory / "bird.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "bird.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def birdc(self, *command: str, check: bool = True) -> str:
        """One birdc command over the control socket; its output (birdc's banner left out)."""
        completed = subprocess.run([BIRDC, "-s", self.socket, *command], capture_output=True, text=True,
                                   timeout=BIRDC_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if check and completed.returncode != 0:
            raise RuntimeError(f"birdc {' '.join(command)} on {self.name}: exit {completed.returncode}: "
                               f"{completed.stdout.strip()} {completed.stderr.strip()}")
        return completed.stdout

    def answers(self) -> bool:
        try:
            return "Daemon is up and running" in self.birdc("show", "status", check=False)
        except subprocess.TimeoutExpired:
            return False

    def protocol_state(self, protocol: str) -> str | None:
        """The Info column of `show protocols` for one protocol (Established, Active, Idle...), or its
        State column (up, down, start) when the Info column is empty."""
        for line in self.birdc("show", "protocols", protocol, check=False).splitlines():
            words = line.split()
            if words and words[0] == protocol:
                return words[5] if len(words) > 5 else words[3]
        return None

    def routes(self, net: str) -> list[str]:
        """The protocols through which BIRD knows `net` ("203.0.113.100/32"), best first; [] if none."""
        names = []
        for line in self.birdc("show", "route", net, check=False).splitlines():
            match = _ROUTE.match(line)
            if match and ("*" in line.split("]", 1)[-1].split("(")[0]):
                names.insert(0, match.group(2))
            elif match:
                names.append(match.group(2))
        return names

    def start(self) -> None:
        """Start (or restart after stop) BIRD with its config; return once its socket answers."""
        self.config_path.write_text(self.config_text)
        with open(self.log_path, "ab") as log:
            self.process = self.lab.spawn(self.ns, [BIRD, "-f", "-c", str(self.config_path), "-s", self.socket,
                                                    "-P", str(self.directory / "bird.pid")],
                                          stdout=log, stderr=subprocess.STDOUT)

        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"bird {self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            return self.answers()

        wait_for(ready, START_TIMEOUT_S, interval=0.02, what=f"bird {self.name} to answer on its control socket")

    def stop(self, sig=signal.SIGTERM) -> None:
        """Stop BIRD by its pid (SIGKILL for a crash) and reap it (SIGKILL if it outlives 5 s)."""
        if self.process is not None:
            if sig != signal.SIGTERM:
                self.lab.kill(self.process, sig)
            self.lab.stop(self.process, timeout=5)

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)


def start_bird(lab, ns: str, name: str, config_text: str) -> Bird:
    """Run one BIRD in namespace `ns` with `config_text`; its files in a fresh lab directory."""
    require_bird()
    bird = Bird(lab, name, lab.ns(ns), Path(lab.mkdtemp(f"bird-{name}")), config_text)
    bird.start()
    return bird
