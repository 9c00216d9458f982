"""Test harness for the SNMP agent: the real SnmpAgent on a loop in a thread, a
scriptable Status behind it, net-snmp clients and a real snmptrapd.

The agent serves 127.0.0.1 and [::1] on ports the kernel picks; the test
changes `AgentHarness.status` (a plain frozen Status) and runs net-snmp's
command-line tools against it. Every process started here is killed by pid.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

from hapacs.config import SnmpConfig, SnmpTrapTarget, SnmpUser
from hapacs.status import CheckStatus, Counters, PeerStatus, Status, TransitionRecord, VipStatus
from lab import netns

ROOT = Path(__file__).resolve().parent.parent
# etc/ holds HAPACS-MIB and the IETF modules it imports (etc/MIB-SOURCES.md).
MIB_DIRS = str(ROOT / "etc")
NET_SNMP_TOOLS = ("snmpget", "snmpwalk", "snmpbulkwalk", "snmpset", "snmptrapd", "smilint")
COMMUNITY = "public"
USERS = (
    SnmpUser("nms-sha256", "sha256", "auth-pass-256", "aes128", "priv-pass-128"),
    SnmpUser("nms-sha512", "sha512", "auth-pass-512", "aes256", "priv-pass-256"),
    SnmpUser("nms-sha1", "sha", "auth-pass-sha1", "aes256", "priv-pass-sha1"),
    SnmpUser("nms-nopriv", "sha256", "auth-only-pass", None, None),
)
IF_INDEX = 7


def missing_tools() -> list[str]:
    return [tool for tool in NET_SNMP_TOOLS if not shutil.which(tool)]


def make_status(**changes) -> Status:
    """A MASTER with one peer, two checks and an IPv4 and an IPv6 VIP."""
    status = Status(
        node="pacs-a", cluster_id=51, state="MASTER", since_s=12.4, priority=150,
        effective_priority=140, master="pacs-a", maintenance=False,
        vips=(VipStatus("192.0.2.100/24", "eth0", True), VipStatus("2001:db8::100/64", "eth0", True)),
        peers=(PeerStatus("pacs-b", "192.0.2.12", "BACKUP", 100, 0.08),),
        checks=(CheckStatus("pacs-dicom", "dicom-echo", True, 3.1, "C-ECHO success", 100.0, 0),
                CheckStatus("free-disk", "disk", None, None, "", None, -20)),
        transitions=(
            TransitionRecord("2026-11-28T09:59:00Z", "INIT", "BACKUP", "no MASTER heard", "master-heard", 900.0),
            TransitionRecord("2026-11-28T10:00:00Z", "BACKUP", "MASTER", "master pacs-b silent for 0.35 s",
                             "master-down", 1000.0)),
        counters=Counters(transitions=2, became_master=1, adverts_sent=1000, adverts_received=2000,
                          split_brains=0, peers_lost=1, drops={"auth": 2, "short": 1, "replay": 5}),
        master_address="192.0.2.11", address="192.0.2.11", interface="eth0", advert_interval_s=1.0,
        preempt=True, uptime_s=200.0, version="0.1.0")
    return replace(status, **changes)


# The status's "balance" object (hapacs.balancer.Balancer.snapshot) of a MASTER that balances
# one service over itself and pacs-b; make_status(balance=BALANCE) adds it.
BALANCE = {
    "mode": "proxy", "active": True, "drain": False, "agent_check_bad_requests": 0,
    "services": [{"name": "dicom", "address": "192.0.2.100", "port": 104, "active": True, "members": [
        {"name": "pacs-a", "address": "192.0.2.11", "state": "up", "associations": 3, "total": 120},
        {"name": "pacs-b", "address": "192.0.2.12", "state": "up", "associations": 2, "total": 118}]}],
}


# The status's "bgp" object (hapacs.bgpgate.SessionGate.snapshot) of a node whose one session is up;
# make_status(bgp=BGP) adds it.
BGP = {"protocols": [{"name": "uplink", "state": "Established", "since_s": 12.3}],
       "ready": True, "stable_for_s": 5.0, "hold": None}


def balance_with(*states: str, service: str = "dicom") -> dict:
    """BALANCE with its members (pacs-a, pacs-b, then more) in these states."""
    members = [{"name": f"pacs-{chr(ord('a') + i)}", "address": f"192.0.2.{11 + i}", "state": state,
                "associations": 0 if state == "down" else i + 1, "total": 100 + i} for i, state in enumerate(states)]
    return {**BALANCE, "services": [{**BALANCE["services"][0], "name": service, "members": members}]}


def snmp_config(traps=(), listen=(("127.0.0.1", 0), ("::1", 0)), engine_id=None) -> SnmpConfig:
    return SnmpConfig(listen=tuple(listen), community=COMMUNITY, users=USERS, traps=tuple(traps),
                      engine_id=engine_id)


class AgentHarness:
    """Runs hapacs.snmp.agent.SnmpAgent on its own event loop in a thread."""

    def __init__(self, config: SnmpConfig, state_dir: str | None = None, status: Status | None = None):
        from hapacs.snmp.agent import SnmpAgent
        self.status = status or make_status()
        self.log = logging.getLogger("hapacs.snmp.test")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="snmp-agent-loop", daemon=True)
        self.thread.start()
        self.agent = SnmpAgent(config, "pacs-a", lambda: self.status, self.log, state_dir,
                               if_indexes={"eth0": IF_INDEX})

    def call(self, coroutine, timeout_s: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def start(self) -> "AgentHarness":
        self.call(self.agent.start())
        return self

    def in_loop(self, function, *args, **kwargs):
        """Run a plain function on the agent's loop (as the hapacs shell would) and return its result."""
        async def run():
            return function(*args, **kwargs)
        return self.call(run())

    @property
    def v4(self) -> str:
        host, port = next(a for a in self.agent.addresses if ":" not in a[0])
        return f"udp:{host}:{port}"

    @property
    def v6(self) -> str:
        host, port = next(a for a in self.agent.addresses if ":" in a[0])
        return f"udp6:[{host}]:{port}"

    def close(self) -> None:
        try:
            self.call(self.agent.stop(flush_timeout_s=0.5))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


