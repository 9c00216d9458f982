"""The cluster's HMAC key file: one or two keys, private to the agent.

Format: one key per line (blank lines and lines starting with # are
ignored). The first key signs; every key listed is accepted, so a cluster
rotates keys one node at a time: add the new key as the second line on
every node, then move it to the first line node by node, then remove the
old one. Generate a key with `openssl rand -hex 32`.

Like ssh with a private key, the file is refused when group or others can
read it.
"""

from __future__ import annotations

import os
import stat

MIN_KEY_LENGTH = 16
MAX_KEYS = 2


class KeyFileError(Exception):
    """The key file cannot be used; the message says why and what to do."""


def load(path: str) -> tuple[bytes, ...]:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist; create it (readable by root only from the start) "
                           f"with: (umask 077; openssl rand -hex 32 > {path})") from None
    except OSError as err:
        raise KeyFileError(f"cannot read {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by group or others (mode {mode:04o}); "
                           f"run: chmod 600 {path}")
    try:
        with open(path, "rb") as handle:
            content = handle.read(64 * 1024)
    except OSError as err:
        raise KeyFileError(f"cannot read {path}: {err.strerror}") from None
    keys = [line.strip() for line in content.splitlines()]
    keys = [k for k in keys if k and not k.startswith(b"#")]
    if not keys:
        raise KeyFileError(f"{path} holds no key; put one key per line "
                           f"(generate one with: openssl rand -hex 32)")
    if len(keys) > MAX_KEYS:
        raise KeyFileError(f"{path} holds {len(keys)} keys; at most {MAX_KEYS} are allowed "
                           "(the current key first, then the next one during a rotation)")
    for number, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_LENGTH:
            raise KeyFileError(f"key {number} in {path} is {len(key)} characters long; "
                               f"at least {MIN_KEY_LENGTH} are needed (openssl rand -hex 32 gives 64)")
    return tuple(keys)
