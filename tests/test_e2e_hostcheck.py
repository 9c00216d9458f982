"""A configuration that is valid as a file but does not fit the host: `check-config`
(run inside the host's namespace, with its real interfaces) reports it as
`FILE:LINE: key: message ... on this host`, `run` refuses to start with the same
message, and `reload` refuses it the same way while the agent runs on.

The cases: a missing interface; a VIP equal to the host's own address (which `run`
used to report as the misleading "has no IPv4 address"); a VIP outside its
interface's subnets; a script check whose command does not exist or cannot be run;
a notify command that does not exist. And `reload -c OTHER` is refused, naming the
file the agent reads.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from lab.cluster import REPO, AgentCluster

from .fixtures import lab_fixture

A = "192.0.2.11"

lab = lab_fixture("ms", hosts=("a",), workstation=False)


@pytest.fixture
def cluster(lab):
    cluster = AgentCluster(lab)
    cluster.add("a", 150, cluster={"peers": ["192.0.2.12"]})
    return cluster


def hapacs_in(lab, host, *args, timeout=60) -> subprocess.CompletedProcess:
    """The real `hapacs` command inside the host's namespace."""
    return lab.exec(host, ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "hapacs", *args],
                    check=False, timeout=timeout)


def write(cluster, name: str, config: dict) -> tuple[str, list[str]]:
    path = os.path.join(cluster.dir, name)
    text = yaml.safe_dump(config, sort_keys=False)
    with open(path, "w") as handle:
        handle.write(text)
    return path, text.splitlines()


def line_of(lines: list[str], needle: str, after: str | None = None) -> int:
    """1-based line of the first line containing `needle` (after the line containing `after`)."""
    start = 0 if after is None else next(i for i, line in enumerate(lines) if after in line) + 1
    return next(i for i in range(start, len(lines)) if needle in lines[i]) + 1


def script(cluster, name: str, mode: int) -> str:
    path = os.path.join(cluster.dir, name)
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, mode)
    return path


