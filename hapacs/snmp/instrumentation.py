"""pysnmp's view of our tree: GET, GETNEXT and GETBULK answered from a `Snapshot`.

pysnmp's command responders call `read_variables` / `read_next_variables`
synchronously on the event loop for every PDU (GETBULK calls the latter
once per repetition). They only read the snapshot, which the agent renders
from the in-memory Status. SET is always refused with notWritable.

Instead of pysnmp's MibTree of one object per cell, the snapshot is a
sorted list, so rows follow the Status by themselves (no export/unexport
bookkeeping) and GETNEXT is a binary search.
"""

from __future__ import annotations

from typing import Callable

from pysnmp.proto import rfc1902
from pysnmp.proto.rfc1905 import endOfMibView, noSuchInstance, noSuchObject
from pysnmp.smi import error
from pysnmp.smi.instrum import AbstractMibInstrumController

from .render import Snapshot, Value, is_object_type

_SYNTAX = {
    "Integer32": rfc1902.Integer32,
    "Unsigned32": rfc1902.Unsigned32,
    "Gauge32": rfc1902.Gauge32,
    "Counter32": rfc1902.Counter32,
    "Counter64": rfc1902.Counter64,
    "TimeTicks": rfc1902.TimeTicks,
    "OctetString": rfc1902.OctetString,
    "ObjectIdentifier": rfc1902.ObjectIdentifier,
}


def to_pysnmp(value: Value):
    return _SYNTAX[value.syntax](value.value)


class SnapshotInstrumentation(AbstractMibInstrumController):
    """A read-only MIB instrumentation over `snapshot()`, called once per PDU."""

    def __init__(self, snapshot: Callable[[], Snapshot]):
        self._snapshot = snapshot

    def read_variables(self, *var_binds, **context):
        """GET (RFC 3416 4.2.1): the value, or noSuchObject / noSuchInstance."""
        return self._answer(var_binds, context, self._get)

    def read_next_variables(self, *var_binds, **context):
        """GETNEXT (RFC 3416 4.2.2): the next readable value, or endOfMibView."""
        return self._answer(var_binds, context, self._get_next)

    def _answer(self, var_binds, context, one):
        """One snapshot for the whole PDU; `one(snapshot, name, allowed, context)` per var-bind."""
        snapshot = self._snapshot()
        allowed = context.get("acFun")
        answer = []
        for position, (name, _) in enumerate(var_binds):
            context["idx"] = position
            answer.append(one(snapshot, name, allowed, context))
        return answer

    @staticmethod
    def _get(snapshot: Snapshot, name, allowed, context):
        oid = tuple(name)
        value = snapshot.get(oid)
        if value is None:
            return name, noSuchInstance if is_object_type(oid) else noSuchObject
        syntax = to_pysnmp(value)
        # acFun returns True when the OID is outside the caller's VACM view.
        if allowed and allowed("read", (name, syntax), **context):
            return name, noSuchObject
        return name, syntax

    @staticmethod
    def _get_next(snapshot: Snapshot, name, allowed, context):
        oid = tuple(name)
        while True:
            found = snapshot.next_after(oid)
            if found is None:
                return name, endOfMibView
            oid, value = found
            next_name, syntax = rfc1902.ObjectName(oid), to_pysnmp(value)
            try:
                if allowed and allowed("read", (next_name, syntax), **context):
                    continue            # outside the view: skip it
            except error.NoAccessError:
                continue                # a Counter64 asked for over SNMPv1 (RFC 2576 4.1.2.1)
            return next_name, syntax

    def write_variables(self, *var_binds, **context):
        """SET: everything here is read-only."""
        name = var_binds[0][0] if var_binds else None
        raise error.NotWritableError(name=name, idx=0)
