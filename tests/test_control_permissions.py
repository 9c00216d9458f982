"""Who may use the control socket: root, and members of control.group; nobody else.

Two independent locks, each shown on its own: the socket file's mode (0600,
or 0660 with the group) and the agent's SO_PEERCRED check on every
connection, which still refuses a user when the file is opened to everyone
(chmod 0666 here). Real unprivileged users run the real `hapacs status`
through runuser; the users and the group exist only for the test.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lab.cluster import REPO, AgentCluster
from .fixtures import lab_fixture

NOLOGIN = "/usr/sbin/nologin"


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@pytest.fixture
def accounts():
    """Create users and groups with unique names; remove them all at the end, even on failure."""
    if os.geteuid() != 0:
        raise AssertionError("this test needs root: it creates users and network namespaces")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "runuser"):
        if not any(os.access(os.path.join(d, tool), os.X_OK) for d in ("/usr/sbin", "/usr/bin", "/sbin")):
            raise AssertionError(f"missing program needed by this test: {tool}")
    tag = f"{os.getpid() % 100000}"
    users: list[str] = []
    groups: list[str] = []

    class Accounts:
        def group(self, name: str) -> str:
            name = f"hpc{name}{tag}"
            completed = _run(["groupadd", "-r", name])
            assert completed.returncode == 0, completed.stderr
            groups.append(name)
            return name

        def user(self, name: str, groups_: tuple[str, ...] = ()) -> str:
            name = f"hpc{name}{tag}"
            argv = ["useradd", "-M", "-r", "-s", NOLOGIN] + (["-G", ",".join(groups_)] if groups_ else []) + [name]
            completed = _run(argv)
            assert completed.returncode == 0, completed.stderr
            users.append(name)
            return name

    try:
        yield Accounts()
    finally:
        for name in users:
            _run(["userdel", name])
        for name in groups:
            _run(["groupdel", name])


def _python_for(user: str) -> str:
    """An interpreter the user may run that imports hapacs (the test's own may sit under /root, 0700)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        completed = _run(["runuser", "-u", user, "--", "env", f"PYTHONPATH={REPO}", candidate, "-c",
                          "import hapacs.cli"])
        if completed.returncode == 0:
            return candidate
    raise AssertionError(f"no Python that {user} may run can import hapacs from {REPO}: tried {sys.executable} "
                         "and /usr/bin/python3 (which needs python3-yaml)")


def status_as(user: str | None, socket_path: str) -> subprocess.CompletedProcess:
    if user is None:
        argv = [sys.executable, "-m", "hapacs", "status", "--json", "--socket", socket_path]
    else:
        argv = ["runuser", "-u", user, "--", "env", f"PYTHONPATH={REPO}", _python_for(user), "-m", "hapacs",
                "status", "--json", "--socket", socket_path]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/",
                          env={**os.environ, "PYTHONPATH": REPO})


def assert_refused(completed: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert completed.returncode == code, (completed.returncode, completed.stdout, completed.stderr)
    assert message in completed.stderr, completed.stderr
    assert completed.stdout == "", "a refused user must not get the status"


def assert_allowed(completed: subprocess.CompletedProcess) -> None:
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["node"] == "pacs-a"


lab = lab_fixture("cp", hosts=("a",), workstation=False)


def start_agent(lab, **extra) -> AgentCluster:
    cluster = AgentCluster(lab, multicast=True)
    cluster.add("a", 150, **extra)
    # Other users must be able to reach the socket's directory; the socket itself stays locked.
    os.chmod(lab.tmpdir, 0o755)
    os.chmod(cluster.dir, 0o755)
    cluster.start("a")
    lab.wait_for(lambda: cluster.status("a") is not None, 15, what="the agent answers")
    return cluster


def test_without_group_only_root_may_ask(lab, accounts):
    user = accounts.user("u")
    cluster = start_agent(lab)
    path = cluster.socket_path("a")
    try:
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0

        assert_allowed(status_as(None, path))
        # The file mode stops the user at connect().
        assert_refused(status_as(user, path), 3, f"permission denied on {path}")

        # Opened to everyone, the socket still refuses the user: SO_PEERCRED.
        os.chmod(path, 0o666)
        assert_refused(status_as(user, path), 1, "permission denied: only root may control this agent")
        uid = pwd.getpwnam(user).pw_uid
        assert f"control socket: refused uid {uid}" in Path(cluster.log_path("a")).read_text()
        assert_allowed(status_as(None, path))
    finally:
        print(cluster.logs())


def test_members_of_control_group_may_ask_others_may_not(lab, accounts):
    group = accounts.group("g")
    member = accounts.user("m", groups_=(group,))
    outsider = accounts.user("o")
    cluster = start_agent(lab, control={"group": group})
    path = cluster.socket_path("a")
    try:
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == grp.getgrnam(group).gr_gid

        assert_allowed(status_as(member, path))
        assert_allowed(status_as(None, path))
        assert_refused(status_as(outsider, path), 3, f"permission denied on {path}")

        os.chmod(path, 0o666)
        assert_refused(status_as(outsider, path), 1,
                       f"permission denied: only root and members of group {group} may control this agent")
        assert_allowed(status_as(member, path))
    finally:
        print(cluster.logs())