def test_check_config_reports_what_run_would_refuse_on_this_host(lab, cluster):
    good = cluster.config("a")
    ifname = lab.node("a").ifname
    path, _ = write(cluster, "good.yaml", good)
    result = hapacs_in(lab, "a", "check-config", "-c", path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert "checked against this host" in result.stderr

    runnable = script(cluster, "check-ok.sh", 0o755)
    not_executable = script(cluster, "check-noexec.sh", 0o644)
    bad = dict(good)
    bad["cluster"] = {**good["cluster"], "interface": "nosuch9"}
    bad["vips"] = [{"address": "192.0.2.11/24", "interface": ifname},     # this host's own address
                   {"address": "198.51.100.100/24", "interface": ifname},  # outside every subnet of it
                   {"address": "192.0.2.101/24", "interface": ifname}]     # fine
    bad["checks"] = [{"name": "gone", "type": "script", "command": "/nonexistent/check.sh"},
                     {"name": "noexec", "type": "script", "command": [not_executable, "--quick"]},
                     {"name": "fine", "type": "script", "command": runnable},
                     {"name": "nopath", "type": "script", "command": "no-such-program-ms --x"}]
    bad["notify"] = {"command": "/nonexistent/notify.sh"}
    path, lines = write(cluster, "bad.yaml", bad)
    result = hapacs_in(lab, "a", "check-config", "-c", path)
    assert result.returncode == 2, result.stdout + result.stderr
    reported = result.stderr.strip().splitlines()
    expected = [
        (line_of(lines, "interface: nosuch9"), "cluster.interface", "interface nosuch9 not found on this host"),
        (line_of(lines, "192.0.2.11/24"), "vips[0].address", "192.0.2.11 is this host's own address"),
        (line_of(lines, "198.51.100.100/24"), "vips[1].address",
         f"198.51.100.100 is outside every subnet of {ifname} on this host (192.0.2.0/24)"),
        (line_of(lines, "command:", after="name: gone"), "checks[0].command",
         "/nonexistent/check.sh: no such file or directory on this host"),
        (line_of(lines, "command:", after="name: noexec"), "checks[1].command",
         f"{not_executable} is not executable on this host (mode 0644)"),
        (line_of(lines, "command:", after="name: nopath"), "checks[3].command",
         "no-such-program-ms is not found in PATH on this host"),
        (line_of(lines, "command: /nonexistent/notify.sh"), "notify.command",
         "/nonexistent/notify.sh: no such file or directory on this host"),
    ]
    assert len(reported) == len(expected), result.stderr
    for (line, key, message), text in zip(sorted(expected), reported):
        assert text.startswith(f"{path}:{line}: {key}: {message}"), (text, line, key, message)
    assert "has no IPv4 address" not in result.stderr, "the VIP, not the interface, is the problem"

    # The same file judged alone: valid.
    alone = hapacs_in(lab, "a", "check-config", "--file-only", "-c", path)
    assert alone.returncode == 0 and alone.stdout.strip() == "ok", alone.stderr
    assert "not checked against this host" in alone.stderr


@pytest.mark.parametrize("case", ["missing interface", "vip is own address", "vip outside subnet",
                                  "missing script"])
def test_run_refuses_what_check_config_reports(lab, cluster, case):
    config = cluster.config("a")
    ifname = lab.node("a").ifname
    if case == "missing interface":
        config["cluster"]["interface"] = "nosuch9"
    elif case == "vip is own address":
        config["vips"] = [{"address": f"{A}/24", "interface": ifname}]
    elif case == "vip outside subnet":
        config["vips"] = [{"address": "198.51.100.100/24", "interface": ifname}]
    else:
        config["checks"] = [{"name": "gone", "type": "script", "command": "/nonexistent/check.sh"}]
    path, _ = write(cluster, "case.yaml", config)
    checked = hapacs_in(lab, "a", "check-config", "-c", path)
    assert checked.returncode == 2, checked.stderr
    problem = checked.stderr.strip()
    assert problem.count("\n") == 0 and "on this host" in problem, problem

    ran = hapacs_in(lab, "a", "run", "-c", path, timeout=30)
    assert ran.returncode == 1, ran.stderr[-2000:]
    assert f"cannot start: {problem}" in ran.stderr, ran.stderr[-2000:]
    assert "has no IPv4 address" not in ran.stderr
    assert lab.addresses("a") == {f"{A}/24", "2001:db8::11/64"}, "a refused start touches nothing"


def test_reload_refuses_what_check_config_reports_and_another_file(lab, cluster):
    cluster.start("a")
    # MASTER and holding the VIP: its lease on the interface must not pass for the host's own address.
    lab.wait_for(lambda: cluster.state("a") == "MASTER" and lab.holders("192.0.2.100") == ["a"], 15,
                 what="a MASTER holding the VIP")
    path = cluster.config_path("a")
    config = cluster.config("a")
    ifname = lab.node("a").ifname
    config["vips"] = [{"address": "198.51.100.100/24", "interface": ifname}]
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    checked = hapacs_in(lab, "a", "check-config", "-c", path)
    assert checked.returncode == 2, checked.stderr

    reloaded = cluster.cli("a", "reload")
    assert reloaded.returncode == 1, reloaded.stdout + reloaded.stderr
    assert "the agent runs on unchanged" in reloaded.stderr
    assert checked.stderr.strip() in reloaded.stderr, (checked.stderr, reloaded.stderr)
    status = cluster.status("a")
    assert [v["address"] for v in status["vips"]] == ["192.0.2.100/24"], "the old configuration stays"

    # reload -c OTHER: refused, naming the file this agent reads (and OTHER is not read).
    other, _ = write(cluster, "other.yaml", cluster.config("a"))
    refused = subprocess.run([sys.executable, "-m", "hapacs", "reload", "-c", other,
                              "--socket", cluster.socket_path("a")],
                             capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": REPO})
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"this agent reads {path}, not {other}" in refused.stderr, refused.stderr
    # Without -c, reload means the agent's own file, whatever it is.
    cluster.write("a")
    plain = subprocess.run([sys.executable, "-m", "hapacs", "reload", "--socket", cluster.socket_path("a")],
                           capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": REPO})
    assert plain.returncode == 0 and "reloaded" in plain.stdout, plain.stdout + plain.stderr
