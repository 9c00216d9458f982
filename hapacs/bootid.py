"""The boot id: a number larger on every start of the agent, for anti-replay.

Peers accept a heartbeat only if its (boot id, sequence) is newer than the
last one they took from this node, so a restarted agent needs a larger
boot id. The wall clock gives one; the value is also stored in the state
directory, so a clock that went back across a restart still gives a
larger one.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("hapacs")

FILE_NAME = "boot-id"


def next_boot_id(state_dir: str, wall_clock_ns: int) -> int:
    path = os.path.join(state_dir, FILE_NAME)
    last = 0
    try:
        with open(path, encoding="ascii") as handle:
            last = int(handle.read().strip() or 0)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as err:
        log.warning("cannot read %s (%s); starting from the clock", path, err)
    boot_id = max(wall_clock_ns, last + 1) & 0xFFFFFFFFFFFFFFFF
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="ascii") as handle:
            handle.write(f"{boot_id}\n")
        os.replace(temporary, path)
    except OSError as err:
        log.warning("cannot store the boot id in %s (%s): if the clock goes back before the next "
                    "start, peers will ignore this node until it passes the old value", state_dir,
                    err.strerror or err)
    return boot_id
