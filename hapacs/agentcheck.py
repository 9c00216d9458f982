"""HAProxy's agent-check, answered by this node's agent: may its PACS take new associations?

The HAProxy of whichever node holds a VIP connects here every 0.2 s
per service, sends the service's name and a newline, and reads one line
back (then the connection is closed):

    up ready            healthy: new associations welcome (`ready` ends an earlier drain)
    up drain            healthy, but no new associations: open ones finish
                        (`hapacs drain on`, maintenance, or this node handing over)
    down #REASON        the service's health check is down, or the node is in FAULT

(`down#reason` without the space is rejected by HAProxy, and a line
without its newline is ignored.) A request that is not one short line
naming a service gets no answer, which HAProxy takes as "no news": it is
counted and logged at a limited rate, and never stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .logs import RateLimited

MAX_REQUEST_BYTES = 64
REQUEST_TIMEOUT_S = 2.0

log = logging.getLogger("hapacs.balance")

# The answer for a service, or None when the service is unknown here.
Answer = Callable[[str], "str | None"]


class AgentCheckServer:
    def __init__(self, host: str, port: int, answer: Answer):
        self.host, self.port, self.answer = host, port, answer
        self.bad_requests = 0
        self.answered = 0
        self._server: asyncio.base_events.Server | None = None
        self._limited = RateLimited(log)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True,
                                                  limit=MAX_REQUEST_BYTES)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                self._bad(peer, f"longer than {MAX_REQUEST_BYTES} bytes")
                return
            except asyncio.IncompleteReadError:
                self._bad(peer, "closed before a whole line")
                return
            except asyncio.TimeoutError:
                self._bad(peer, f"no line within {REQUEST_TIMEOUT_S:g} s")
                return
            service = line.strip().decode("ascii", errors="replace")
            reply = self.answer(service)
            if reply is None:
                self._bad(peer, f"unknown service {service[:32]!r}")
                return
            writer.write(reply.encode("ascii", errors="replace") + b"\n")
            await writer.drain()
            self.answered += 1
        except OSError as err:                  # ConnectionError included
            log.debug("agent-check client went away: %s", err)
        except Exception:
            log.exception("agent-check request failed; the agent carries on")
        finally:
            writer.close()

    def _bad(self, peer, why: str) -> None:
        self.bad_requests += 1
        source = peer[0] if isinstance(peer, tuple) and peer else "?"
        self._limited.warning("bad-agent-check", time.monotonic(),
                              "agent-check: bad request from %s: %s; expected a service name and a newline",
                              source, why)
