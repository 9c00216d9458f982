"""etc/HAPACS-MIB.txt is clean SMIv2, and the agent serves what the MIB modules say.

smilint and smidump (libsmi) read the MIB text; hapacs.snmp.oids and
hapacs.snmp.render must agree with it on every name, OID and base type.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hapacs.snmp import oids
from hapacs.snmp.render import render
from tests.snmp_helpers import BALANCE, IF_INDEX, make_status

ROOT = Path(__file__).resolve().parent.parent
MIB = ROOT / "etc" / "HAPACS-MIB.txt"
# etc/ holds HAPACS-MIB and the IETF modules it imports (etc/MIB-SOURCES.md).
MIB_DIR = ROOT / "etc"
SMIPATH = str(MIB_DIR)


def libsmi(*args: str) -> subprocess.CompletedProcess:
    # A missing tool fails the test with what to install; it never skips, so CI cannot look green.
    assert shutil.which(args[0]), f"{args[0]} is missing: install the Debian package smitools (smilint, smidump)"
    return subprocess.run(args, env={**os.environ, "SMIPATH": SMIPATH}, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("level", [3, 6, 9])
def test_smilint_prints_nothing(level):
    # smilint always exits 0: any output at all is a finding.
    linted = libsmi("smilint", "-s", "-m", "-l", str(level), str(MIB))
    assert linted.stdout + linted.stderr == ""


def test_smilint_does_complain_about_a_broken_copy(tmp_path):
    """The empty output above means something: a typo in a copy is reported."""
    broken = tmp_path / "HAPACS-MIB.txt"
    broken.write_text(MIB.read_text().replace("hapacsNodeName,", "hapacsNodeNam,", 1))
    linted = libsmi("smilint", "-l", "3", str(broken))
    assert "hapacsNodeNam" in linted.stdout + linted.stderr


def test_last_updated_is_not_in_the_future():
    stamp = re.search(r'LAST-UPDATED\s+"(\d{10})00Z"', MIB.read_text()).group(1)
    assert datetime.datetime.strptime(stamp, "%Y%m%d%H") <= datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def test_module_identity_is_the_enterprise_number_in_oids_py():
    # Needs no tool: the README tells an organisation to change these two places together.
    assert re.search(r"::=\s*\{\s*enterprises\s+%d\s*\}" % oids.ENTERPRISE_NUMBER, MIB.read_text())
    assert oids.hapacsMIB == (1, 3, 6, 1, 4, 1, oids.ENTERPRISE_NUMBER)


def mib_nodes(path: str) -> tuple[dict, dict]:
    """The nodes (objects and notifications) and textual conventions of one MIB module."""
    dumped = libsmi("smidump", "-f", "python", path)
    assert dumped.returncode == 0, dumped.stderr
    namespace: dict = {}
    exec(dumped.stdout, namespace)          # smidump's python format is one dict literal
    mib = namespace["MIB"]
    return {**mib.get("nodes", {}), **mib.get("notifications", {})}, mib.get("typedefs", {})


@pytest.fixture(scope="module")
def hapacs_mib():
    return mib_nodes(str(MIB))


@pytest.fixture(scope="module")
def vrrp_mib():
    return mib_nodes(str(MIB_DIR / "VRRPV3-MIB.txt"))


def dotted(oid: tuple[int, ...]) -> str:
    return ".".join(map(str, oid))


def test_every_hapacs_name_in_oids_py_has_the_mibs_oid(hapacs_mib):
    nodes, _ = hapacs_mib
    for name, oid in oids.named("hapacs").items():
        assert name in nodes, f"{name} is not in HAPACS-MIB"
        assert nodes[name]["oid"] == dotted(oid), name


def test_every_vrrp_name_in_oids_py_has_the_mibs_oid(vrrp_mib):
    nodes, _ = vrrp_mib
    for name, oid in oids.named("vrrpv3").items():
        assert nodes[name]["oid"] == dotted(oid), name


# What an SMI base type may be sent as (Unsigned32 and Gauge32 share one BER tag).
SENT_AS = {"Enumeration": {"Integer32"}, "Integer32": {"Integer32"}, "Unsigned32": {"Unsigned32", "Gauge32"},
           "Gauge32": {"Gauge32", "Unsigned32"}, "Counter32": {"Counter32"}, "Counter64": {"Counter64"},
           "TimeTicks": {"TimeTicks"}, "OctetString": {"OctetString"}, "Bits": {"OctetString"},
           "ObjectIdentifier": {"ObjectIdentifier"}}
KNOWN_TEXTUAL_CONVENTIONS = {
    "SnmpAdminString": "OctetString", "InetAddress": "OctetString", "InetAddressType": "Enumeration",
    "InetAddressPrefixLength": "Unsigned32", "TruthValue": "Enumeration", "RowStatus": "Enumeration",
    "TimeStamp": "TimeTicks", "TimeInterval": "Integer32", "MacAddress": "OctetString",
    "Vrrpv3VrIdTC": "Integer32", "Gauge32": "Gauge32", "Counter32": "Counter32", "Counter64": "Counter64",
    "TimeTicks": "TimeTicks", "Unsigned32": "Unsigned32", "Integer32": "Integer32",
}


def base_type(syntax: dict, typedefs: dict) -> str:
    kind = syntax["type"]
    if "basetype" in kind:
        return kind["basetype"]
    name = kind["name"]
    if name in typedefs:
        return typedefs[name]["basetype"]
    return KNOWN_TEXTUAL_CONVENTIONS[name]


def readable_columns_and_scalars(nodes: dict, prefix: str) -> dict[str, dict]:
    return {name: node for name, node in nodes.items()
            if name.startswith(prefix) and node.get("nodetype") in ("scalar", "column")
            and node.get("access") in ("readonly", "readwrite", "readcreate")}


BGP = {"protocols": [{"name": "uplink", "state": "Established", "since_s": 12.3}], "ready": True,
       "stable_for_s": 5.0, "hold": None}


def served():
    status = make_status(balance=BALANCE, bgp=BGP)
    return render(status, lambda name: IF_INDEX, "hapacs", 0).items()


def object_of(oid: tuple[int, ...], objects: dict[str, dict]) -> tuple[str, dict] | None:
    text = dotted(oid)
    for name, node in objects.items():
        if text.startswith(node["oid"] + "."):
            return name, node
    return None


def test_every_readable_hapacs_object_is_served_with_the_mibs_type(hapacs_mib):
    nodes, typedefs = hapacs_mib
    objects = readable_columns_and_scalars(nodes, "hapacs")
    seen = set()
    for oid, value in served():
        if oid[:len(oids.hapacsMIB)] != oids.hapacsMIB:
            continue
        found = object_of(oid, objects)
        assert found, f"{dotted(oid)} is served but is no readable object of HAPACS-MIB"
        name, node = found
        assert value.syntax in SENT_AS[base_type(node["syntax"], typedefs)], (name, value)
        seen.add(name)
    assert seen == set(objects), f"not served: {set(objects) - seen}"


def test_served_vrrp_objects_have_the_mibs_type(vrrp_mib):
    nodes, typedefs = vrrp_mib
    objects = readable_columns_and_scalars(nodes, "vrrpv3")
    seen = set()
    for oid, value in served():
        if oid[:len(oids.vrrpv3MIB)] != oids.vrrpv3MIB:
            continue
        found = object_of(oid, objects)
        assert found, f"{dotted(oid)} is served but is no readable object of VRRPV3-MIB"
        name, node = found
        assert value.syntax in SENT_AS[base_type(node["syntax"], typedefs)], (name, value)
        seen.add(name)
    # What the contract promises NMS templates, at least.
    assert {"vrrpv3OperationsStatus", "vrrpv3OperationsPriority", "vrrpv3OperationsMasterIpAddr",
            "vrrpv3OperationsUpTime"} <= seen
