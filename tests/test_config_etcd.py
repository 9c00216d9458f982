"""`cluster.authority: etcd` and the `etcd:` section: valid files load, every mistake is named
with its file, line and dotted key; reload treats the section as restart-only."""

from __future__ import annotations

import os
import textwrap

import pytest

from hapacs import reload
from lab.etcd import make_certificates

from .fixtures import config_problems, load_config

BASE = """\
node:
  name: pacs-a
cluster:
  interface: eth0
  peers: [192.0.2.12]
  auth_key_file: {key}
  authority: etcd
vips:
  - address: 192.0.2.100/24
etcd:
  endpoints: ["http://198.51.100.1:2379", "http://198.51.100.2:2379"]
  prefix: /hapacs/51/
"""


def load(tmp_path, text: str, key: str):
    return load_config(tmp_path, textwrap.dedent(text).replace("{key}", key))


def problems(tmp_path, text: str, key: str) -> list[str]:
    return config_problems(tmp_path, textwrap.dedent(text).replace("{key}", key))


def test_authority_etcd_loads_with_defaults(tmp_path, key):
    loaded = load(tmp_path, BASE, key)
    assert loaded.cluster.authority == "etcd"
    assert loaded.etcd.endpoints == ("http://198.51.100.1:2379", "http://198.51.100.2:2379")
    assert loaded.etcd.prefix == "/hapacs/51/" and loaded.etcd.ttl_s == 3
    assert loaded.etcd.leader_key == b"/hapacs/51/leader"
    assert loaded.etcd.ca_file is None and loaded.etcd.cert_file is None


def test_heartbeats_is_the_default_and_takes_no_etcd(tmp_path, key):
    text = BASE.replace("  authority: etcd\n", "")
    found = problems(tmp_path, text, key)
    assert len(found) == 1 and ":9: etcd: an etcd: section needs cluster.authority: etcd" in found[0]
    plain = load(tmp_path, text.split("etcd:\n")[0], key)
    assert plain.cluster.authority == "heartbeats" and plain.etcd is None


def test_authority_etcd_without_the_section(tmp_path, key):
    found = problems(tmp_path, BASE.split("etcd:\n")[0], key)
    assert len(found) == 1 and ":7: cluster.authority: is etcd but there is no etcd: section" in found[0]


TTL_LINE = ("prefix: /hapacs/51/\n", "prefix: /hapacs/51/\n  ttl: {}\n")


@pytest.mark.parametrize("change, expected", [
    (("prefix: /hapacs/51/", "prefix: hapacs/51"), ":12: etcd.prefix: 'hapacs/51' must start and end with '/'"),
    ((TTL_LINE[0], TTL_LINE[1].format(1)), ":13: etcd.ttl: 1 is out of range; allowed: 2 to 60"),
    ((TTL_LINE[0], TTL_LINE[1].format(2.5)), ":13: etcd.ttl: must be a whole number from 2 to 60"),
    (("http://198.51.100.2:2379", "ftp://198.51.100.2"),
     ":11: etcd.endpoints[1]: 'ftp://198.51.100.2' is not an etcd endpoint"),
    (("http://198.51.100.2:2379", "http://198.51.100.1:2379"), ":11: etcd.endpoints: lists the same endpoint twice"),
    (("  prefix: /hapacs/51/\n", ""), ":10: etcd.prefix: is required but missing"),
    (("prefix: /hapacs/51/\n", "prefix: /hapacs/51/\n  tll: 3\n"), ":13: etcd.tll: unknown key (did you mean ttl?)"),
    (("  authority: etcd\n", "  authority: etcd\n  quorum: majority\n"),
     ":8: cluster.quorum: majority cannot go with authority: etcd"),
    (("  authority: etcd\n", "  authority: raft\n"),
     ":7: cluster.authority: 'raft' is not allowed; use one of: heartbeats, etcd"),
])
def test_every_mistake_is_named_with_its_line(tmp_path, key, change, expected):
    found = problems(tmp_path, BASE.replace(*change), key)
    assert any(expected in line for line in found), found


