"""The CLI waits as long as the agent says a command takes, never less (shape issue, behaviour 3).

A scripted agent on a real Unix socket answers like the real one: a
"pending" line with the core's deadline, the final answer later. Before,
the CLI gave up after a wait of its own (60 s for takeover, drain + 30 s for
release), which a large advert_interval outlasts, and called the agent
unreachable while it was still handing over.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from hapacs import cli, control


class ScriptedAgent:
    """Accepts one connection, records the request, sends each (delay_s, reply) in turn."""

    def __init__(self, path: str, script: list[tuple[float, dict]]):
        self.path, self.script = path, script
        self.request: dict | None = None
        self._closing = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.server.accept()
        with connection, connection.makefile("rb") as lines:
            self.request = json.loads(lines.readline())
            for delay_s, reply in self.script:
                if self._closing.wait(delay_s):
                    return   # the test is over: the rest of the script would reach nobody
                try:
                    connection.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    return

    def close(self) -> None:
        self._closing.set()
        self.server.close()
        self.thread.join(timeout=10)


def run_cli(socket_path: str, script: list[tuple[float, dict]], argv: list[str]):
    """cli.main(argv) against a ScriptedAgent: (the agent, with the request it got; exit code; seconds taken)."""
    agent = ScriptedAgent(socket_path, script)
    try:
        started = time.monotonic()
        code = cli.main(argv)
        return agent, code, time.monotonic() - started
    finally:
        agent.close()


@pytest.fixture
def socket_path(tmp_path, monkeypatch):
    # The CLI's own patience for a first answer, shortened so the test takes a second.
    monkeypatch.setattr(cli, "ANSWER_TIMEOUT_S", 0.3)
    return str(tmp_path / "agent.sock")


def test_takeover_waits_the_deadline_the_agent_gives(socket_path, capsys):
    agent, code, _took = run_cli(socket_path, [
        (0.0, {"pending": True, "wait_s": 3.0}),
        (1.0, {"ok": True, "message": "this node is MASTER now", "before": "BACKUP", "after": "MASTER"}),
    ], ["takeover", "--socket", socket_path])
    assert code == cli.EXIT_OK, capsys.readouterr()
    assert agent.request == {"command": "takeover", "progress": True}
    assert "this node is MASTER now (BACKUP -> MASTER)" in capsys.readouterr().out


def test_release_waits_past_its_drain_timeout_when_the_agent_says_so(socket_path, capsys):
    # --drain-timeout 0: the old CLI waited 30 s; the agent's handover wait with slow timers is longer.
    agent, code, _took = run_cli(socket_path, [
        (0.0, {"pending": True, "wait_s": 2.0}),
        (1.0, {"ok": True, "message": "handed over to pacs-b", "before": "MASTER", "after": "BACKUP"}),
    ], ["release", "--drain-timeout", "0", "--socket", socket_path])
    assert code == cli.EXIT_OK
    assert agent.request["drain_timeout_s"] == 0 and agent.request["progress"] is True


def test_without_a_pending_line_the_cli_gives_up_after_its_own_timeout(socket_path, capsys):
    """The wait above is the agent's doing: an agent that says nothing is not waited for."""
    _agent, code, took = run_cli(socket_path, [(1.0, {"ok": True, "message": "late"})],
                                 ["takeover", "--socket", socket_path])
    assert code == cli.EXIT_UNREACHABLE
    assert "did not answer within 0.3 s" in capsys.readouterr().err
    assert took < 0.9


def test_a_pending_line_past_its_deadline_is_not_waited_for_for_ever(socket_path, capsys, monkeypatch):
    # The margin shortened from 5 s so the test waits 1 s, not 5; the answer comes after both.
    monkeypatch.setattr(control, "PENDING_MARGIN_S", 0.9)
    _agent, code, took = run_cli(socket_path, [(0.0, {"pending": True, "wait_s": 0.1}), (3.0, {"ok": True})],
                                 ["takeover", "--socket", socket_path])
    assert code == cli.EXIT_UNREACHABLE
    assert 0.9 <= took < 0.1 + 0.9 + 0.5
