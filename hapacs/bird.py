"""BIRD 2, the host's BGP speaker: is its BGP session to the router Established?

The agent asks BIRD over its control socket (the one `birdc` uses), in
BIRD's own line protocol, on one kept-open Unix connection: after the
greeting (`0001 BIRD 2.0.12 ready.`) each command is one line, and each
reply is lines of a four-digit code and a text; `-` after the code means
more lines follow, a line starting with a blank continues the previous
code, and a space after the code ends the reply (`0000` when it succeeded,
8xxx/9xxx for an error). For `show protocols` the data lines carry code
1002: name, protocol, table, state, since, and for BGP the BGP state
(Established, Active, ...) first in the info column.

The answers are outside input: anything not in that shape is refused with
`BirdAnswerError(reason)`, the connection is dropped and opened again at
the next poll; an answer is bounded in lines, bytes and time. A missing or
refusing socket is `BirdUnreachable`. Both become one rate-limited log line
and a verdict of the gate (hapacs.bgpgate), never a crash. BIRD's routes
are not touched here: BIRD exports a routed VIP itself when the agent adds
it to lo (protocol direct), and withdraws it when the address goes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

from .bgpgate import BGP_STATES, Protocol, SessionGate
from .logs import RateLimited
from .states import State

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("hapacs.bgp")

SOURCE = "bgp"                 # the election's hold and fault source
ANSWER_TIMEOUT_S = 2.0         # connect, greeting, or one whole reply
MAX_REPLY_LINES = 4096
MAX_LINE_BYTES = 4096
_LINE = re.compile(r"^(\d{4})([ -])(.*)$")


class BirdUnreachable(Exception):
    """BIRD's control socket is missing, refuses, or does not answer in time."""


class BirdAnswerError(Exception):
    """BIRD (or whatever listens on the socket) answered something not in BIRD's protocol."""


def reply_lines(lines: list[str]) -> list[tuple[int, str]]:
    """(code, text) for each line of one reply; continuation lines keep the previous code. Pure."""
    parsed: list[tuple[int, str]] = []
    for line in lines:
        if line.startswith(" ") and parsed:
            parsed.append((parsed[-1][0], line[1:]))
            continue
        match = _LINE.match(line)
        if match is None:
            raise BirdAnswerError(f"a line that is not BIRD's reply format (4 digits, '-' or ' ', text): "
                                  f"{line[:60]!r}")
        parsed.append((int(match.group(1)), match.group(3)))
    return parsed


def ends_reply(line: str) -> bool:
    return len(line) >= 5 and line[:4].isdigit() and line[4] == " "


def parse_protocols(parsed: list[tuple[int, str]]) -> dict[str, Protocol]:
    """The BGP protocols of a `show protocols` reply, by name. Pure."""
    final_code = parsed[-1][0] if parsed else None
    if final_code is None or final_code >= 8000:
        raise BirdAnswerError(f"BIRD refused `show protocols`: {parsed[-1][1] if parsed else 'empty reply'}")
    protocols = {}
    for code, text in parsed:
        if code != 1002:
            continue
        words = text.split()
        if len(words) < 4:
            raise BirdAnswerError(f"a protocol line with fewer than 4 columns: {text[:60]!r}")
        name, kind, state = words[0], words[1], words[3]
        if kind != "BGP":
            continue
        position = next((i for i in range(4, len(words)) if words[i] in BGP_STATES), None)
        if position is not None:
            protocols[name] = Protocol(name, words[position], " ".join(words[4:position]))
        else:   # a disabled or stopped protocol shows no BGP state
            protocols[name] = Protocol(name, "Down" if state in ("down", "flush") else state, " ".join(words[4:5]))
    return protocols


