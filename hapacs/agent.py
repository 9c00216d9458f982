"""The asyncio shell: the one place where hapacs touches the world.

It turns sockets, timers, netlink events, check results, signals and
control commands into calls on the election core, carries out the effects
the core returns, in order, and re-arms the core's single timer. The core
decides; this module only does. Nothing here may block the loop: netlink
is asynchronous, checks and notify scripts run in threads or processes.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import signal
import time
from typing import Callable

from . import __version__, balancer, bird, etcdauthority, hostcheck, timing, wire
from .announce import Announcer
from .book import StatusBook
from .bootid import next_boot_id
from .commands import Commands
from .config import Config
from .control import ControlError, ControlServer
from .drain import Drainer
from .effectrunner import EffectRunner
from .election import CommandRefused, Election
from .heartbeat import HeartbeatWriter
from .hostsetup import (
    StartupError, election_params, heartbeat_address, promote_secondaries, skip_own_address,
)
from .logs import RateLimited
from .netlink import Link, LinkEvent, Netlink
from .notify import NotifyListener
from .sdnotify import SystemdNotifier
from .status import Status
from .transport import HeartbeatTransport
from .vips import VipManager

log = logging.getLogger("hapacs")


@functools.lru_cache(maxsize=1024)
def _packed(address: str) -> bytes:
    """The address's bytes, as the core ranks peers by them; peers are few, cache them."""
    return ipaddress.ip_address(address).packed


def _plain(address: str) -> str:
    return address.split("%", 1)[0]


