"""The etcd adapter of `cluster.authority: etcd`: the core's lease effects in etcd's language.

The core (hapacs.leasegate) decides; this module only does. It turns
TakeLease into a lease grant and a create-if-absent transaction (compare
create_revision == 0, value = this node's name), RenewLease into a
keepalive, RevokeLease into a revoke (the key goes with its lease),
ProbeAuthority into a read, and VipsUntil into the end of the VIPs'
address lifetime. Every answer goes back to the core as an event
dated when its request was SENT, never when it came back. It also watches
the key (a linearizable read, then a watch from the next revision), and
counts the endpoints that answer, for status.

Every read and transaction here is linearizable: a member cut off from the
others cannot answer it, where a serializable read would name the old
holder. Every etcd answer is outside input: garbage, an HTTP error, a
server that is not etcd, a refused certificate or no answer at all become
one EtcdError, a log line (rate-limited), an event for the core (which
holds no VIP without a lease), and a retry with a bounded backoff. Nothing
here may block the loop or crash the agent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from . import timing
from .effects import ProbeAuthority, RenewLease, RevokeLease, TakeLease, VipsUntil
from .etcd import EtcdClient, tls_context
from .etcdwire import DELETE, LEASE_NOT_FOUND, EtcdError, KeyValue
from .hostsetup import StartupError
from .leasegate import KeyHolder, LeaseFailed, LeaseRenewed, LeaseTaken
from .logs import RateLimited

if TYPE_CHECKING:
    from .agent import Agent
    from .etcdconfig import EtcdConfig

log = logging.getLogger("hapacs.etcd")

HEALTH_PERIOD_S = 5.0          # how often each endpoint is asked whether it answers (status only)
MAX_RENEWALS_IN_FLIGHT = 3     # more would only pile up behind an etcd that does not answer
STOP_REVOKE_S = 1.0            # at stop, the most spent giving the lease up
# The watch's read fails once while etcd elects a new leader (about a second): only a second
# failure in a row tells the core, so a BACKUP does not go to FAULT at every etcd leader change.
WATCH_FAILURES_TOLD = 2


async def start(agent: Agent) -> EtcdAuthority | None:
    """The adapter when `cluster.authority` is etcd, started; None otherwise. etcd being
    unreachable does not stop the agent: the node stays out of MASTER until etcd answers."""
    config = agent.config
    if config.cluster.authority != "etcd" or config.etcd is None:
        return None
    authority = EtcdAuthority(agent, config.etcd)
    await authority.start()
    return authority


def holder_name(kv: KeyValue | None) -> str | None:
    """The holder the key names, as text a log line can carry (the value is outside input)."""
    if kv is None:
        return None
    text = kv.value.decode("utf-8", "replace")
    return text if text.isprintable() and 0 < len(text) <= 64 else repr(kv.value[:64])


def read_holder(kv: KeyValue | None, revision: int) -> KeyHolder:
    """What a read of the key tells the core: who holds it, at the key's revision (the store's
    revision when nobody does)."""
    return KeyHolder(holder_name(kv), kv.mod_revision if kv else revision, kv.lease if kv else 0)


class EtcdAuthority:
    def __init__(self, agent: Agent, config: EtcdConfig) -> None:
        self.agent = agent
        self.config = config
        self.key = config.leader_key
        self.value = agent.config.node.name.encode()
        self.client: EtcdClient | None = None
        self._clients: list[EtcdClient] = []     # one per endpoint, for the health loop
        self.held: set[int] = set()        # leases granted here and not given up: revoked at stop
        self.renewing = 0
        self._limited = RateLimited(log)
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        config = self.config
        try:
            context = tls_context(config.ca_file, config.cert_file, config.key_file) \
                if config.ca_file or config.cert_file else None
        except (OSError, ssl.SSLError) as err:
            raise StartupError(f"etcd: cannot use the TLS files (etcd.ca_file, etcd.cert_file, etcd.key_file): "
                               f"{err}") from None
        timeout = timing.etcd_request_timeout_s(config.ttl_s)
        self.client = EtcdClient(list(config.endpoints), timeout_s=timeout, ssl_context=context)
        self._clients = [EtcdClient([url], timeout_s=timeout, ssl_context=context) for url in config.endpoints]
        self.agent.book.authority_endpoints = (0, len(config.endpoints))
        self.agent.effects.listeners.append(self.observe)
        self._spawn(self._watch_loop(), "etcd-watch")
        self._spawn(self._health_loop(), "etcd-health")
        log.info("leadership by etcd lease: key %s at %s, TTL %d s (held until sent + TTL - %.2f s, renewed "
                 "every %.2f s)", self.key.decode(), ", ".join(config.endpoints), config.ttl_s,
                 timing.lease_margin_s(config.ttl_s), timing.lease_renew_s(config.ttl_s))
        if not self.agent.config.drain_ports:
            log.warning("no DICOM port is drained (no dicom-echo or dicom-find check, no handover.drain_ports): "
                        "with the etcd lease a handover lets go before the successor holds the VIPs, so an "
                        "association open at that moment is cut")

    async def stop(self) -> None:
        """Cancel every request; give up a lease still held (the VIPs are gone by now)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.held:
            try:
                await asyncio.wait_for(asyncio.gather(*(self._revoke(lease_id, "the agent stops")
                                                        for lease_id in list(self.held))), STOP_REVOKE_S)
            except TimeoutError:
                log.warning("could not give the etcd lease up at stop within %g s (it expires within %d s)",
                            STOP_REVOKE_S, self.config.ttl_s)

    def _spawn(self, coroutine, name: str) -> None:
        task = self.agent.loop.create_task(self._guarded(coroutine, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coroutine, name: str) -> None:
        """A bug in a request must not end the watch or leave the core waiting: log it, tell the core."""
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error in %s; the agent carries on", name)
            self._feed(LeaseFailed(name, f"internal error in {name}"))

    # --- effects from the core ------------------------------------------------------

    def observe(self, effect) -> None:
        """An effect listener: runs after the effects before it (VIPs released before a revoke)."""
        if isinstance(effect, TakeLease):
            self._spawn(self._take(effect.ttl_s), "etcd-take")
        elif isinstance(effect, RenewLease):
            if self.renewing >= MAX_RENEWALS_IN_FLIGHT:
                self._warn("renew-busy", "etcd: %d renewals still unanswered; not sending another",
                           self.renewing)
                return
            self._spawn(self._renew(effect.lease_id), "etcd-renew")
        elif isinstance(effect, RevokeLease):
            self._spawn(self._revoke(effect.lease_id, effect.why), "etcd-revoke")
        elif isinstance(effect, ProbeAuthority):
            self._spawn(self._probe(), "etcd-probe")
        elif isinstance(effect, VipsUntil) and self.agent.vips is not None:
            self.agent.vips.follow_lease(effect.until)     # the core's clock is the loop's

    def _feed(self, event) -> None:
        self.agent.feed(lambda now: self.agent.core.authority(event, now))

    def _warn(self, key: str, message: str, *args) -> None:
        self._limited.warning(key, self.agent.loop.time(), message, *args)

    def _failed(self, what: str, err: EtcdError) -> None:
        self._warn(f"{what}-{err.code}", "etcd %s failed (%s): %s", what, err.code, err.reason)
        self._feed(LeaseFailed(what, err.reason))

    async def _take(self, ttl_s: int) -> None:
        sent_at = self.agent.loop.time()
        try:
            lease = await self.client.grant(ttl_s)
        except EtcdError as err:
            self._failed("take", err)
            return
        self.held.add(lease.id)
        try:
            result = await self.client.take(self.key, self.value, lease.id)
        except EtcdError as err:
            self._failed("take", err)
            await self._revoke(lease.id, "the take failed")
            return
        holder = result.holder
        if result.succeeded or (holder is not None and holder.lease == lease.id):
            # A retry on another endpoint finds the key its first attempt created: taken too.
            revision = result.revision if result.succeeded else holder.mod_revision
            log.info("took the etcd lease %x (TTL %d s) for %s", lease.id, lease.ttl_s, self.key.decode())
            self._feed(LeaseTaken(lease.id, lease.ttl_s, sent_at, revision))
            return
        await self._revoke(lease.id, "the key is held by another")
        name = holder_name(holder)
        self._warn("held-by", "etcd lease held by %s: waiting for it to be given up or to expire", name)
        self._feed(KeyHolder(name, result.revision, holder.lease if holder else 0, refused_take=True))

    async def _renew(self, lease_id: int) -> None:
        sent_at = self.agent.loop.time()
        self.renewing += 1
        try:
            left = await self.client.keepalive(lease_id)
        except EtcdError as err:
            if err.code == LEASE_NOT_FOUND:
                left = 0
            else:
                self._failed("renew", err)
                return
        finally:
            self.renewing -= 1
        if left <= 0:
            self.held.discard(lease_id)
        self._feed(LeaseRenewed(lease_id, left, sent_at))

    async def _revoke(self, lease_id: int, why: str) -> None:
        try:
            await self.client.revoke(lease_id)
        except EtcdError as err:
            if err.code != LEASE_NOT_FOUND:
                self._warn("revoke", "could not give the etcd lease %x up (%s; it expires within %d s): %s",
                           lease_id, why, self.config.ttl_s, err.reason)
                return
        self.held.discard(lease_id)
        log.info("gave the etcd lease %x up: %s", lease_id, why)

    async def _probe(self) -> None:
        try:
            kv, revision = await self.client.get_at(self.key)
        except EtcdError as err:
            self._failed("probe", err)
            return
        self._feed(read_holder(kv, revision))

    # --- the watch and the endpoints' health ------------------------------------------------

    async def _watch_loop(self) -> None:
        """Read the key, then watch it from the next revision; again after a broken stream. Only
        when no endpoint answers the read does the core hear of it."""
        failures = 0
        while True:
            try:
                kv, revision = await self.client.get_at(self.key)
            except EtcdError as err:
                failures += 1
                if failures >= WATCH_FAILURES_TOLD:
                    self._failed("watch", err)
                else:
                    self._warn(f"watch-retry-{err.code}", "etcd watch could not read the key (%s): %s; trying again",
                               err.code, err.reason)
                await asyncio.sleep(timing.lease_retry_s(failures))
                continue
            failures = 0
            self._feed(read_holder(kv, revision))
            opened = self.agent.loop.time()
            try:
                async for message in self.client.watch(self.key, revision + 1):
                    for event in message.events:
                        gone = event.type == DELETE
                        self._feed(KeyHolder(None if gone else holder_name(event.kv), event.kv.mod_revision,
                                             0 if gone else event.kv.lease, streamed=True))
            except EtcdError as err:
                self._warn(f"watch-{err.code}", "etcd watch ended (%s): %s; watching again", err.code, err.reason)
            if self.agent.loop.time() - opened < timing.LEASE_RETRY_MIN_S:
                await asyncio.sleep(timing.LEASE_RETRY_MIN_S)   # a stream that breaks at once: no busy loop

    async def _health_loop(self) -> None:
        while True:
            results = await asyncio.gather(*(self._answers(client) for client in self._clients))
            self.agent.book.authority_endpoints = (sum(results), len(results))
            await asyncio.sleep(HEALTH_PERIOD_S)

    async def _answers(self, client: EtcdClient) -> bool:
        try:
            await client.status()
        except EtcdError:
            return False
        return True
