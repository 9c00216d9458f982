"""The SNMP engine's identity: a stable snmpEngineID and a persistent snmpEngineBoots.

SNMPv3 receivers key users by the sender's engine ID (a v3 TRAP is dropped
unless the receiver's `createUser -e` names it), and reject messages whose
(snmpEngineBoots, snmpEngineTime) go backwards (RFC 3414 3.2.7). So the ID
must survive restarts, and boots must grow on each start. No pysnmp here.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from .oids import ENTERPRISE_NUMBER

BOOTS_FILE = "snmp-engine-boots"
MAX_BOOTS = 2147483647          # RFC 3414 2.2.2: latched at the maximum


def engine_id_for(node_name: str, configured: str | None = None) -> bytes:
    """snmp.engine_id when configured, else derived from the node name (RFC 3411 SnmpEngineID).

    0x80 | enterprise number (4 octets), then format 4 (text, up to 27 octets) with
    the node name, or format 5 (octets) with 16 bytes of SHA-256 of a longer name.
    """
    if configured:
        return bytes.fromhex(configured.removeprefix("0x").removeprefix("0X"))
    prefix = (0x80000000 | ENTERPRISE_NUMBER).to_bytes(4, "big")
    name = node_name.encode("utf-8")
    if 1 <= len(name) <= 27:
        return prefix + b"\x04" + name
    return prefix + b"\x05" + hashlib.sha256(name).digest()[:16]


def next_boots(state_dir: str | None, engine_id: bytes) -> tuple[int, str | None]:
    """Read, increment and store snmpEngineBoots for this engine ID.

    Returns (boots, problem): without a state_dir, or when the file cannot be
    written, boots is 1 and problem says why (the caller logs it). A file
    written for another engine ID starts again at 1 (RFC 3414 2.2.2).
    """
    if not state_dir:
        return 1, None
    path = os.path.join(state_dir, BOOTS_FILE)
    boots, reading = 0, None
    try:
        with open(path, encoding="ascii") as stored:
            words = stored.read().split()
        if len(words) == 2 and words[0] == engine_id.hex():
            boots = int(words[1])
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as problem:
        boots, reading = 0, f"could not read {path} ({problem}); snmpEngineBoots starts again at 1"
    boots = min(boots + 1, MAX_BOOTS)
    try:
        os.makedirs(state_dir, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=state_dir, prefix=BOOTS_FILE + ".")
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(f"{engine_id.hex()} {boots}\n")
        os.replace(temporary, path)
    except OSError as problem:
        return boots, f"could not store snmpEngineBoots in {path} ({problem})"
    return boots, reading