def net_snmp_env(persistent_dir: Path) -> dict[str, str]:
    """Clients write into SNMP_PERSISTENT_DIR (their own engine boots and caches); keep it in the test's tmp."""
    return {**os.environ, "SNMP_PERSISTENT_DIR": str(persistent_dir), "MIBS": "", "MIBDIRS": MIB_DIRS}


def run(args: list[str], env: dict[str, str], timeout_s: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s)


def v3_args(user: SnmpUser, auth_key: str | None = None, priv_key: str | None = None) -> list[str]:
    auth = {"sha": "SHA", "sha256": "SHA-256", "sha512": "SHA-512"}[user.auth_protocol]
    args = ["-v3", "-u", user.name, "-a", auth, "-A", auth_key or user.auth_key]
    if user.priv_protocol:
        priv = {"aes128": "AES", "aes256": "AES-256"}[user.priv_protocol]
        return args + ["-l", "authPriv", "-x", priv, "-X", priv_key or user.priv_key]
    return args + ["-l", "authNoPriv"]


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def udp_port_is_bound(port: int) -> bool:
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local = line.split()[1]
                if int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.02):
    """lab.netns.wait_for, with `what` third as these tests pass it."""
    return netns.wait_for(condition, timeout_s, interval=interval_s, what=what)


