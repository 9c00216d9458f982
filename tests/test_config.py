"""Configuration: the sample is valid; every broken file gives `FILE:LINE: key: message` and exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hapacs import config as cfg

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
node:
  name: pacs-a
  priority: 150
cluster:
  id: 51
  interface: eth0
  peers: [192.0.2.12]
  auth_key_file: {key}
vips:
  - address: 192.0.2.100/24
"""


def write(tmp_path, text: str, key: str) -> str:
    path = tmp_path / "hapacs.yaml"
    path.write_text(textwrap.dedent(text).replace("{key}", key))
    return str(path)


def check_config(path: str) -> subprocess.CompletedProcess:
    """The file alone: these tests are about the file, not the host they run on
    (tests/test_e2e_hostcheck.py checks files against hosts in namespaces)."""
    return subprocess.run([sys.executable, "-m", "hapacs", "check-config", "--file-only", "-c", path],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_sample_config_is_valid_and_documents_every_section(tmp_path, key):
    sample = (REPO / "etc" / "hapacs.yaml").read_text().replace("/etc/hapacs/cluster.key", key)
    path = tmp_path / "sample.yaml"
    path.write_text(sample)
    result = check_config(str(path))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    loaded = cfg.load(str(path))
    assert loaded.cluster.advert_interval_s == 0.1 and loaded.cluster.dead_after == 3
    for key_name in ("quorum", "witness", "preempt_delay", "multicast_group", "state_dir", "engine_id",
                     "traps", "users", "group", "timeout", "min_free_percent", "query_level", "pidfile"):
        assert key_name in sample, f"the sample does not document {key_name}"


def test_defaults(tmp_path, key):
    loaded = cfg.load(write(tmp_path, GOOD, key))
    assert loaded.cluster.port == 5405 and loaded.cluster.preempt is True
    assert loaded.vips[0].interface == "eth0" and loaded.control.socket == "/run/hapacs/hapacs.sock"
    assert loaded.cluster.auth_keys == (b"0123456789abcdef0123456789abcdef",)
    assert "0123456789abcdef" not in repr(loaded)      # keys never end up in logs


def test_every_problem_is_reported_at_once(tmp_path, key):
    text = GOOD.replace("priority: 150", "priority: 999").replace("id: 51", "id: zero") \
        .replace("192.0.2.100/24", "192.0.2.100")
    result = check_config(write(tmp_path, text, key))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 3, result.stderr
    assert re.match(r".*hapacs\.yaml:3: node\.priority: 999 is out of range; allowed: 1 to 254$", lines[0])
    assert ":5: cluster.id:" in lines[1] and ":10: vips[0].address:" in lines[2]


# (replace this, with that) in GOOD, the line and key expected, and a part of the message.
BROKEN = [
    ("priority: 150", "priority: 0", 3, "node.priority", "out of range; allowed: 1 to 254"),
    ("priority: 150", "priority: high", 3, "node.priority", "whole number"),
    ("priority: 150", "priority: 1.5", 3, "node.priority", "whole number"),
    ("priority: 150", "priorty: 150", 3, "node.priorty", "did you mean priority"),
    ("name: pacs-a", "name: pacs a", 2, "node.name", "not a valid name"),
    ("name: pacs-a", "name: ''", 2, "node.name", "not a valid name"),
    ("id: 51", "id: 256", 5, "cluster.id", "allowed: 1 to 255"),
    ("interface: eth0", "interface: eth0/1", 6, "cluster.interface", "not a network interface name"),
    ("interface: eth0", "interface: averyveryverylongname", 6, "cluster.interface", "1 to 15 characters"),
    ("  interface: eth0\n", "", 4, "cluster.interface", "is required but missing"),
    ("node:", "notify: {timeout: 0}\nnode:", 1, "notify.timeout", "out of range"),
    ("node:", "notfy: {}\nnode:", 1, "notfy", "did you mean notify"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.300]", 7, "cluster.peers[0]", "not an IPv4 or IPv6 address"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12, 192.0.2.12]", 7, "cluster.peers", "same address twice"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12, '2001:db8::12']", 7, "cluster.peers", "mixes IPv4 and IPv6"),
    ("peers: [192.0.2.12]", "peers: 192.0.2.12", 7, "cluster.peers", "must be a list"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12]\n  advert_interval: 0.001", 8, "cluster.advert_interval",
     "allowed: 0.02 to 10 seconds"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12]\n  advert_interval: fast", 8, "cluster.advert_interval",
     "number of seconds"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12]\n  dead_after: 1", 8, "cluster.dead_after", "allowed: 2 to 255"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12]\n  preempt: maybe", 8, "cluster.preempt", "true or false"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12]\n  preempt_delay: -1", 8, "cluster.preempt_delay", "out of range"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12]\n  quorum: half", 8, "cluster.quorum", "none, majority"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12]\n  quorum: majority", 8, "cluster.quorum", "three or more"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12]\n  multicast_group: 192.0.2.1", 8, "cluster.multicast_group",
     "not a multicast address"),
    ("peers: [192.0.2.12]", "peers: [192.0.2.12]\n  witness: [{type: ping, host: 192.0.2.1}]", 8,
     "cluster.witness[0].type", "tcp, dicom-echo"),
    ("auth_key_file: {key}", "auth_key_file: relative.key", 8, "cluster.auth_key_file", "absolute path"),
    ("auth_key_file: {key}", "auth_key_file: /nonexistent/cluster.key", 8, "cluster.auth_key_file",
     "does not exist"),
    ("192.0.2.100/24", "192.0.2.100", 10, "vips[0].address", "needs a prefix length"),
    ("192.0.2.100/24", "192.0.2.0/24", 10, "vips[0].address", "network or broadcast"),
    ("192.0.2.100/24", "224.0.0.5/24", 10, "vips[0].address", "cannot be a VIP"),
    ("192.0.2.100/24", "192.0.2.12/24", 10, "vips", "also a peer address"),
    ("  - address: 192.0.2.100/24\n", "  - address: 192.0.2.100/24\n  - address: 192.0.2.100/25\n", 11,
     "vips", "listed twice"),
    ("vips:\n  - address: 192.0.2.100/24\n", "vips: []\n", 9, "vips", "at least 1 entry"),
    ("vips:\n  - address: 192.0.2.100/24\n", "", 1, "vips", "is required but missing"),
    ("node:\n  name: pacs-a\n  priority: 150\n", "node: [a]\n", 1, "node", "must be a mapping"),
    ("  name: pacs-a\n", "  name: pacs-a\n  name: pacs-b\n", 3, "node.name", "duplicate key"),
    ("  priority: 150\n", "  priority: [150\n", 4, "(file)", "flow sequence on line 3"),
    ("  priority: 150\n", "  priority: 150\n\tbad: tab\n", 4, "(file)", "not valid YAML"),
]


