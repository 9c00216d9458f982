"""Running the `nft` command: the one way hapacs talks to nftables.

Every nftables adapter (hapacs.nftdirect, hapacs.transparent, hapacs.drain)
hands its ruleset to `nft -f -` on stdin, or runs one short command, through
`run()`. It bounds the wait (a hung nft is killed and reaped, never left
behind) and turns a missing binary, a process that cannot start and a
timeout into one NftError; `load()` also turns nft's refusal into an
NftError with nft's own error lines. Python's nftables bindings are not
used: Debian ships them for the system Python only, not for a virtualenv.

What it must never do: build or read a ruleset (each adapter owns its
table), or decide anything.
"""

from __future__ import annotations

import asyncio
import shutil

NFT = "nft"
TIMEOUT_S = 10.0
MISSING = "nft is not installed on this host (Debian: apt install nftables)"
NEEDS_NFT = "needs the nft command, which is not installed on this host (Debian: apt install nftables)"


class NftError(Exception):
    """nft is missing, refuses the ruleset or does not answer; the message says which."""


async def run(args: list[str], text: str | None = None, timeout_s: float = TIMEOUT_S,
              needed_by: str | None = None) -> tuple[int, str]:
    """Run `nft ARGS` with `text` on its stdin; (exit code, its stderr). NftError when nft is missing
    (naming what needs it, `needed_by`), cannot be started, or does not answer within timeout_s."""
    if shutil.which(NFT) is None:
        raise NftError(MISSING + (f"; {needed_by} needs it" if needed_by else ""))
    try:
        process = await asyncio.create_subprocess_exec(
            NFT, *args, stdin=asyncio.subprocess.PIPE if text is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    except OSError as err:
        raise NftError(f"cannot run nft: {err.strerror or err}") from None
    try:
        _, err = await asyncio.wait_for(process.communicate(text.encode() if text is not None else None), timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise NftError(f"nft did not answer within {timeout_s:g} s") from None
    return process.returncode, err.decode(errors="replace").strip()


async def load(args: list[str], text: str, needed_by: str | None = None) -> None:
    """Run `nft ARGS` (such as `-f -`) on `text`; NftError with nft's error lines when it refuses."""
    code, err = await run(args, text, needed_by=needed_by)
    if code != 0:
        lines = [line for line in err.splitlines() if "Error" in line]
        raise NftError("nft refuses the ruleset: " + ("; ".join(lines) or f"exit {code}"))
