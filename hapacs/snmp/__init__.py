"""SNMP for hapacs: the HAPACS-MIB and VRRPV3-MIB agent and its notifications.

Importing this package loads no pysnmp; `SnmpAgent` (hapacs.snmp.agent)
does, so only an agent with `snmp:` configured pays for it.

    agent.py            SnmpAgent: sockets, engine, users, life cycle
    render.py           Status -> sorted (OID, value) pairs; notification varbinds (pure)
    instrumentation.py  GET / GETNEXT / GETBULK from those pairs; SET refused
    notify.py           the queue and task that send TRAPs and INFORMs
    identity.py         stable snmpEngineID, persistent snmpEngineBoots
    oids.py             every OID, named as in the MIBs; the enterprise number
"""

from __future__ import annotations


def __getattr__(name: str):
    if name in ("SnmpAgent", "SnmpBindError"):
        from . import agent
        return getattr(agent, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