class Agent:
    def __init__(self, config: Config):
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.core: Election | None = None
        self.netlink = Netlink()
        self.announcer = Announcer()
        self.vips: VipManager | None = None
        self.transport: HeartbeatTransport | None = None
        self.control: ControlServer | None = None
        self.checks = None            # hapacs.checks.runner.CheckRunner, imported only when configured
        self.snmp = None              # hapacs.snmp.agent.SnmpAgent, imported only when configured
        self.metrics = None           # hapacs.metrics.MetricsServer, imported only when configured
        self.witness = None           # hapacs.witness.WitnessRunner, only when witnesses are configured
        self.balancer: balancer.Engine | None = None     # HAProxy or nftables direct routing, with balance:
        self.bgp: bird.BgpWatch | None = None              # the BGP session gate, with bgp:
        self.authority: etcdauthority.EtcdAuthority | None = None   # the etcd lease, with authority: etcd
        self.links: dict[str, Link] = {}
        self.own_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self.writer: HeartbeatWriter | None = None
        self.replay_guard = wire.ReplayGuard()
        self.vip_digest = wire.vip_digest(v.label for v in config.vips)
        self.book = StatusBook()
        self.commands = Commands(self)
        self.effects = EffectRunner(self)
        self.started_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks: list[asyncio.Task] = []
        self.stopped = asyncio.Event()
        self._stopping = False
        self.drainer: Drainer | None = None
        self._limited = RateLimited(log)
        # Effect observers: the book and the commands first, then SNMP, notify, systemd.
        self.effects.listeners += [lambda effect: self.book.effect(effect, self.loop.time()),
                                   self.commands.observe]
        self.notifier = NotifyListener(config.notify, config.node.name, [v.label for v in config.vips],
                                       logging.getLogger("hapacs.notify"))
        self.systemd = SystemdNotifier(self.status)
        self.on_ready: Callable[[], None] | None = None   # hapacs.daemon: told once the agent serves

    @property
    def keys(self) -> tuple[bytes, ...]:   # the first signs, any verifies
        return self.config.cluster.auth_keys

    @property
    def unicast(self) -> bool:
        return self.config.cluster.unicast

    @property
    def peer_sources(self) -> set[str]:   # with unicast: cluster.peers, this node's own left out
        return {str(p) for p in self.config.cluster.peers}

    # --- life cycle ---------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.started_at = self.loop.time()
        try:
            await self._setup()
        except (StartupError, ControlError) as err:
            log.error("cannot start: %s", err)
            await self._teardown()
            return 1
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.request_stop, signum)
        self.loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self.systemd.ready()
        if self.on_ready is not None:
            self.on_ready()
        try:
            await self.stopped.wait()
        finally:
            await self._teardown()
        log.info("stopped")
        return 0

    async def _setup(self) -> None:
        config = self.config
        # Before anything else: a second agent must not touch the running one's VIPs or socket.
        self.control = ControlServer(config.control.socket, config.control.group, self.commands.handle)
        self.control.check_free()
        lease = await self._open_host()
        if config.checks:
            self._start_checks()
        self._start_witness()
        await self._open_sockets()
        self.balancer = await balancer.start(self)
        self.bgp = await bird.start(self)
        self.authority = await etcdauthority.start(self)
        if config.snmp is not None:
            await self._start_snmp()
        if config.metrics is not None:
            await self._start_metrics()
        self.start_task(self.effects.worker(), "effects")
        self.start_task(self._watch_netlink(), "netlink")
        mode = (f"unicast to {', '.join(str(p) for p in config.cluster.peers)}" if config.cluster.unicast
                else f"multicast {config.cluster.multicast_group}")
        log.info("hapacs %s starting: node %s priority %d, cluster %d on %s (%s, heartbeats from %s every "
                 "%g s, dead after %d), VIPs %s, lease %d s", __version__, config.node.name,
                 config.node.priority, config.cluster.id, config.cluster.interface, mode, self.own_address,
                 config.cluster.advert_interval_s, config.cluster.dead_after,
                 ", ".join(v.label for v in config.vips), lease)
        self.effects.listeners += [self.notifier, self.systemd.listener]
        self.start_task(self.systemd.watchdog_loop(), "watchdog")
        self.feed(self.core.start)

    async def _open_host(self) -> int:
        """Links, addresses, the core, the VIPs and the drainer; the VIP lease in seconds."""
        config = self.config
        await self.netlink.open()
        problems = await hostcheck.check(config, self.netlink)
        if problems:
            raise StartupError("; ".join(str(p) for p in problems))
        for name in config.interfaces:
            link = await self.netlink.link(name)
            if link is None:
                raise StartupError(f"interface {name} not found (cluster.interface or vips[].interface)")
            self.links[name] = link
        addresses = await self.netlink.addresses(self.links[config.cluster.interface].index)
        self.own_address = heartbeat_address(config, addresses)
        self.config = config = skip_own_address(config, self.own_address)
        self.writer = HeartbeatWriter(config.cluster.id, config.node.name,
                                      next_boot_id(config.node.state_dir, time.time_ns()))
        now = self.loop.time()
        self.core = Election(election_params(config, self.own_address), now)
        lease = timing.lease_seconds(config.master_down_interval_s, config.cluster.advert_interval_s)
        self.vips = VipManager(self.netlink, self.announcer, config.vips, lease, self._vip_failed)
        for link in self.links.values():
            self.vips.set_link(link)
            if not link.up:
                self.core.set_fault(f"link:{link.name}", f"link {link.name} down ({link.state})", now)
        promote_secondaries(config)
        self.drainer = Drainer(config.drain_targets, config.handover.hold_new_connections)
        await self.drainer.clear_stale()
        present = await self.vips.find_present()
        if present:
            log.info("found %s already on this host (left by an earlier agent?); removed unless this node "
                     "becomes MASTER", ", ".join(present))
        return lease

    async def _open_sockets(self) -> None:
        config = self.config
        self.transport = HeartbeatTransport(config.cluster.interface, self.links[config.cluster.interface].index,
                                            self.own_address, config.cluster.port, config.cluster.peers,
                                            config.cluster.multicast_group)
        try:
            await self.transport.open(self._on_datagram)
        except OSError as err:
            raise StartupError(f"cannot open the heartbeat socket on {self.own_address} port "
                               f"{config.cluster.port}: {err.strerror or err}") from None
        try:
            await self.control.start()
        except OSError as err:
            raise StartupError(f"cannot create the control socket {config.control.socket}: "
                               f"{err.strerror or err}") from None

    def _start_checks(self) -> None:
        from .checks.runner import CheckRunner   # pynetdicom and threads only when checks exist
        self.checks = CheckRunner(self.config.checks, self._on_checks, logging.getLogger("hapacs.checks"))
        self.core.set_hold("checks", "waiting for the first check results", self.loop.time())
        self.checks.start()

    async def _start_snmp(self) -> None:
        from .snmp.agent import SnmpAgent, SnmpBindError   # pysnmp only when SNMP is configured
        self.snmp = SnmpAgent(self.config.snmp, self.config.node.name, self.status,
                              logging.getLogger("hapacs.snmp"), self.config.node.state_dir,
                              if_indexes={name: link.index for name, link in self.links.items()})
        try:
            await self.snmp.start()
        except SnmpBindError as err:
            raise StartupError(str(err)) from None
        self.effects.listeners.append(self.snmp.observe)

    async def _start_metrics(self) -> None:
        from .metrics import MetricsServer   # prometheus_client only when metrics are configured
        self.metrics = MetricsServer(self.config.metrics.listen, self.status, logging.getLogger("hapacs.metrics"))
        try:
            await self.metrics.start()
        except OSError as err:
            raise StartupError(self.metrics.bind_error(err)) from None

    def _start_witness(self) -> None:
        if not self.config.cluster.witness:
            return
        from .witness import WitnessRunner
        self.witness = WitnessRunner(
            self.config.cluster.witness,
            lambda ok, text, started: self.feed(lambda now: self.core.set_witness(ok, text, now, started)),
            self.core.hears_no_peer)
        self.witness.start()

    def request_stop(self, signum: int | None = None) -> None:
        """SIGTERM/SIGINT: leave cleanly; a second one stops at once."""
        if self._stopping:
            log.warning("second stop request: stopping now")
            self.stopped.set()
            return
        self._stopping = True
        self.systemd.stopping()
        name = signal.Signals(signum).name if signum else "stop request"
        drain = self.config.handover.shutdown_drain_timeout_s
        log.info("%s: leaving the cluster (a MASTER hands over first, draining up to %g s)", name, drain)
        self.feed(lambda now: self.core.shutdown(drain, now))
        self.loop.call_later(timing.stop_limit_s(drain, self.config.master_down_interval_s), self._stop_deadline)

    def _stop_deadline(self) -> None:
        if not self.stopped.is_set():
            log.warning("stop took too long; releasing the VIPs and leaving now")
            self.stopped.set()

    async def _teardown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for runner in (self.checks, self.witness):
            if runner is not None:
                await runner.stop()
        if self.vips is not None:
            await self.vips.close()
            # Held VIPs are this agent's (a second one stops at check_free()) or a dead one's: removed.
            if any(self.vips.held.values()) or self.vips.wanted:
                await self.vips.release()
        if self.drainer is not None:
            await self.drainer.release_hold()
        await self.notifier.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.transport is not None:
            self.transport.close()
        for server in (self.control, self.snmp, self.metrics, self.balancer, self.bgp, self.authority):
            if server is not None:
                await server.stop()
        self.announcer.close()
        await self.netlink.close()

    def start_task(self, coroutine, name: str) -> None:
        """A task the agent owns: cancelled and awaited at teardown."""
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(self.loop.create_task(coroutine, name=name))

    # --- feeding the core -----------------------------------------------------------

    def feed(self, call: Callable[[float], list]) -> list:
        """Call the core with the current time, queue its effects and re-arm its timer."""
        try:
            effects = call(self.loop.time())
        except CommandRefused:
            raise
        except Exception:
            log.exception("internal error in the election core; the agent carries on")
            effects = []
        self.effects.dispatch(effects)
        self._rearm()
        return effects

    def _rearm(self) -> None:
        deadline = self.core.next_deadline() if self.core else None
        if self._timer is not None:
            if deadline == self._timer_at:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._timer_at
        now = self.loop.time()
        self.book.late.record(now - deadline, now)
        self.feed(lambda now: self.core.handle_timer(max(now, deadline)))

    def _on_datagram(self, data: bytes, source: str) -> None:
        now = self.loop.time()
        source = _plain(source)
        if self.unicast and source not in self.peer_sources:
            self._drop("unknown_sender", source, "not one of cluster.peers", now)
            return
        try:
            advert = wire.decode(data, self.keys, self.config.cluster.id)
            self.replay_guard.check(advert)
        except wire.WireError as err:
            self._drop(err.code, source, err.reason, now)
            self._unreadable(data, source, err.code)
            return
        self.book.heard(advert.node, source)
        packed = _packed(source)
        self.feed(lambda t: self.core.receive(advert, packed, t))

    def _unreadable(self, data: bytes, source: str, code: str) -> None:
        """A peer's heartbeat it cannot accept: a misconfigured peer (multicast: another cluster id is not)."""
        if code != "auth" and not (code == "cluster" and self.unicast):
            return
        claimed = wire.peek(data)
        if claimed is not None:
            packed = _packed(source)
            self.feed(lambda now: self.core.unreadable(packed, code, claimed, now))

    def _drop(self, code: str, source: str, reason: str, now: float) -> None:
        self.book.dropped(code)
        if code == "cluster" and not self.unicast:
            return   # another cluster on the same multicast segment: normal, not worth a log line
        self._limited.warning(f"drop-{code}", now, "dropped a heartbeat from %s (%s): %s", source, code, reason)

    def _on_checks(self, verdict, changes) -> None:
        self.feed(lambda now: self.core.set_checks(verdict.pending, verdict.penalty, verdict.fault, now))
        if self.snmp is not None:
            for change in changes:
                self.snmp.notify("check_up" if change.up else "check_down", check=change.name,
                                 message=change.reason)

    def _vip_failed(self, text: str) -> None:
        log.error("VIP problem: %s", text)
        self.feed(lambda now: self.core.vip_failed(text, now))

    async def _watch_netlink(self) -> None:
        try:
            await self.netlink.watch(self._on_netlink)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("netlink event watch failed; link changes are no longer seen")

    def _on_netlink(self, event) -> None:
        if not isinstance(event, LinkEvent):
            return
        link, old = event.link, self.links.get(event.link.name)
        if old is None or old.index != link.index:
            return
        self.links[link.name] = link
        self.vips.set_link(link)
        if old.up != link.up:
            (log.info if link.up else log.warning)("link %s %s", link.name,
                                                   "is up again" if link.up else f"lost ({link.state})")
            fault = None if link.up else f"link {link.name} down ({link.state})"
            self.feed(lambda now: self.core.set_fault(f"link:{link.name}", fault, now, f"link {link.name} up"))

    # --- status -----------------------------------------------------------------------------

    def state_name(self) -> str:
        return self.core.view(self.loop.time()).state.name

    def status(self) -> Status:
        now = self.loop.time()
        return self.book.snapshot(
            node=self.config.node.name, cluster_id=self.config.cluster.id, view=self.core.view(now),
            own_address=str(self.own_address), interface=self.config.cluster.interface,
            vips=self.vips.statuses(), checks=self.checks.snapshot(now) if self.checks else (),
            advert_interval_s=self.config.cluster.advert_interval_s, preempt=self.config.cluster.preempt,
            uptime_s=now - self.started_at, version=__version__, pid=os.getpid(), now=now,
            bad_requests=bad_requests(self), balance=self.balancer.snapshot() if self.balancer else None,
            bgp=self.bgp.snapshot() if self.bgp else None)

    # --- reload ---------------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        self.start_task(self.commands.reload_from_signal(), "reload")

    async def apply_config(self, new: Config, new_links: dict[str, Link]) -> None:
        """A valid configuration that needs no restart (reload.restart_needed): apply it whole."""
        old, self.config = self.config, new
        self.vip_digest = wire.vip_digest(v.label for v in new.vips)
        self.notifier.reconfigure(new.notify, [v.label for v in new.vips])
        self.transport.peers = new.cluster.peers
        for link in new_links.values():
            self.links[link.name] = link
            self.vips.set_link(link)
        lease = timing.lease_seconds(new.master_down_interval_s, new.cluster.advert_interval_s)
        async with self.effects.vip_lock:
            await self.vips.update(new.vips, lease)
        self.drainer.reconfigure(new.drain_targets, new.handover.hold_new_connections)
        self.feed(lambda now: self.core.reconfigure(election_params(new, self.own_address), now))
        if self.balancer is not None:
            await self.balancer.reconfigure(new)
        if old.checks != new.checks:
            if self.checks is not None:
                await self.checks.stop()
                self.checks = None
                # No check any more: nothing to wait for, no penalty, no fault from checks.
                self.feed(lambda now: self.core.set_checks(None, 0, None, now))
            if new.checks:
                self._start_checks()
        if old.cluster.witness != new.cluster.witness:
            if self.witness is not None:
                await self.witness.stop()
                self.witness = None
            self._start_witness()
            if self.witness is not None:
                self.witness.request()


def bad_requests(agent: Agent) -> dict[str, int]:
    """Requests that could not be read, by where they came in (heartbeats: `drops`)."""
    counts = {"control": agent.control.bad_requests if agent.control else 0}
    if agent.config.snmp is not None:
        counts["snmp"] = agent.snmp.bad_requests if agent.snmp else 0
    return counts


def run(config: Config) -> int:
    """Run the agent in the foreground until SIGTERM; the process exit code."""
    return asyncio.run(Agent(config).run())