@pytest.mark.parametrize("old, new, line, key_path, message", BROKEN,
                         ids=[f"{i}-{b[3]}" for i, b in enumerate(BROKEN)])
def test_broken_config_gives_one_clear_line_and_exit_2(tmp_path, key, old, new, line, key_path, message):
    assert old in GOOD, old
    path = write(tmp_path, GOOD.replace(old, new, 1), key)
    result = check_config(path)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{path}:{line}: {key_path}: "), lines[0]
    assert message in lines[0], lines[0]


CHECKS = [
    ("{name: x, type: nope}", "checks[0].type", "dicom-echo, dicom-find, tcp"),
    ("{name: x, type: tcp, port: 104}", "checks[0].host", "required"),
    ("{name: x, type: dicom-echo, fall: 0}", "checks[0].fall", "allowed: 1 to 100"),
    ("{name: x, type: dicom-echo, timeout: -1}", "checks[0].timeout", "out of range"),
    ("{name: x, type: dicom-echo, weight: 5}", "checks[0].weight", "allowed: -253 to 0"),
    ("{name: x, type: tcp, host: h, port: 1, url: 'http://h/'}", "checks[0].url",
     "unknown key for a check of type tcp"),
    ("{name: x, type: http, url: 'ftp://h/'}", "checks[0].url", "http:// or https://"),
    ("{name: x, type: dicom-echo, called_ae: 'WAY-TOO-LONG-AE-TITLE'}", "checks[0].called_ae", "AE title"),
    ("{name: x, type: disk, path: data}", "checks[0].path", "absolute path"),
    ("{name: x, type: script, command: ''}", "checks[0].command", "empty"),
    ("{name: x, type: dicom-find, query_level: WORLD}", "checks[0].query_level", "PATIENT, STUDY"),
    ("{type: tcp, host: h, port: 1}", "checks[0].name", "required"),
]


@pytest.mark.parametrize("check, key_path, message", CHECKS, ids=[c[1] + "-" + c[2][:12] for c in CHECKS])
def test_bad_check_definitions_are_config_errors(tmp_path, key, check, key_path, message):
    path = write(tmp_path, GOOD + f"checks:\n  - {check}\n", key)
    result = check_config(path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f":12: {key_path}: " in lines[0] and message in lines[0], result.stderr


def test_duplicate_check_names(tmp_path, key):
    text = GOOD + "checks:\n  - {name: x, type: process}\n  - {name: x, type: process}\n"
    result = check_config(write(tmp_path, text, key))
    assert result.returncode == 2 and ":13: checks: two checks are named 'x'" in result.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_is_refused_like_ssh(tmp_path, key, mode):
    os.chmod(key, mode)
    result = check_config(write(tmp_path, GOOD, key))
    assert result.returncode == 2
    assert f"readable by group or others (mode {mode:04o}); run: chmod 600" in result.stderr


@pytest.mark.parametrize("content, message", [
    ("", "holds no key"),
    ("short\n", "at least 16 are needed"),
    ("a" * 32 + "\n" + "b" * 32 + "\n" + "c" * 32 + "\n", "at most 2 are allowed"),
])
def test_bad_key_file_content(tmp_path, key, content, message):
    Path(key).write_text(content)
    result = check_config(write(tmp_path, GOOD, key))
    assert result.returncode == 2 and message in result.stderr


def test_unreadable_config_file(tmp_path):
    result = check_config(str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_empty_config_file(tmp_path, key):
    result = check_config(write(tmp_path, "", key))
    assert result.returncode == 2 and "empty" in result.stderr


def test_control_socket_path_is_read_without_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("control: {socket: /run/x/agent.sock}\ncluster: {auth_key_file: /root/secret}\n")
    assert cfg.control_socket_path(str(path)) == "/run/x/agent.sock"
    assert cfg.control_socket_path(str(tmp_path / "none.yaml")) == "/run/hapacs/hapacs.sock"
