"""The asyncio shell: the one place where hapacs touches the world.

It turns sockets, timers, netlink events, check results, signals and
control commands into calls on the election core, carries out the effects
the core returns, in order, and re-arms the core's single timer. The core
decides; this module only does. Nothing here may block the loop: netlink
is asynchronous, checks and notify scripts run in threads or processes.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import ipaddress
import logging
import os
import signal
import struct
import time
from typing import Callable

from . import __version__, hostcheck, wire
from .announce import Announcer
from .bootid import next_boot_id
from .config import Config
from .config import ConfigError, load
from .control import ControlError, ControlServer
from .drain import Drainer, DrainResult
from .effects import (
    AcquireVips, Announce, HandoverDone, Notice, PeerChange, ProbeWitness, ReleaseVips, SendAdvert,
    SplitBrain, StartDrain, Stopped, Transition,
)
from .election import CommandRefused, Election, Params
from .lateness import LatenessMeter
from .logs import RateLimited
from .netlink import Link, LinkEvent, Netlink
from .notify import NotifyListener
from .reload import describe, restart_needed
from .sdnotify import SystemdNotifier
from .states import State
from .status import Counters, PeerStatus, Status, TransitionRecord, render_table
from .transport import HeartbeatTransport
from .vips import VipManager, lease_seconds

log = logging.getLogger("hapacs")

HISTORY = 50
STOP_GRACE_S = 5.0           # beyond drain and handover, the most a stop may take
TAKEOVER_WAIT_S = 40.0       # the MASTER drains up to 30 s before it hands over


class StartupError(Exception):
    """The agent cannot start; the message tells the operator what to fix."""


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
        self.witness = None           # hapacs.witness.WitnessRunner, only when witnesses are configured
        self.links: dict[str, Link] = {}
        self.own_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self.boot_id = 0
        self.seq = 0
        self.guard = wire.ReplayGuard()
        self.keys = config.cluster.auth_keys
        self.peer_sources: set[str] = {str(p) for p in config.cluster.peers}
        self.unicast = config.cluster.unicast
        self._packed: dict[str, bytes] = {}
        self.counts = collections.Counter()
        self.drops = collections.Counter({code: 0 for code in wire.DROP_CODES + ("unknown_sender",)})
        self.history: collections.deque[TransitionRecord] = collections.deque(maxlen=HISTORY)
        self.started_at = 0.0
        self._queue: asyncio.Queue | None = None
        self._worker_busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()
        self._stopping = False
        self._handover_waiters: list[asyncio.Future] = []
        self._vip_lock = asyncio.Lock()
        self.drainer: Drainer | None = None
        self.last_drain: DrainResult | None = None
        self.last_drain_end = 0.0
        self._state_waiters: list[asyncio.Future] = []
        self._peer_addresses: dict[str, str] = {}
        self._limited = RateLimited(log)
        self.late = LatenessMeter()
        self.listeners: list[Callable[[object], None]] = []   # effect observers (SNMP, notify)
        self.notifier = NotifyListener(config.notify, config.node.name, [v.label for v in config.vips],
                                       logging.getLogger("hapacs.notify"))
        self.systemd = SystemdNotifier(self.status)
        self.on_ready: Callable[[], None] | None = None   # hapacs.daemon: told once the agent serves

    # --- life cycle ---------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.started_at = self.loop.time()
        self._queue = asyncio.Queue()
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
            await self._stopped.wait()
        finally:
            await self._teardown()
        log.info("stopped")
        return 0

    async def _setup(self) -> None:
        config = self.config
        # Before anything else: a second agent must not touch the running one's VIPs or socket.
        self.control = ControlServer(config.control.socket, config.control.group, self._on_command)
        self.control.check_free()
        await self.netlink.open()
        problems = await hostcheck.check(config, self.netlink)
        if problems:
            raise StartupError("; ".join(str(p) for p in problems))
        for name in config.interfaces:
            link = await self.netlink.link(name)
            if link is None:
                raise StartupError(f"interface {name} not found (cluster.interface or vips[].interface)")
            self.links[name] = link
        self.own_address = await self._own_address()
        self.config = config = self._skip_own_address(config)
        self.peer_sources = {str(p) for p in config.cluster.peers}
        self.boot_id = next_boot_id(config.node.state_dir, time.time_ns())
        now = self.loop.time()
        self.core = Election(self._params(config), now)
        lease = lease_seconds(config.master_down_interval_s, config.cluster.advert_interval_s)
        self.vips = VipManager(self.netlink, self.announcer, config.vips, lease, self._vip_failed)
        for link in self.links.values():
            self.vips.set_link(link)
            if not link.up:
                self.core.set_fault(f"link:{link.name}", f"link {link.name} down ({link.state})", now)
        self._promote_secondaries()
        self.drainer = Drainer([v.address.ip for v in config.vips], config.drain_ports,
                               config.handover.hold_new_connections)
        await self.drainer.clear_stale()
        present = await self.vips.find_present()
        if present:
            log.info("found %s already on this host (left by an earlier agent?); removed unless this node "
                     "becomes MASTER", ", ".join(present))
        if config.checks:
            self._start_checks()
        self._start_witness()
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
        if config.snmp is not None:
            await self._start_snmp()
        self._tasks.append(self.loop.create_task(self._effect_worker(), name="effects"))
        self._tasks.append(self.loop.create_task(self._watch_netlink(), name="netlink"))
        mode = (f"unicast to {', '.join(str(p) for p in config.cluster.peers)}" if config.cluster.unicast
                else f"multicast {config.cluster.multicast_group}")
        log.info("hapacs %s starting: node %s priority %d, cluster %d on %s (%s, heartbeats from %s every "
                 "%g s, dead after %d), VIPs %s, lease %d s", __version__, config.node.name,
                 config.node.priority, config.cluster.id, config.cluster.interface, mode, self.own_address,
                 config.cluster.advert_interval_s, config.cluster.dead_after,
                 ", ".join(v.label for v in config.vips), lease)
        self.listeners += [self.notifier, self.systemd.listener]
        self._tasks.append(self.loop.create_task(self.systemd.watchdog_loop(), name="watchdog"))
        self._feed(self.core.start)

    def _params(self, config: Config) -> Params:
        return Params(
            name=config.node.name, address=self.own_address.packed, priority=config.node.priority,
            advert_interval_s=config.cluster.advert_interval_s, dead_after=config.cluster.dead_after,
            preempt=config.cluster.preempt, preempt_delay_s=config.cluster.preempt_delay_s,
            vip_digest=wire.vip_digest(v.label for v in config.vips),
            drain_timeout_s=config.handover.drain_timeout_s, witness=bool(config.cluster.witness),
            cluster_size=1 + len(config.cluster.peers) if config.cluster.quorum == "majority" else 0)

    async def _own_address(self):
        """The address heartbeats leave from: node.address, or the interface's first own address."""
        config = self.config
        link = self.links[config.cluster.interface]
        source = hostcheck.heartbeat_source(config, await self.netlink.addresses(link.index))
        if source is not None:
            return source
        if config.node.address is not None:
            raise StartupError(f"node.address {config.node.address} is not on {link.name}")
        raise StartupError(f"{link.name} has no IPv{hostcheck.heartbeat_family(config)} address to send "
                           "heartbeats from; give it one or set node.address")

    def _skip_own_address(self, config: Config) -> Config:
        """One peer list copied to every node names this node too: skip that entry."""
        config, skipped = hostcheck.without_own_address(config, self.own_address)
        if skipped:
            log.info("cluster.peers lists this node's own address %s: skipped (heartbeats go to the "
                     "others)", self.own_address)
        return config

    def _promote_secondaries(self) -> None:
        # Without it, removing the interface's primary address also removes IPv4 VIPs in its subnet.
        for name in {v.interface for v in self.config.vips if v.address.version == 4}:
            path = f"/proc/sys/net/ipv4/conf/{name}/promote_secondaries"
            try:
                with open(path) as handle:
                    if handle.read().strip() == "1":
                        continue
                with open(path, "w") as handle:
                    handle.write("1")
            except OSError as err:
                log.warning("cannot set %s to 1 (%s): removing the primary address of %s would also "
                            "remove the VIPs", path, err.strerror or err, name)

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
        self.listeners.append(self._to_snmp)

    def _to_snmp(self, event) -> None:
        """Effects and check changes that an NMS hears about as notifications."""
        if isinstance(event, Transition):
            self.snmp.notify("state_change", old=event.old.name, new=event.new.name, reason=event.reason.text,
                             code=event.reason.code)
        elif isinstance(event, PeerChange) and not event.up:
            self.snmp.notify("peer_lost", peer=event.name)
        elif isinstance(event, SplitBrain):
            self.snmp.notify("split_brain", peer=event.peer, winner=event.winner)

    def _start_witness(self) -> None:
        if not self.config.cluster.witness:
            return
        from .witness import WitnessRunner
        self.witness = WitnessRunner(
            self.config.cluster.witness,
            lambda ok, text: self._feed(lambda now: self.core.set_witness(ok, text, now)),
            lambda: not any(peer.up for peer in self.core.peers.values()))
        self.witness.start()

    def request_stop(self, signum: int | None = None) -> None:
        """SIGTERM/SIGINT: leave cleanly; a second one stops at once."""
        if self._stopping:
            log.warning("second stop request: stopping now")
            self._stopped.set()
            return
        self._stopping = True
        self.systemd.stopping()
        name = signal.Signals(signum).name if signum else "stop request"
        drain = self.config.handover.shutdown_drain_timeout_s
        log.info("%s: leaving the cluster (a MASTER hands over first, draining up to %g s)", name, drain)
        self._feed(lambda now: self.core.shutdown(drain, now))
        self.loop.call_later(drain + STOP_GRACE_S + 2 * self.config.master_down_interval_s, self._stop_deadline)

    def _stop_deadline(self) -> None:
        if not self._stopped.is_set():
            log.warning("stop took too long; releasing the VIPs and leaving now")
            self._stopped.set()

    async def _teardown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.checks is not None:
            await self.checks.stop()
        if self.witness is not None:
            await self.witness.stop()
        if self.vips is not None:
            await self.vips.close()
            # A second agent stops at check_free() before it finds any VIP, so what is held
            # here is this agent's own (or a dead one's it found): removed on exit.
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
        if self.control is not None:
            await self.control.stop()
        if self.snmp is not None:
            await self.snmp.stop()
        self.announcer.close()
        await self.netlink.close()

    # --- feeding the core -----------------------------------------------------------

    def _feed(self, call: Callable[[float], list]) -> list:
        """Call the core with the current time, queue its effects and re-arm its timer."""
        try:
            effects = call(self.loop.time())
        except CommandRefused:
            raise
        except Exception:
            log.exception("internal error in the election core; the agent carries on")
            effects = []
        self._dispatch(effects)
        self._rearm()
        return effects

    def _dispatch(self, effects: list) -> None:
        """Carry out effects in order: synchronous ones at once while nothing is queued,
        the rest (netlink) through the worker, which keeps the order."""
        for index, effect in enumerate(effects):
            if self._worker_busy or not self._queue.empty() or isinstance(effect, (AcquireVips, ReleaseVips)):
                for rest in effects[index:]:
                    self._queue.put_nowait(rest)
                return
            self._execute_now(effect)

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
        self.late.record(now - deadline, now)
        self._feed(lambda now: self.core.handle_timer(max(now, deadline)))

    def _on_datagram(self, data: bytes, source: str) -> None:
        now = self.loop.time()
        source = _plain(source)
        if self.unicast and source not in self.peer_sources:
            self._drop("unknown_sender", source, "not one of cluster.peers", now)
            return
        try:
            advert = wire.decode(data, self.keys, self.config.cluster.id)
            self.guard.check(advert)
        except wire.WireError as err:
            self._drop(err.code, source, err.reason, now)
            return
        self.counts["adverts_received"] += 1
        self._peer_addresses[advert.node] = source
        packed = self._packed.get(source)
        if packed is None:
            packed = self._packed[source] = ipaddress.ip_address(source).packed
        self._feed(lambda t: self.core.receive(advert, packed, t))

    def _drop(self, code: str, source: str, reason: str, now: float) -> None:
        self.drops[code] += 1
        if code == "cluster":
            return   # another cluster on the same segment: normal, not worth a log line
        self._limited.warning(f"drop-{code}", now, "dropped a heartbeat from %s (%s): %s", source, code, reason)

    def _on_checks(self, verdict, changes) -> None:
        self._feed(lambda now: self.core.set_hold("checks", verdict.pending, now))
        self._feed(lambda now: self.core.set_penalty(verdict.penalty, now))
        self._feed(lambda now: self.core.set_fault("checks", verdict.fault, now, "every check is up again"))
        if self.snmp is not None:
            for change in changes:
                self.snmp.notify("check_up" if change.up else "check_down", check=change.name,
                                 message=change.reason)

    def _vip_failed(self, text: str) -> None:
        log.error("VIP problem: %s", text)
        self._feed(lambda now: self.core.vip_failed(text, now))

    async def _watch_netlink(self) -> None:
        try:
            await self.netlink.watch(self._on_netlink)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("netlink event watch failed; link changes are no longer seen")

    def _on_netlink(self, event) -> None:
        if isinstance(event, LinkEvent):
            link = event.link
            old = self.links.get(link.name)
            if old is None or old.index != link.index:
                return
            self.links[link.name] = link
            self.vips.set_link(link)
            if old.up != link.up:
                if link.up:
                    log.info("link %s is up again", link.name)
                    self._feed(lambda now: self.core.set_fault(f"link:{link.name}", None, now,
                                                               f"link {link.name} up"))
                else:
                    log.warning("link %s lost (%s)", link.name, link.state)
                    self._feed(lambda now: self.core.set_fault(
                        f"link:{link.name}", f"link {link.name} down ({link.state})", now))

    # --- carrying out effects ---------------------------------------------------------

    async def _effect_worker(self) -> None:
        while True:
            effect = await self._queue.get()
            self._worker_busy = True
            try:
                async with self._vip_lock:
                    if isinstance(effect, AcquireVips):
                        await self.drainer.release_hold()   # never hold our own new connections
                        await self.vips.acquire()
                    elif isinstance(effect, ReleaseVips):
                        await self.vips.release()
                self._execute_now(effect)
            except Exception:
                log.exception("carrying out %s failed", type(effect).__name__)
            finally:
                self._worker_busy = self._queue.qsize() > 0

    def _execute_now(self, effect) -> None:
        try:
            self._execute(effect)
        except Exception:
            log.exception("carrying out %s failed", type(effect).__name__)
        for listener in self.listeners:
            try:
                listener(effect)
            except Exception:
                log.exception("a status listener failed")

    def _execute(self, effect) -> None:
        """The synchronous part of every effect (VIP changes were awaited before)."""
        if isinstance(effect, SendAdvert):
            self._send(effect)
        elif isinstance(effect, Transition):
            self._record(effect)
        elif isinstance(effect, Announce):
            log.info("announcing the VIPs again: %s", effect.why)
            self.vips.announce()
        elif isinstance(effect, StartDrain):
            self._start_drain(effect)
        elif isinstance(effect, HandoverDone):
            (log.info if effect.ok else log.warning)("handover: %s", effect.text)
            self.loop.create_task(self.drainer.release_hold(retry_later=True))
            waiters, self._handover_waiters = self._handover_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(effect)
        elif isinstance(effect, PeerChange):
            (log.info if effect.up else log.warning)("%s", effect.text)
            if not effect.up:
                self.counts["peers_lost"] += 1
        elif isinstance(effect, SplitBrain):
            self.counts["split_brains"] += 1
            log.warning("split brain: %s", effect.text)
        elif isinstance(effect, Notice):
            log.info("%s", effect.text)
        elif isinstance(effect, ProbeWitness):
            if self.witness is not None:
                self.witness.request()
        elif isinstance(effect, Stopped):
            log.info("%s", effect.text)
            self._stopped.set()

    def _send(self, effect: SendAdvert) -> None:
        out = effect.advert
        self.seq += 1
        advert = wire.Advert(self.config.cluster.id, self.config.node.name, out.state, out.priority, out.flags,
                             int(round(self.config.cluster.advert_interval_s * 1000)), out.term, self.boot_id,
                             self.seq, self.core.p.vip_digest, out.target)
        try:
            data = wire.encode(advert, self.keys[0])
        except (ValueError, OverflowError, struct.error) as err:
            # Cannot happen with valid state; if it does, a node that cannot speak holds nothing.
            reason = f"cannot send heartbeats: {err}"
            log.error("%s: going to FAULT", reason)
            self._feed(lambda now: self.core.set_fault("heartbeat", reason, now))
            return
        failed = self.transport.send(data)
        self.counts["adverts_sent"] += 1
        if failed:
            self._limited.warning("send", self.loop.time(), "cannot send a heartbeat: %s",
                                  self.transport.last_error)

    def _record(self, transition: Transition) -> None:
        level = logging.WARNING if transition.new == State.FAULT else logging.INFO
        log.log(level, "%s -> %s: %s", transition.old.name, transition.new.name, transition.reason.text)
        waiters, self._state_waiters = self._state_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(transition)
        self.counts["transitions"] += 1
        if transition.new == State.MASTER:
            self.counts["became_master"] += 1
        at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        self.history.append(TransitionRecord(at, transition.old.name, transition.new.name,
                                             transition.reason.text, transition.reason.code.value,
                                             self.loop.time()))

    def _start_drain(self, effect: StartDrain) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(self.loop.create_task(self._drain(effect), name="drain"))

    async def _drain(self, effect: StartDrain) -> None:
        result = await self.drainer.drain(effect.timeout_s)
        self.last_drain = result
        self.last_drain_end = self.loop.time()
        if self.core.handover is None:
            # Abandoned meanwhile (a fault, a stop): nothing to hand over, hold nothing.
            await self.drainer.release_hold(retry_later=True)
            return
        if result.open_at_start:
            (log.warning if result.cut else log.info)(
                "drained for %.2f s: %d DICOM association(s) were open, %d still open now and cut by the "
                "handover", result.waited_s, result.open_at_start, result.cut)
        self._feed(lambda now: self.core.drained(result.cut, now))

    # --- status and commands ------------------------------------------------------------

    def status(self) -> Status:
        now = self.loop.time()
        view = self.core.view(now)
        peers = tuple(PeerStatus(p.name, self._peer_addresses.get(p.name, str(ipaddress.ip_address(p.address))),
                                 p.state.name if p.up else "LOST", p.priority, p.last_seen_s, p.maintenance)
                      for p in view.peers)
        if view.master == self.config.node.name:
            master_address = str(self.own_address)
        else:
            master_address = self._peer_addresses.get(view.master) if view.master else None
        counters = Counters(transitions=self.counts["transitions"], became_master=self.counts["became_master"],
                            adverts_sent=self.counts["adverts_sent"],
                            adverts_received=self.counts["adverts_received"],
                            split_brains=self.counts["split_brains"], peers_lost=self.counts["peers_lost"],
                            drops=dict(self.drops))
        return Status(
            node=self.config.node.name, cluster_id=self.config.cluster.id, state=view.state.name,
            since_s=view.since_s, priority=view.priority, effective_priority=view.effective_priority,
            master=view.master, maintenance=view.maintenance, vips=self.vips.statuses(), peers=peers,
            checks=self.checks.snapshot(now) if self.checks else (), transitions=tuple(self.history),
            counters=counters, sticky=view.sticky, faults=view.faults, alone=view.alone,
            handover_target=view.handover_target, master_address=master_address,
            address=str(self.own_address), interface=self.config.cluster.interface,
            advert_interval_s=self.config.cluster.advert_interval_s, preempt=self.config.cluster.preempt,
            uptime_s=now - self.started_at, version=__version__, pid=os.getpid(),
            timer_late_ms_max=self.late.max_s * 1000, timer_late_ms_minute=self.late.recent_s(now) * 1000,
            timer_late_recent=tuple((round(t, 3), round(late * 1000, 1)) for t, late in self.late.notable),
            last_drain=None if self.last_drain is None else {
                "ended_monotonic": round(self.last_drain_end, 6), "waited_s": round(self.last_drain.waited_s, 3),
                "open_at_start": self.last_drain.open_at_start, "cut": self.last_drain.cut,
                "held_new_connections": self.last_drain.held},
            bad_requests=self._bad_requests())

    def _bad_requests(self) -> dict[str, int]:
        """Requests that could not be read, by where they came in (heartbeats: `drops`)."""
        counts = {"control": self.control.bad_requests if self.control else 0}
        if self.config.snmp is not None:
            counts["snmp"] = self.snmp.bad_requests if self.snmp else 0
        return counts

    async def _on_command(self, request: dict) -> dict:
        command = request["command"]
        if command == "status":
            status = self.status()
            return {"ok": True, "status": status.to_json(), "table": render_table(status)}
        before = self.core.state.name
        try:
            if command == "maintenance":
                self._feed(lambda now: self.core.set_maintenance(request["on"], now))
                text = f"maintenance {'on' if request['on'] else 'off'}"
            elif command == "takeover":
                text = await self._takeover()
            elif command == "release":
                text = await self._release(float(request.get("drain_timeout_s", 30.0)))
            else:
                return await self.reload(request.get("config"))
        except CommandRefused as err:
            return {"ok": False, "message": f"refused: {err}", "before": before, "after": self.core.state.name}
        return {"ok": True, "message": text, "before": before, "after": self.core.state.name}

    async def _takeover(self) -> str:
        self._feed(self.core.takeover)
        if self.core.state == State.MASTER:
            return "this node is MASTER and stays MASTER (no preemption back)"
        deadline = self.loop.time() + TAKEOVER_WAIT_S
        while self.core.state not in (State.MASTER, State.FAULT) and self.loop.time() < deadline:
            waiter = self.loop.create_future()
            self._state_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, deadline - self.loop.time())
            except asyncio.TimeoutError:
                break
        if self.core.state != State.MASTER:
            self._feed(self.core.cancel_takeover)
            raise CommandRefused(f"the MASTER did not hand over within {TAKEOVER_WAIT_S:g} s")
        return "this node is MASTER now and stays MASTER (no preemption back)"

    async def _release(self, drain_timeout_s: float) -> str:
        waiter = self.loop.create_future()
        self._handover_waiters.append(waiter)
        try:
            self._feed(lambda now: self.core.release(drain_timeout_s, now))
        except CommandRefused:
            self._handover_waiters.remove(waiter)
            raise
        result: HandoverDone = await asyncio.wait_for(waiter, drain_timeout_s + STOP_GRACE_S
                                                      + 2 * self.config.master_down_interval_s + 5)
        if not result.ok:
            raise CommandRefused(result.text)
        drain = self.last_drain
        if drain is None or not drain.open_at_start:
            drained = "no DICOM association was open"
        else:
            drained = (f"{drain.open_at_start} DICOM association(s) were open; waited {drain.waited_s:.1f} s, "
                       + (f"cut {drain.cut}" if drain.cut else "none cut"))
        return f"handed over to {result.target} ({drained})"


    # --- reload ---------------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        self._tasks.append(self.loop.create_task(self._reload_from_signal(), name="reload"))

    async def _reload_from_signal(self) -> None:
        reply = await self.reload()
        (log.info if reply["ok"] else log.error)("SIGHUP: %s", reply["message"])

    async def reload(self, asked_path: str | None = None) -> dict:
        """Re-read the configuration; apply it whole, or refuse it whole and run on unchanged.

        Always the file the agent was started with: `hapacs reload -c OTHER` is refused
        (reading OTHER once would leave SIGHUP and the next restart reading the old file)."""
        if asked_path is not None and os.path.realpath(asked_path) != os.path.realpath(self.config.path):
            return {"ok": False, "message": f"refused: this agent reads {self.config.path}, not {asked_path}; "
                    f"reload re-reads that file only. Put the change there, or restart the agent with "
                    f"-c {asked_path}"}
        try:
            new = await asyncio.to_thread(load, self.config.path)
        except ConfigError as err:
            return {"ok": False, "message": "refused, the agent runs on unchanged; the new configuration is "
                    "invalid:\n" + "\n".join(str(p) for p in err.problems)}
        problems = await hostcheck.check(new, self.netlink)
        if problems:
            return {"ok": False, "message": "refused, the agent runs on unchanged; the new configuration does "
                    "not fit this host:\n" + "\n".join(str(p) for p in problems)}
        new = self._skip_own_address(new)
        fixed = restart_needed(self.config, new)
        if fixed:
            return {"ok": False, "message": "refused, the agent runs on unchanged: changing "
                    f"{', '.join(fixed)} needs a restart (systemctl restart hapacs)"}
        new_links = {}
        for name in new.interfaces:
            if name not in self.links:
                link = await self.netlink.link(name)
                if link is None:
                    return {"ok": False, "message": f"refused, the agent runs on unchanged: interface {name} "
                            "not found"}
                new_links[name] = link
        changes = describe(self.config, new)
        await self._apply_config(new, new_links)
        text = "reloaded: " + ("; ".join(changes) if changes else "nothing changed")
        log.info("%s", text)
        return {"ok": True, "message": text}

    async def _apply_config(self, new: Config, new_links: dict[str, Link]) -> None:
        old, self.config = self.config, new
        self.notifier.reconfigure(new.notify, [v.label for v in new.vips])
        self.keys = new.cluster.auth_keys
        self.peer_sources = {str(p) for p in new.cluster.peers}
        self.transport.peers = new.cluster.peers
        for link in new_links.values():
            self.links[link.name] = link
            self.vips.set_link(link)
        lease = lease_seconds(new.master_down_interval_s, new.cluster.advert_interval_s)
        async with self._vip_lock:
            await self.vips.update(new.vips, lease)
        if not self.drainer.holding:
            self.drainer = Drainer([v.address.ip for v in new.vips], new.drain_ports,
                                   new.handover.hold_new_connections)
        self._feed(lambda now: self.core.reconfigure(self._params(new), now))
        if old.checks != new.checks:
            if self.checks is not None:
                await self.checks.stop()
                self.checks = None
                self._feed(lambda now: self.core.set_fault("checks", None, now, "checks reconfigured"))
                self._feed(lambda now: self.core.set_penalty(0, now))
            if new.checks:
                self._start_checks()
        if old.cluster.witness != new.cluster.witness:
            if self.witness is not None:
                await self.witness.stop()
                self.witness = None
            self._start_witness()
            if self.witness is not None:
                self.witness.request()


def run(config: Config) -> int:
    """Run the agent in the foreground until SIGTERM; the process exit code."""
    return asyncio.run(Agent(config).run())
