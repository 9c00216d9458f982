"""Network-namespace test lab: a few "machines" on one switched Ethernet segment.

What it is for: end-to-end tests, benchmarks and demos of hapacs need several
hosts that share a LAN, a workstation that uses the PACS through a VIP, and
faults injected on purpose (carrier loss, silent partition, killed servers).
`Lab` builds that from network namespaces on this one machine and removes it
all again, even when the test body fails.

What it must never do: create a device in, or send a packet from, the root
namespace. Every veth is created directly inside lab namespaces, the bridge
lives in its own switch namespace, and the lab namespaces get no default
route, so no packet can leave them. Addresses come only from the documentation
ranges 192.0.2.0/24 and 2001:db8::/32.

Topology of Lab("t1", hosts=("a", "b")), interface names in brackets:

    namespace t1a  [t1a0]  ----  [t1ap]  \\
    namespace t1b  [t1b0]  ----  [t1bp]   bridge t1br in namespace t1sw
    namespace t1ws [t1ws0] ----  [t1wsp] /
"""

import atexit
import ctypes
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = "/run/netns"
# `ip netns exec NS` bind-mounts every file of ETC_NETNS/NS over /etc for the program it runs:
# each lab namespace gets a resolv.conf pointing at 127.0.0.1, so name lookups (DICOM servers
# look up their peers' names) stay inside the namespace and answer at once.
ETC_NETNS = "/etc/netns"
RESOLV_CONF = "nameserver 127.0.0.1\n"
PREFIX_MAX_LEN = 6  # keeps "{prefix}{host}0" within IFNAMSIZ-1 = 15 characters
IFNAME_MAX_LEN = 15
SWITCH, WORKSTATION = "sw", "ws"
HOST_BASE_OCTET = 11  # host i gets 192.0.2.(11+i) and 2001:db8::(11+i)
WORKSTATION_IPV4, WORKSTATION_IPV6 = "192.0.2.200", "2001:db8::200"
IPV4_PREFIXLEN, IPV6_PREFIXLEN = 24, 64
TERM_GRACE_S = 2.0  # teardown: how long SIGTERM gets before SIGKILL
PING_SCRIPT = str(Path(__file__).with_name("ping.py"))
REPO_ROOT = Path(__file__).resolve().parent.parent
CLONE_NEWNET = 0x40000000  # setns(2) flag: enter a network namespace
_libc = ctypes.CDLL(None, use_errno=True)

_NAME_RE = re.compile(r"^[a-z0-9]+$")
_prefix_counter = itertools.count()

# Pinned in every lab namespace. New namespaces copy IPv4 conf from the root
# namespace, so pinning arp_accept to the kernel default keeps results
# independent of how this machine is configured.
_COMMON_SYSCTLS = (
    "net.ipv4.conf.all.arp_accept=0",
    "net.ipv4.conf.default.arp_accept=0",
    # IPv6 addresses usable at once: DAD would keep them tentative ~1.2 s.
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.dad_transmits=0",
    "net.ipv6.conf.default.dad_transmits=0",
    # No router solicitations: there is no router, they are only noise.
    "net.ipv6.conf.all.router_solicitations=0",
    "net.ipv6.conf.default.router_solicitations=0",
)
# A VIP is a secondary IPv4 address; without this, deleting the primary
# address would silently delete the VIP too
# (net.ipv4.conf.*.promote_secondaries).
_HOST_SYSCTLS = (
    "net.ipv4.conf.all.promote_secondaries=1",
    "net.ipv4.conf.default.promote_secondaries=1",
)
# The switch is a pure layer-2 box: no IPv6 on its ports means no link-local
# addresses, MLD reports or solicitations from it.
_SWITCH_SYSCTLS = (
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
)

# Silent partition: the switch drops every frame from or to a port in this
# set. Keyed by port name, so it survives link_down/link_up (a bridge port
# state would be reset to forwarding by the next carrier change).
_PARTITION_RULESET = """\
table bridge lab {
    set cut { type ifname; }
    chain drop_cut_ports {
        type filter hook forward priority 0; policy accept;
        iifname @cut drop
        oifname @cut drop
    }
}
"""


class LabCommandError(subprocess.CalledProcessError):
    """A lab command failed; the message names the namespace and shows stderr."""

    def __init__(self, namespace, completed):
        super().__init__(completed.returncode, completed.args, completed.stdout, completed.stderr)
        self.namespace = namespace

    def __str__(self):
        return (f"in namespace {self.namespace}: {' '.join(map(str, self.cmd))} "
                f"exited {self.returncode}: {(self.stderr or '').strip()}")