class BirdClient:
    """One connection to BIRD's control socket, opened when needed, dropped on any trouble."""

    def __init__(self, path: str):
        self.path = path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def show_protocols(self) -> dict[str, Protocol]:
        try:
            return await asyncio.wait_for(self._ask("show protocols"), ANSWER_TIMEOUT_S)
        except TimeoutError:     # asyncio.wait_for's, the builtin since Python 3.11
            self.close()
            raise BirdUnreachable(f"no whole answer from {self.path} within {ANSWER_TIMEOUT_S:g} s") from None
        except BirdAnswerError:
            self.close()
            raise
        except (OSError, EOFError) as err:
            self.close()
            text = getattr(err, "strerror", None) or str(err) or type(err).__name__
            raise BirdUnreachable(f"{self.path}: {text}") from None

    async def _ask(self, command: str) -> dict[str, Protocol]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE_BYTES)
            greeting = await self._reply()
            if not greeting or greeting[-1][0] != 1:
                raise BirdAnswerError(f"no BIRD greeting (0001 ... ready.): {greeting[:1]!r}")
        self.writer.write(command.encode() + b"\n")
        await self.writer.drain()
        return parse_protocols(await self._reply())

    async def _reply(self) -> list[tuple[int, str]]:
        lines = []
        while len(lines) < MAX_REPLY_LINES:
            try:
                raw = await self.reader.readline()
            except ValueError:      # asyncio's word for a line over the reader's limit
                raise BirdAnswerError(f"a line longer than {MAX_LINE_BYTES} bytes") from None
            if not raw:
                raise EOFError("BIRD closed the connection")
            try:
                line = raw.decode("ascii").rstrip("\n")
            except UnicodeDecodeError:
                raise BirdAnswerError(f"a line that is not ASCII text: {raw[:60]!r}") from None
            lines.append(line)
            if not line.startswith(" "):
                reply_lines([line])         # garbage fails now, not at a timeout
            if ends_reply(line):
                return reply_lines(lines)
        raise BirdAnswerError(f"a reply longer than {MAX_REPLY_LINES} lines")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class BgpWatch:
    """The shell's part: polls BIRD, feeds the gate, holds the election or faults a MASTER."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.config = agent.config.bgp
        self.gate = SessionGate(self.config.protocols, self.config.stable_for_s)
        self.client = BirdClient(self.config.socket)
        self.faulted = False
        self.was_ready = False
        self._limited = RateLimited(log)

    async def start(self) -> None:
        now = self.agent.loop.time()
        self.agent.core.set_hold(SOURCE, self.gate.hold_text(now), now)
        self.agent.start_task(self._run(), "bgp")

    async def stop(self) -> None:
        """Close the connection to BIRD (the agent cancels the poll task before, with all of its own)."""
        self.client.close()

    async def _run(self) -> None:
        loop = self.agent.loop
        while True:
            try:
                await self.poll()
            except Exception:     # a bug here must not freeze the gate in its last verdict
                log.exception("internal error while asking BIRD; asking again at the next poll")
            now = loop.time()
            wait = self.config.poll_interval_s
            opens = self.gate.ready_at()
            if opens is not None and opens > now:    # open the gate on time, not at the next poll
                wait = min(wait, opens - now)
            await asyncio.sleep(wait)

    async def poll(self) -> None:
        loop = self.agent.loop
        try:
            answer = await self.client.show_protocols()
            self.gate.update(answer, loop.time())
            missing = [name for name in self.config.protocols if name not in answer]
            if missing:
                self._limited.warning("missing", loop.time(), "BIRD has no BGP protocol %s (bgp.protocols); "
                                      "protocols there: %s", ", ".join(missing), ", ".join(answer) or "none")
        except BirdUnreachable as err:
            self.gate.failed(f"BGP speaker not reachable: {err}", True, loop.time())
            self._limited.warning("unreachable", loop.time(), "cannot ask BIRD (bgp.socket): %s", err)
        except BirdAnswerError as err:
            self.gate.failed(f"unreadable answer of BIRD: {err}", False, loop.time())
            self._limited.warning("garbage", loop.time(), "unreadable answer on %s, dropped: %s",
                                  self.config.socket, err)
        self.apply()

    def apply(self) -> None:
        """Turn the gate's verdict into the election's hold and, for a MASTER, a fault."""
        now = self.agent.loop.time()
        hold = self.gate.hold_text(now)
        master = self.agent.core.view(now).state == State.MASTER
        fault = self.gate.fault_text() if self.gate.session_down() and (master or self.faulted) else None
        if fault is not None and not self.faulted:
            log.warning("%s: handing the VIPs over", fault)
        ready = hold is None
        if ready != self.was_ready:
            (log.info if ready else log.warning)("BGP gate %s", "open: this node may be MASTER" if ready
                                                 else f"closed: {hold}")
            self.was_ready = ready
        self.faulted = fault is not None
        self.agent.feed(lambda t: self.agent.core.set_hold(SOURCE, hold, t)
                        + self.agent.core.set_fault(SOURCE, fault, t, "BGP session Established again"))

    def snapshot(self) -> dict:
        return self.gate.snapshot(self.agent.loop.time())


async def start(agent: Agent) -> BgpWatch | None:
    """The BGP gate, started, when bgp: is configured."""
    if agent.config.bgp is None:
        return None
    watch = BgpWatch(agent)
    await watch.start()
    return watch