class TrapReceiver:
    """A real snmptrapd on 127.0.0.1:port with its own config and persistent dir.

    It accepts v2c traps with community `public` and v3 informs from the
    authPriv users above; each notification is one line in `log_path`:
    `TRAPD <security info> | <varbinds>`.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_udp_port()
        self.log_path = directory / "traps.log"
        self.config_path = directory / "snmptrapd.conf"
        lines = [f"authCommunity log {COMMUNITY}"]
        for user in USERS:
            if user.priv_protocol:
                auth = {"sha": "SHA", "sha256": "SHA-256", "sha512": "SHA-512"}[user.auth_protocol]
                priv = {"aes128": "AES", "aes256": "AES-256"}[user.priv_protocol]
                lines.append(f"createUser {user.name} {auth} {user.auth_key} {priv} {user.priv_key}")
                lines.append(f"authUser log {user.name} priv")
        self.config_path.write_text("\n".join(lines) + "\n")
        (directory / "persist").mkdir(exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self) -> "TrapReceiver":
        self.process = subprocess.Popen(
            ["snmptrapd", "-f", "-C", "-c", str(self.config_path), f"--persistentDir={self.directory / 'persist'}",
             "-M", MIB_DIRS, "-m", "HAPACS-MIB:VRRPV3-MIB:SNMPv2-MIB", "-Lf", str(self.log_path),
             "-F", "TRAPD %P | %v\n", f"udp:127.0.0.1:{self.port}"],
            env=net_snmp_env(self.directory / "client"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Notifications sent before it listens are lost.
        try:
            wait_for(lambda: udp_port_is_bound(self.port) or self.process.poll() is not None, 10,
                     "snmptrapd to listen")
        except AssertionError:
            self.stop()   # the caller gets no receiver to stop: do not leave snmptrapd running
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"snmptrapd exited: {self.process.stderr.read().decode(errors='replace')}")
        return self

    def lines(self) -> list[str]:
        if not self.log_path.exists():
            return []
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if line.startswith("TRAPD")]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.process and self.process.stderr:
            self.process.stderr.close()


def ber_length(size: int) -> bytes:
    return bytes([size]) if size < 128 else bytes([0x82]) + size.to_bytes(2, "big")


def ber(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + ber_length(len(content)) + content


def ber_integer(value: int) -> bytes:
    return ber(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def ber_oid(oid: tuple[int, ...]) -> bytes:
    body = bytes([40 * oid[0] + oid[1]])
    for arc in oid[2:]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.insert(0, 0x80 | (arc & 0x7F))
        body += bytes(chunk)
    return ber(0x06, body)


def raw_v2c_get(request_id: int, oid: tuple[int, ...], community: str = COMMUNITY) -> bytes:
    """An SNMPv2c GetRequest, BER-encoded by hand (RFC 3416), independent of pysnmp."""
    varbind = ber(0x30, ber(0x30, ber_oid(oid) + b"\x05\x00"))
    pdu = ber(0xA0, ber_integer(request_id) + ber_integer(0) + ber_integer(0) + varbind)
    return ber(0x30, ber_integer(1) + ber(0x04, community.encode()) + pdu)


def response_request_id(message: bytes) -> int:
    """The request-id of a GetResponse: the first INTEGER inside the 0xA2 PDU."""
    at = message.index(b"\xa2", 5)
    at += 2 if message[at + 1] < 0x80 else 2 + (message[at + 1] & 0x7F)
    assert message[at] == 0x02
    size = message[at + 1]
    return int.from_bytes(message[at + 2:at + 2 + size], "big", signed=True)


def trap_target(receiver: TrapReceiver, version: str, user: str | None = None,
                timeout_s: float = 1.0, retries: int = 2, port: int | None = None) -> SnmpTrapTarget:
    return SnmpTrapTarget(host="127.0.0.1", port=port or receiver.port, version=version,
                          community=COMMUNITY if version == "2c" else None, user=user,
                          timeout_s=timeout_s, retries=retries)


# A direct-mode balancer (balance.mode: direct): the kernel counts nothing per member.
DIRECT_BALANCE = {
    "mode": "direct", "active": True, "drain": False,
    "services": [{"name": "dicom", "address": "192.0.2.100", "port": 104, "active": True, "members": [
        {"name": "pacs-a", "address": "192.0.2.11", "state": "up", "buckets": 64, "associations": None,
         "total": None},
        {"name": "pacs-b", "address": "192.0.2.12", "state": "down", "buckets": 0, "associations": None,
         "total": None}]}],
}