@dataclass(frozen=True)
class Node:
    """One machine of the lab: a host or the workstation."""

    name: str  # "a", "b", ... or "ws"
    ns: str  # its network namespace
    ifname: str  # its interface, inside ns
    switch_port: str  # the other end of its veth, in the switch namespace
    ipv4: str  # address without prefix length, e.g. "192.0.2.11"
    ipv6: str  # e.g. "2001:db8::11"



def repo_pythonpath() -> str:
    """PYTHONPATH for a lab module run with `python -m lab.X` in a namespace: the repository
    first, then whatever the caller had."""
    return os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))

def wait_for(predicate, timeout, interval=0.02, what="condition"):
    """Poll `predicate` until it returns something truthy, and return that.

    Raises AssertionError naming `what` once `timeout` seconds have passed.
    This is the lab's only way to wait: tests never sleep a fixed time.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def log_tail(path, lines: int = 15) -> str:
    """The last `lines` lines of a lab server's log file, for an error message; "(no log)" if none."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def hold_for(predicate, duration, interval=0.05, what="condition"):
    """Assert that predicate() stays true for `duration` seconds (checked every `interval`).

    For negative results ("nothing moves"), where there is no event to wait for.
    """
    deadline = time.monotonic() + duration
    while True:
        if not predicate():
            raise AssertionError(f"{what}: stopped holding after {duration - (deadline - time.monotonic()):.2f} s")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def in_namespace(pid: int, namespace: str) -> bool:
    """True if process `pid` is (already) inside the named network namespace.

    A process started through `ip netns exec` is in the root namespace for its first
    moments, until its setns().
    """
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"{NETNS_DIR}/{namespace}").st_ino
    except FileNotFoundError:
        return False


