"""What a reload changes, and what it cannot change without a restart. Pure."""

from __future__ import annotations

from .config import Config

# (description, how to read it) of settings bound to sockets or identity at start.
_FIXED = (
    ("node.name", lambda c: c.node.name),
    ("node.address", lambda c: c.node.address),
    ("node.state_dir", lambda c: c.node.state_dir),
    ("cluster.id", lambda c: c.cluster.id),
    ("cluster.interface", lambda c: c.cluster.interface),
    ("cluster.port", lambda c: c.cluster.port),
    ("cluster.multicast_group", lambda c: c.cluster.multicast_group),
    ("unicast or multicast (cluster.peers given or not)", lambda c: c.cluster.unicast),
    ("control", lambda c: c.control),
    ("snmp", lambda c: c.snmp),
    ("metrics.listen", lambda c: c.metrics),
    ("balance (added or removed)", lambda c: c.balance is None),
    ("balance.mode", lambda c: c.balance.mode if c.balance else None),
    # The lease's TTL, key and etcd cluster: changing them under a held lease would move the
    # leadership key beneath a running MASTER.
    ("cluster.authority", lambda c: c.cluster.authority),
    ("etcd", lambda c: c.etcd),
    ("balance.agent_port", lambda c: c.balance.agent_port if c.balance else None),
    ("bgp", lambda c: c.bgp),
)


def restart_needed(old: Config, new: Config) -> list[str]:
    """The changed settings that only a restart applies."""
    return [name for name, read in _FIXED if read(old) != read(new)]


def describe(old: Config, new: Config) -> list[str]:
    """One short phrase per change a reload applies, for the reply and the log."""
    changes = []

    def compare(label: str, before, after) -> None:
        if before != after:
            changes.append(f"{label} {before} -> {after}")

    compare("priority", old.node.priority, new.node.priority)
    compare("advert_interval", old.cluster.advert_interval_s, new.cluster.advert_interval_s)
    compare("dead_after", old.cluster.dead_after, new.cluster.dead_after)
    compare("preempt", old.cluster.preempt, new.cluster.preempt)
    compare("preempt_delay", old.cluster.preempt_delay_s, new.cluster.preempt_delay_s)
    compare("quorum", old.cluster.quorum, new.cluster.quorum)
    if old.cluster.auth_keys != new.cluster.auth_keys:
        changes.append(f"keys changed ({len(new.cluster.auth_keys)} accepted, the first signs)")
    for label, before, after in (("peer", old.cluster.peers, new.cluster.peers),
                                 ("VIP", [v.label for v in old.vips], [v.label for v in new.vips]),
                                 ("check", [c.name for c in old.checks], [c.name for c in new.checks])):
        changes += [f"{label} {x} added" for x in after if x not in before]
        changes += [f"{label} {x} removed" for x in before if x not in after]
    kept = {c.name for c in old.checks} & {c.name for c in new.checks}
    changes += [f"check {c.name} changed" for c in new.checks
                if c.name in kept and c != next(o for o in old.checks if o.name == c.name)]
    if old.cluster.witness != new.cluster.witness:
        changes.append("witness changed")
    if old.notify != new.notify:
        changes.append("notify changed")
    if old.handover != new.handover:
        changes.append("handover changed")
    if old.balance != new.balance:
        engine = "HAProxy" if new.balance is None or new.balance.mode == "proxy" else "nftables table"
        changes.append(f"balance changed ({engine} reloaded)")
    return changes
