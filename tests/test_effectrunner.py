"""The shell's effect runner, as the agent wires it: each effect counted once in the status book."""

from __future__ import annotations

import asyncio
import textwrap

from hapacs import config as cfg
from hapacs.agent import Agent
from hapacs.effects import Outgoing, SendAdvert
from hapacs.heartbeat import HeartbeatWriter
from hapacs.states import Flags, State


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return False


def test_a_heartbeat_sent_is_counted_once(tmp_path, key):
    path = tmp_path / "hapacs.yaml"
    path.write_text(textwrap.dedent(f"""\
        node: {{name: pacs-a, priority: 150}}
        cluster: {{id: 51, interface: eth0, peers: [192.0.2.12], auth_key_file: {key}}}
        vips: [{{address: 192.0.2.100/24}}]
        """))
    agent = Agent(cfg.load(str(path)))
    agent.writer = HeartbeatWriter(51, "pacs-a", 1)
    agent.transport = FakeTransport()

    async def send_three() -> None:
        agent.loop = asyncio.get_running_loop()     # the book's listener reads the loop's clock
        for _ in range(3):
            agent.effects.execute_now(SendAdvert(Outgoing(State.BACKUP, 150, Flags.NONE, 0)))
    asyncio.run(send_three())
    assert len(agent.transport.sent) == 3
    assert agent.book.counters().adverts_sent == 3
