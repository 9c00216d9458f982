"""notify.command: a real script gets each transition, in order, one at a time, never stalling the agent.

First the listener alone on a real event loop, fed Transition effects; then
real agents in a lab namespace whose scripts write what they received into
files the test waits on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import pytest

from hapacs.config import NotifyConfig
from hapacs.effects import Notice, Reason, Transition, Why
from hapacs.notify import BACKLOG, NotifyListener
from hapacs.states import State
from lab.cluster import AgentCluster
from .fixtures import lab_fixture

VIPS = ["192.0.2.100/24", "2001:db8::100/64"]


def transition(old: State, new: State, text: str, code: Why = Why.MASTER_DOWN) -> Transition:
    return Transition(old, new, Reason(code, text))


def script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def recorder(directory: Path, delay_s: float = 0.0) -> tuple[Path, Path]:
    """A script that appends what it got to a file: start and end lines show any overlap."""
    out = directory / "received"
    path = script(directory, "record.sh",
                  f'echo "start $HAPACS_PREV_STATE>$HAPACS_STATE" >> {out}\n'
                  f'sleep {delay_s}\n'
                  f'printf "%s|%s|%s|%s|%s|%s\\n" "$HAPACS_NODE" "$HAPACS_PREV_STATE" "$HAPACS_STATE" '
                  f'"$HAPACS_REASON" "$HAPACS_REASON_CODE" "$HAPACS_VIPS" >> {out}\n')
    return path, out


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


class LoopLag:
    """How late a 10 ms ticker on the loop ran: proof the loop never blocked.

    The scripts below take 0.6 s or more, so running one on the loop would show
    as a lag of that size. The limit leaves room for the test machine: an idle
    loop alone saw stalls of 100-150 ms there (a busy 2-CPU VM).
    """

    LIMIT_S = 0.5

    def __init__(self):
        self.worst_s = 0.0
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self):
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.worst_s = max(self.worst_s, loop.time() - before - 0.01)

    def stop(self):
        self._task.cancel()


@pytest.fixture
def log():
    logger = logging.getLogger("test.notify")
    logger.setLevel(logging.DEBUG)
    return logger


def test_script_gets_each_transition_in_order_one_at_a_time(tmp_path, log):
    command, out = recorder(tmp_path, delay_s=0.6)
    sequence = [transition(State.INIT, State.BACKUP, "pacs-b is MASTER", Why.MASTER_HEARD),
                transition(State.BACKUP, State.MASTER, "MASTER pacs-b silent for 0.35 s"),
                transition(State.MASTER, State.FAULT, "link eth0 down (NO-CARRIER)", Why.FAULT)]

    async def main():
        listener = NotifyListener(NotifyConfig((str(command),), 5.0), "pacs-a", VIPS, log)
        lag = LoopLag()
        for effect in [Notice("not a transition")] + sequence:
            listener(effect)
        await until(lambda: len(lines(out)) == 6, 10, "three runs")
        lag.stop()
        await listener.close()
        return lag.worst_s

    worst_lag_s = asyncio.run(main())
    got = lines(out)
    assert [line for line in got if line.startswith("start")] == \
        ["start INIT>BACKUP", "start BACKUP>MASTER", "start MASTER>FAULT"]
    assert all(got[i].startswith("start") and not got[i + 1].startswith("start") for i in range(0, 6, 2)), \
        f"runs overlapped: {got}"
    assert [line for line in got if not line.startswith("start")] == [
        f"pacs-a|INIT|BACKUP|pacs-b is MASTER|master-heard|{' '.join(VIPS)}",
        f"pacs-a|BACKUP|MASTER|MASTER pacs-b silent for 0.35 s|master-down|{' '.join(VIPS)}",
        f"pacs-a|MASTER|FAULT|link eth0 down (NO-CARRIER)|fault|{' '.join(VIPS)}",
    ]
    assert worst_lag_s < LoopLag.LIMIT_S, f"the loop stalled {worst_lag_s * 1000:.0f} ms"


def test_without_a_command_nothing_runs_until_a_reload_sets_one(tmp_path, log):
    command, out = recorder(tmp_path)

    async def main():
        listener = NotifyListener(NotifyConfig(None, 10.0), "pacs-a", VIPS, log)
        listener(transition(State.INIT, State.BACKUP, "before the reload"))
        listener.reconfigure(NotifyConfig((str(command),), 5.0), ["192.0.2.101/24"])
        listener(transition(State.BACKUP, State.MASTER, "after the reload"))
        await until(lambda: len(lines(out)) == 2, 10, "the run after the reload")
        await listener.close()

    asyncio.run(main())
    assert lines(out)[1] == "pacs-a|BACKUP|MASTER|after the reload|master-down|192.0.2.101/24"


def test_failures_are_logged_once_with_the_reason_and_the_next_transition_runs(tmp_path, log, caplog):
    failing = script(tmp_path, "fail.sh", 'echo "no route to the RIS" >&2\nexit 3\n')
    not_executable = tmp_path / "plain.txt"
    not_executable.write_text("#!/bin/sh\n")
    command, out = recorder(tmp_path)

    async def main():
        for argv in ([str(failing)], [str(tmp_path / "missing.sh")], [str(not_executable)]):
            listener = NotifyListener(NotifyConfig(tuple(argv), 5.0), "pacs-a", VIPS, log)
            listener(transition(State.BACKUP, State.MASTER, "x"))
            await listener.close()
        listener = NotifyListener(NotifyConfig((str(command),), 5.0), "pacs-a", VIPS, log)
        listener(transition(State.BACKUP, State.MASTER, "after the failures"))
        await until(lambda: len(lines(out)) == 2, 10, "the working script")
        await listener.close()

    with caplog.at_level(logging.DEBUG, logger="test.notify"):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"notify: {failing} for BACKUP -> MASTER failed: exit status 3: no route to the RIS",
        f"notify: cannot run {tmp_path / 'missing.sh'} for BACKUP -> MASTER: No such file or directory",
        f"notify: cannot run {not_executable} for BACKUP -> MASTER: Permission denied",
    ]


def test_a_hanging_script_and_its_child_are_killed_at_the_timeout(tmp_path, log, caplog):
    pids = tmp_path / "pids"
    hanging = script(tmp_path, "hang.sh", f"sleep 300 &\necho $$ $! > {pids}\nwait\n")
    command, out = recorder(tmp_path)

    async def main():
        listener = NotifyListener(NotifyConfig((str(hanging),), 1.0), "pacs-a", VIPS, log)
        lag = LoopLag()
        started = time.monotonic()
        listener(transition(State.BACKUP, State.MASTER, "first"))
        await until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 5, "the script's pids")
        script_pid, child_pid = map(int, pids.read_text().split())
        await until(lambda: not alive(script_pid) and not alive(child_pid), 5, "script and child killed")
        killed_after_s = time.monotonic() - started
        listener.config = NotifyConfig((str(command),), 5.0)   # the next transition still runs
        listener(transition(State.MASTER, State.BACKUP, "second"))
        await until(lambda: len(lines(out)) == 2, 5, "the next transition")
        lag.stop()
        await listener.close()
        return killed_after_s, lag.worst_s

    with caplog.at_level(logging.WARNING, logger="test.notify"):
        killed_after_s, worst_lag_s = asyncio.run(main())
    assert 1.0 <= killed_after_s < 5.0
    assert worst_lag_s < LoopLag.LIMIT_S, f"the loop stalled {worst_lag_s * 1000:.0f} ms"
    assert [r.getMessage() for r in caplog.records] == [
        f"notify: {hanging} for BACKUP -> MASTER did not finish within 1 s; killed it and its children"]


def test_a_backlog_keeps_the_newest_transitions_and_says_what_it_dropped(tmp_path, log, caplog):
    command, out = recorder(tmp_path, delay_s=0.2)
    states = [State.BACKUP, State.MASTER]
    burst = [transition(states[i % 2], states[(i + 1) % 2], f"flap {i}") for i in range(BACKLOG + 10)]

    async def main():
        listener = NotifyListener(NotifyConfig((str(command),), 5.0), "pacs-a", VIPS, log)
        listener(burst[0])
        await until(lambda: lines(out) == ["start BACKUP>MASTER"], 5, "the first run")
        for effect in burst[1:]:
            listener(effect)
        await until(lambda: len(lines(out)) == 2 * (BACKLOG + 1), 30, "the backlog")
        await listener.close()
        return listener.dropped

    with caplog.at_level(logging.WARNING, logger="test.notify"):
        dropped = asyncio.run(main())
    reasons = [line.split("|")[3] for line in lines(out) if not line.startswith("start")]
    assert reasons == ["flap 0"] + [f"flap {i}" for i in range(10, BACKLOG + 10)]
    assert dropped == 9
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 9 and all(f"{BACKLOG} transitions already wait" in m for m in messages)


def test_close_waits_a_bounded_time_then_kills_the_running_script(tmp_path, log):
    pids = tmp_path / "pids"
    hanging = script(tmp_path, "hang.sh", f"echo $$ > {pids}\nexec sleep 300\n")

    async def main():
        listener = NotifyListener(NotifyConfig((str(hanging),), 60.0), "pacs-a", VIPS, log)
        listener(transition(State.MASTER, State.INIT, "shutdown", Why.SHUTDOWN))
        listener(transition(State.INIT, State.BACKUP, "never run"))
        # The shell creates the file before it writes to it: wait for the PID itself.
        await until(lambda: pids.exists() and pids.read_text().strip(), 5, "the script started")
        started = time.monotonic()
        await listener.close(grace_s=0.5)
        return time.monotonic() - started, int(pids.read_text())

    took_s, pid = asyncio.run(main())
    assert 0.5 <= took_s < 4.0
    assert not alive(pid)


# --- real agents ---------------------------------------------------------------------------


lab = lab_fixture("nt", hosts=("a", "b"), workstation=False)


def test_agents_run_the_script_on_real_transitions(lab):
    directory = Path(lab.mkdtemp("notify"))
    cluster = AgentCluster(lab)
    outputs = {}
    for host, priority in (("a", 150), ("b", 100)):
        (directory / host).mkdir()
        command, outputs[host] = recorder(directory / host)
        cluster.add(host, priority, notify={"command": [str(command)]})
    try:
        cluster.start("a")
        cluster.wait_state("a", "MASTER")
        cluster.start("b")
        cluster.wait_state("b", "BACKUP")
        lab.wait_for(lambda: len(lines(outputs["b"])) >= 2, 10, what="b notified of INIT -> BACKUP")
        cluster.kill("a", signal.SIGKILL)
        cluster.wait_state("b", "MASTER", timeout=5)
        lab.wait_for(lambda: len(lines(outputs["b"])) >= 4, 10, what="b notified of BACKUP -> MASTER")
        got = [line.split("|") for line in lines(outputs["b"]) if not line.startswith("start")]
        assert [(g[0], g[1], g[2], g[4], g[5]) for g in got] == [
            ("pacs-b", "INIT", "BACKUP", "master-heard", "192.0.2.100/24"),
            ("pacs-b", "BACKUP", "MASTER", "master-down", "192.0.2.100/24")]
        assert "pacs-a silent" in got[1][3]
        transitions = [(t["from"], t["to"], t["reason"]) for t in cluster.transitions("b")]
        assert [(g[1], g[2], g[3]) for g in got] == transitions, "the script got what status shows"
        a_got = [line.split("|")[1:3] for line in lines(outputs["a"]) if not line.startswith("start")]
        assert a_got and a_got[-1] == ["INIT", "MASTER"]
    finally:
        print(cluster.logs())


def test_failing_and_hanging_scripts_leave_the_agent_running(lab):
    directory = Path(lab.mkdtemp("notify"))
    pids = directory / "pids"
    failing = script(directory, "fail.sh", "echo 'cannot reach the pager gateway' >&2\nexit 1\n")
    hanging = script(directory, "hang.sh", f"sleep 300 &\necho $$ $! >> {pids}\nwait\n")
    cluster = AgentCluster(lab)
    cluster.add("a", 150, notify={"command": [str(failing)]})
    cluster.add("b", 100, notify={"command": [str(hanging)], "timeout": 0.5})
    try:
        cluster.start("a")
        cluster.wait_state("a", "MASTER")
        cluster.start("b")
        cluster.wait_state("b", "BACKUP")
        lab.wait_for(lambda: "notify: " in Path(cluster.log_path("a")).read_text(), 10,
                     what="a logs the failed script")
        assert f"notify: {failing} for INIT -> MASTER failed: exit status 1: cannot reach the pager gateway" \
            in Path(cluster.log_path("a")).read_text()
        lab.wait_for(lambda: "did not finish within 0.5 s" in Path(cluster.log_path("b")).read_text(), 10,
                     what="b kills the hanging script")
        script_pid, child_pid = map(int, pids.read_text().split()[:2])
        lab.wait_for(lambda: not alive(script_pid) and not alive(child_pid), 5, what="script and child gone")
        # Both agents carry on: status answers, and a failover still happens and is notified.
        assert cluster.state("a") == "MASTER" and cluster.state("b") == "BACKUP"
        cluster.kill("a", signal.SIGKILL)
        cluster.wait_state("b", "MASTER", timeout=5)
        lab.wait_for(lambda: len(pids.read_text().split()) == 4, 10, what="b ran the script again")
        assert cluster.status("b") is not None
    finally:
        print(cluster.logs())