def _base36(number: int, width: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    for _ in range(width):
        number, digit = divmod(number, 36)
        text = digits[digit] + text
    return text


def unique_prefix(tag: str = "t") -> str:
    """A fresh 6-character lab prefix: tag + pid + counter, not used by any namespace.

    `tag` is 1 or 2 lowercase letters/digits saying who made the lab (test,
    bench, demo). Fixed-length prefixes are never a prefix of one another, so
    `cleanup_stale` of one can never remove another's namespaces.
    """
    if not (1 <= len(tag) <= 2 and _NAME_RE.match(tag)):
        raise ValueError(f"tag {tag!r}: use 1 or 2 characters from a-z, 0-9")
    pid_part = _base36(os.getpid(), 3)  # the pid's last 3 base-36 digits; clashes are skipped below
    counter_width = PREFIX_MAX_LEN - len(tag) - len(pid_part)
    in_use = list_namespaces()
    for _ in range(36 ** counter_width):
        prefix = tag + pid_part + _base36(next(_prefix_counter), counter_width)
        if not any(name.startswith(prefix) for name in in_use):
            return prefix
    raise RuntimeError(f"no free lab prefix for tag {tag!r}: run cleanup_stale")


def enter_netns(namespace: str) -> None:
    """Move the calling thread into the named network namespace.

    setns(2) moves only the calling thread; threads it creates afterwards inherit the
    namespace. Python 3.11 has no os.setns, hence ctypes.
    """
    descriptor = os.open(f"{NETNS_DIR}/{namespace}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(descriptor, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
    finally:
        os.close(descriptor)


def netns_exec(namespace: str) -> list[str]:
    """The command prefix that runs a program inside `namespace`. `ip netns exec` execs the
    program without forking (so a Popen's pid is the program's own) and gives it the
    namespace's /etc/netns files (its resolv.conf)."""
    return ["ip", "netns", "exec", namespace]


def _forget_etc(namespace: str) -> None:
    shutil.rmtree(os.path.join(ETC_NETNS, namespace), ignore_errors=True)


def _require_free_prefix(prefix: str) -> None:
    clashing = [name for name in list_namespaces() if name.startswith(prefix)]
    if clashing:
        raise RuntimeError(f"namespaces with prefix {prefix!r} already exist: {clashing}; "
                           f"call lab.netns.cleanup_stale({prefix!r}) if a run crashed")


def _run(argv, check=True, timeout=10.0, input=None, namespace="root"):
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and completed.returncode != 0:
        raise LabCommandError(namespace, completed)
    return completed


def _kill_everything_in(namespace: str) -> list[int]:
    """SIGKILL every process living in `namespace` (by pid); return those pids.

    Processes keep a namespace alive after `ip netns del`, invisible to
    `ip netns list`. Anything still inside a lab namespace at teardown was
    started for the lab (by a test, not via Lab.spawn), so it goes too.
    """
    listed = _run(["ip", "netns", "pids", namespace], check=False)
    pids = [int(word) for word in listed.stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + TERM_GRACE_S
    for pid in pids:  # reap our own children among them, so no zombie is left
        try:
            while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
                time.sleep(0.01)
        except ChildProcessError:
            pass  # not our child: its own parent reaps it
    return pids


def cleanup_stale(prefix: str) -> list[str]:
    """Remove namespaces (and processes in them) left by a crashed lab with `prefix`.

    Every namespace whose name starts with `prefix` is removed, so pass a full
    lab prefix. Returns the namespaces removed.
    """
    _check_prefix(prefix)
    removed = []
    for name in list_namespaces():
        if name.startswith(prefix):
            _kill_everything_in(name)
            _run(["ip", "netns", "del", name])
            _forget_etc(name)
            removed.append(name)
    return removed


def _check_prefix(prefix: str):
    if not (1 <= len(prefix) <= PREFIX_MAX_LEN and _NAME_RE.match(prefix)):
        raise ValueError(f"lab prefix {prefix!r}: use 1 to {PREFIX_MAX_LEN} characters from a-z, 0-9")


def _check_hosts(prefix: str, hosts):
    if not hosts:
        raise ValueError("a lab needs at least one host")
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"host names repeat: {hosts}")
    if len(hosts) > 89:  # 192.0.2.11 + i must stay below the VIPs and the workstation
        raise ValueError("at most 89 hosts")
    for host in hosts:
        if not _NAME_RE.match(host) or host in (SWITCH, WORKSTATION):
            raise ValueError(f"host name {host!r}: use a-z, 0-9, and not 'sw' or 'ws'")
        if len(prefix + host + "0") > IFNAME_MAX_LEN:
            raise ValueError(f"host name {host!r} too long: interface name "
                             f"{prefix + host + '0'!r} exceeds {IFNAME_MAX_LEN} characters")


def _require_root_and_tools():
    missing = []
    if os.geteuid() != 0:
        missing.append("root privileges (run as root)")
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            missing.append(f"the '{tool}' command")
    if missing:
        raise RuntimeError("the network lab needs " + ", ".join(missing))


class Lab:
    """A switched LAN of hosts (and a workstation) in network namespaces.

    Use as a context manager; everything is built in the constructor and
    removed by close(), which __exit__ calls even when the body raised.
    """

    def __init__(self, prefix: str, hosts=("a", "b"), workstation: bool = True):
        _check_prefix(prefix)
        hosts = tuple(hosts)
        _check_hosts(prefix, hosts)
        _require_root_and_tools()
        _require_free_prefix(prefix)
        self.prefix = prefix
        self.switch_ns = prefix + SWITCH
        self.bridge = prefix + "br"
        self.hosts = {
            host: self._node(host, f"192.0.2.{HOST_BASE_OCTET + i}", f"2001:db8::{HOST_BASE_OCTET + i}")
            for i, host in enumerate(hosts)
        }
        self.workstation = (self._node(WORKSTATION, WORKSTATION_IPV4, WORKSTATION_IPV6)
                            if workstation else None)
        self._build_or_close()

    def _build_or_close(self):
        """Build the lab (`_build`, the topology's own); whatever was built is removed again if
        that fails halfway."""
        self._namespaces = []  # created so far, for teardown
        self._processes = []  # spawned so far, for teardown
        self._close_callbacks = []  # at_close(), run first at teardown, newest first
        self._partitioned = set()
        self._partition_ready = False
        self._closed = False
        self.tmpdir = tempfile.mkdtemp(prefix=f"lab-{self.prefix}-")  # logs, configs, server storage
        atexit.register(self.close)  # last resort if the owner forgets close()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _node(self, name, ipv4, ipv6) -> Node:
        return Node(name=name, ns=self.prefix + name, ifname=f"{self.prefix}{name}0",
                    switch_port=f"{self.prefix}{name}p", ipv4=ipv4, ipv6=ipv6)

    @property
    def nodes(self) -> list[Node]:
        """Hosts in order, then the workstation if there is one."""
        return list(self.hosts.values()) + ([self.workstation] if self.workstation else [])

    # ---- building -------------------------------------------------------

    def _add_namespace(self, name, sysctls):
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        os.makedirs(os.path.join(ETC_NETNS, name), exist_ok=True)
        with open(os.path.join(ETC_NETNS, name, "resolv.conf"), "w") as handle:
            handle.write(RESOLV_CONF)
        self.exec(name, ["ip", "link", "set", "lo", "up"])
        self.exec(name, ["sysctl", "-q", "-w", *sysctls])

    def _build(self):
        self._add_namespace(self.switch_ns, _COMMON_SYSCTLS + _SWITCH_SYSCTLS)
        # No multicast snooping: without a querier it would start filtering
        # groups after timeouts, and heartbeats or NS must always be flooded.
        self.exec(self.switch_ns, ["ip", "link", "add", self.bridge, "type", "bridge",
                                   "mcast_snooping", "0"])
        self.exec(self.switch_ns, ["ip", "link", "set", self.bridge, "up"])
        for node in self.nodes:
            extra = _HOST_SYSCTLS if node.name in self.hosts else ()
            self._add_namespace(node.ns, _COMMON_SYSCTLS + extra)
            # Both ends are created directly in their namespaces: no device
            # ever exists in the root namespace, not even for a moment.
            _run(["ip", "link", "add", node.ifname, "netns", node.ns, "type", "veth",
                  "peer", "name", node.switch_port, "netns", self.switch_ns])
            self.exec(self.switch_ns, ["ip", "link", "set", node.switch_port,
                                       "master", self.bridge, "up"])
            self.exec(node.ns, ["ip", "link", "set", node.ifname, "up"])
            self.exec(node.ns, ["ip", "addr", "add", f"{node.ipv4}/{IPV4_PREFIXLEN}",
                                "dev", node.ifname])
            self.exec(node.ns, ["ip", "addr", "add", f"{node.ipv6}/{IPV6_PREFIXLEN}",
                                "dev", node.ifname, "nodad"])

    # ---- naming ----------------------------------------------------------

    def node(self, name: str) -> Node:
        """The Node for a host name, "ws", or its namespace name."""
        for node in self.nodes:
            if name in (node.name, node.ns):
                return node
        raise KeyError(f"lab {self.prefix}: no host or workstation {name!r}")

    def ns(self, name: str) -> str:
        """Namespace name for a host name, "ws", "sw", or a namespace name of this lab."""
        if name in (SWITCH, self.switch_ns):
            return self.switch_ns
        return self.node(name).ns

    # ---- running programs -------------------------------------------------

    def _enter(self, ns_or_host):
        namespace = self.ns(ns_or_host)
        return namespace, netns_exec(namespace)

    def exec(self, ns_or_host, argv, check=True, timeout=10.0, input=None) -> subprocess.CompletedProcess:
        """Run a short command inside a namespace and return it (text output captured)."""
        namespace, prefix = self._enter(ns_or_host)
        return _run(prefix + list(argv), check=check, timeout=timeout, input=input, namespace=namespace)

    def spawn(self, ns_or_host, argv, env=None, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL, cwd=None) -> subprocess.Popen:
        """Start a long-running program inside a namespace; teardown will stop it.

        `env` holds variables added to this process's environment. The returned
        Popen's pid is the program's real pid.
        """
        _namespace, prefix = self._enter(ns_or_host)
        full_env = {**os.environ, **(env or {})}
        # A new session keeps a terminal's Ctrl-C away from the children, so
        # teardown (not the terminal) decides when and how they stop.
        process = subprocess.Popen(prefix + list(argv), env=full_env, stdin=subprocess.DEVNULL,
                                   stdout=stdout, stderr=stderr, cwd=cwd, start_new_session=True)
        self._processes.append(process)
        return process

    def kill(self, process: subprocess.Popen, sig=signal.SIGTERM):
        """Send `sig` to a spawned process by its pid, if it still runs."""
        if process.poll() is None:
            os.kill(process.pid, sig)

    def stop(self, process: subprocess.Popen, timeout=TERM_GRACE_S) -> int:
        """SIGTERM, wait up to `timeout` s, then SIGKILL; reap it and return its exit code."""
        self.kill(process, signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(process, signal.SIGKILL)
            return process.wait(5)

    def ping(self, source, destination: str, timeout=1.0) -> bool:
        """One ICMP echo from a host/workstation to an address; True on a reply."""
        completed = self.exec(source, [sys.executable, PING_SCRIPT, destination,
                                       "--timeout", str(timeout)],
                              check=False, timeout=timeout + 10)
        return completed.returncode == 0

    # ---- faults -------------------------------------------------------------

    def link_down(self, host):
        """Carrier loss seen by the host: the switch-side veth goes down.

        The host's own interface stays administratively UP but loses
        LOWER_UP (NO-CARRIER), like a pulled cable or a dead switch port.
        """
        self.exec(self.switch_ns, ["ip", "link", "set", self.node(host).switch_port, "down"])

    def link_up(self, host):
        """Undo link_down: the switch port comes up and the host regains carrier."""
        self.exec(self.switch_ns, ["ip", "link", "set", self.node(host).switch_port, "up"])

    def carrier(self, host) -> bool:
        """True if the host's interface shows LOWER_UP."""
        node = self.node(host)
        shown = self.exec(node.ns, ["ip", "-j", "link", "show", "dev", node.ifname])
        return "LOWER_UP" in json.loads(shown.stdout)[0]["flags"]

    def partition(self, host):
        """Silent partition: the host keeps carrier, but its switch port passes nothing either way."""
        if not self._partition_ready:
            self.exec(self.switch_ns, ["nft", "-f", "-"], input=_PARTITION_RULESET)
            self._partition_ready = True
        port = self.node(host).switch_port
        self.exec(self.switch_ns, ["nft", "add", "element", "bridge", "lab", "cut", f"{{ {port} }}"])
        self._partitioned.add(port)

    def heal(self, host):
        """Undo partition(host)."""
        port = self.node(host).switch_port
        if port in self._partitioned:
            self.exec(self.switch_ns, ["nft", "delete", "element", "bridge", "lab", "cut", f"{{ {port} }}"])
            self._partitioned.discard(port)

    # ---- observing ------------------------------------------------------------

    def hold_for(self, predicate, duration, interval=0.05, what="condition"):
        return hold_for(predicate, duration, interval, what)

    def addresses(self, host) -> set[str]:
        """Addresses with prefix length on the host's interface, e.g. "192.0.2.100/24".

        Link-local IPv6 addresses are left out: every interface has one.
        """
        node = self.node(host)
        shown = self.exec(node.ns, ["ip", "-j", "addr", "show", "dev", node.ifname])
        return {f"{info['local']}/{info['prefixlen']}"
                for link in json.loads(shown.stdout) for info in link.get("addr_info", [])
                if info.get("scope") != "link"}

    def holders(self, vip: str, hosts=None) -> list[str]:
        """Hosts (in lab order; among `hosts` when given) whose interface has `vip` ("192.0.2.100"
        or with "/24")."""
        wanted = ipaddress.ip_interface(vip).ip
        return [host for host in self.hosts if (hosts is None or host in hosts)
                and any(ipaddress.ip_interface(a).ip == wanted for a in self.addresses(host))]

    wait_for = staticmethod(wait_for)

    def mkdtemp(self, name: str) -> str:
        """A fresh directory under the lab's tmpdir, removed at teardown."""
        return tempfile.mkdtemp(prefix=name + "-", dir=self.tmpdir)

    # ---- teardown ---------------------------------------------------------

    def at_close(self, callback):
        """Run `callback()` first at close(), before the generic SIGTERM to every process.

        For servers that need their own way down, e.g. a database whose
        SIGTERM waits for its clients. Callbacks run newest first; one that
        raises is reported with the other teardown problems.
        """
        self._close_callbacks.append(callback)

    def close(self):
        """Stop every spawned process, delete every namespace and the tmpdir.

        Safe to call twice. Does all the steps even if one fails, then raises
        RuntimeError naming what could not be removed.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        problems = []
        for callback in reversed(self._close_callbacks):
            try:
                callback()
            except Exception as error:  # teardown goes on; the error is reported below
                problems.append(f"close callback {callback!r}: {error}")
        self._stop_all()
        for namespace in reversed(self._namespaces):
            try:
                strays = _kill_everything_in(namespace)
                if strays:
                    print(f"lab {self.prefix}: killed processes left in {namespace}: {strays}",
                          file=sys.stderr)
                _run(["ip", "netns", "del", namespace])
                _forget_etc(namespace)
            except (OSError, subprocess.SubprocessError) as error:
                problems.append(f"{namespace}: {error}")
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        if problems:
            raise RuntimeError("lab teardown incomplete: " + "; ".join(problems))

    def _stop_all(self):
        running = [p for p in self._processes if p.poll() is None]
        for process in running:
            self.kill(process, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE_S
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(process, signal.SIGKILL)
                process.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