def test_witness_is_refused_beside_etcd(tmp_path, key):
    witness = "  witness:\n    - {type: tcp, host: 192.0.2.1, port: 22}\n"
    text = BASE.replace("  authority: etcd\n", "  authority: etcd\n" + witness)
    found = problems(tmp_path, text, key)
    assert any(":8: cluster.witness: cannot go with authority: etcd" in line for line in found), found


def test_tls_files_must_exist_be_readable_usable_and_come_in_pairs(tmp_path, key, monkeypatch):
    made = make_certificates(tmp_path / "tls", ["198.51.100.1"])      # openssl: a CA, a client pair
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    secure = BASE.replace("http://", "https://")
    loaded = load(tmp_path, secure + f"  ca_file: {made['ca']}\n  cert_file: {made['client']}\n"
                  f"  key_file: {made['client_key']}\n", key)
    assert (loaded.etcd.ca_file, loaded.etcd.cert_file) == (made["ca"], made["client"])
    found = problems(tmp_path, secure + f"  ca_file: {tmp_path}/missing.pem\n", key)
    assert any(f":13: etcd.ca_file: {tmp_path}/missing.pem does not exist" in line for line in found), found
    found = problems(tmp_path, secure + f"  ca_file: {garbage}\n", key)
    assert any(":13: etcd.ca_file: the TLS files cannot be used together" in line for line in found), found
    found = problems(tmp_path, secure + f"  cert_file: {made['client']}\n  key_file: {made['ca']}\n", key)
    assert any(":13: etcd.cert_file: the TLS files cannot be used together" in line for line in found), found
    found = problems(tmp_path, secure + f"  cert_file: {made['client']}\n", key)
    assert any(":13: etcd.key_file: cert_file and key_file go together" in line for line in found), found
    found = problems(tmp_path, BASE + f"  ca_file: {made['ca']}\n", key)
    assert any("etcd.endpoints: ca_file/cert_file are set but no endpoint is https://" in line for line in found)
    garbage.chmod(0)
    if os.geteuid() == 0:   # root reads any file: this one is unreadable as it is for any other user
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **options: str(path) != str(garbage)
                            and access(path, mode, **options))
    found = problems(tmp_path, secure + f"  ca_file: {garbage}\n", key)
    assert any("cannot be read by this user" in line for line in found), found


def test_the_etcd_settings_need_a_restart(tmp_path, key):
    old = load(tmp_path, BASE, key)
    new = load(tmp_path, BASE.replace("prefix: /hapacs/51/", "prefix: /hapacs/52/"), key)
    assert reload.restart_needed(old, new) == ["etcd"]
    plain = load(tmp_path, BASE.replace("  authority: etcd\n", "").split("etcd:\n")[0], key)
    assert reload.restart_needed(old, plain) == ["cluster.authority", "etcd"]


def test_the_samples_etcd_section_is_valid_once_uncommented(tmp_path, key):
    """etc/hapacs.yaml documents every etcd key; uncommented (without the TLS files, which
    must exist) and with authority etcd, it loads."""
    from pathlib import Path
    sample = (Path(__file__).resolve().parent.parent / "etc" / "hapacs.yaml").read_text()
    for name in ("authority", "endpoints", "prefix", "ttl", "ca_file", "cert_file", "key_file"):
        assert f"{name}:" in sample, f"the sample does not document {name}"
    lines, inside = [], False
    for line in sample.replace("/etc/hapacs/cluster.key", key).splitlines():
        if line.startswith("# etcd:"):
            inside = True
        elif inside and not line.startswith("#   "):
            inside = False
        if inside and line.startswith("#   ") and line[4:].split(":")[0] in ("ca_file", "cert_file", "key_file"):
            continue
        lines.append(line[2:] if inside and line.startswith("# ") else line)
    text = "\n".join(lines).replace("  authority: heartbeats", "  authority: etcd")
    loaded = load_config(tmp_path, text, "sample.yaml")
    assert loaded.cluster.authority == "etcd" and loaded.etcd.ttl_s == 3 and len(loaded.etcd.endpoints) == 3
