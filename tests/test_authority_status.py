"""The status's "authority" object and everything that renders it: the JSON, the table,
SNMP (hapacsAuthority), Prometheus and check_hapacs. Pure: no agent, no etcd."""

from __future__ import annotations

import subprocess

from hapacs import metrics
from hapacs.leasegate import LeasePhase, LeaseView
from hapacs.nagios import CRITICAL, OK, WARNING, judge
from hapacs.snmp import oids
from hapacs.snmp import render as r
from hapacs.status import CheckStatus, PeerStatus, authority_status, render_table

from .snmp_helpers import IF_INDEX, make_status
from .test_metrics import promtool, samples, value

HELD = LeaseView(LeasePhase.HELD, "pacs-a", 3, 2.4, None)
ETCD = authority_status(HELD, (3, 3))


def test_heartbeats_is_the_default_authority():
    assert authority_status(None, None) == {"kind": "heartbeats"}
    assert make_status().to_json()["authority"] == {"kind": "heartbeats"}
    assert "authority" not in render_table(make_status())


def test_etcd_authority_in_json_and_table():
    assert ETCD == {"kind": "etcd", "holder": "pacs-a", "lease_ttl_s": 3, "lease_left_s": 2.4,
                    "endpoints_up": 3, "endpoints": 3, "phase": "held", "last_error": None}
    waiting = authority_status(LeaseView(LeasePhase.UNREACHABLE, None, 3, None, "get: no etcd endpoint answered"),
                               (0, 3))
    assert waiting["lease_left_s"] is None and waiting["holder"] is None and waiting["phase"] == "unreachable"
    table = render_table(make_status(authority=ETCD))
    assert "authority etcd: lease held by pacs-a, 2.4 s left of 3 s, 3 of 3 endpoints answer" in table
    table = render_table(make_status(authority=waiting))
    assert "authority etcd: lease held by (nobody), 0 of 3 endpoints answer" in table
    assert "last etcd error: get: no etcd endpoint answered" in table


def snmp(status):
    snap = r.render(status, lambda name: IF_INDEX if name == "eth0" else None, "hapacs test", 4200)
    return lambda oid: None if snap.get(oid + (0,)) is None else snap.get(oid + (0,)).value


def test_snmp_serves_the_authority():
    value_of = snmp(make_status(authority=ETCD))
    assert value_of(oids.hapacsAuthorityKind) == 2                     # etcd(2)
    assert value_of(oids.hapacsAuthorityHolder) == b"pacs-a"
    assert value_of(oids.hapacsAuthorityLeaseLeft) == 2400             # milliseconds
    assert value_of(oids.hapacsAuthorityEndpointsUp) == 3
    assert value_of(oids.hapacsAuthorityEndpoints) == 3
    value_of = snmp(make_status())
    assert value_of(oids.hapacsAuthorityKind) == 1                     # heartbeats(1)
    assert value_of(oids.hapacsAuthorityHolder) == b"" and value_of(oids.hapacsAuthorityLeaseLeft) == 0


def test_prometheus_serves_the_authority_and_promtool_accepts_it():
    page = metrics.render(make_status(authority={**ETCD, "endpoints_up": 2}))
    found = samples(page)
    assert value(found, "hapacs_authority_holder", kind="etcd", holder="pacs-a") == 1.0
    assert value(found, "hapacs_etcd_lease_left_seconds") == 2.4
    assert value(found, "hapacs_etcd_endpoints_up") == 2 and value(found, "hapacs_etcd_endpoints") == 3
    result = subprocess.run([promtool(), "check", "metrics"], input=page, capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stdout
    plain = samples(metrics.render(make_status()))
    assert not [name for name, _ in plain if name.startswith(("hapacs_etcd_", "hapacs_authority_"))]


def nagios(authority, **changes):
    base = dict(checks=(CheckStatus("pacs-dicom", "dicom-echo", True, 3.1, "ok", 100.0, 0),),
                peers=(PeerStatus("pacs-b", "192.0.2.12", "BACKUP", 100, 0.08),), authority=authority)
    return judge(make_status(**{**base, **changes}).to_json())


def test_check_hapacs_on_the_authority():
    assert nagios(ETCD).code == OK
    verdict = nagios({**ETCD, "endpoints_up": 2})
    assert verdict.code == WARNING and "etcd: 2 of 3 endpoints answer" in verdict.text
    verdict = nagios({**ETCD, "endpoints_up": 0})
    assert verdict.code == CRITICAL and "etcd: none of 3 endpoints answers" in verdict.text
    # In FAULT the fault says it already (cannot use etcd: ...): named once.
    verdict = nagios({**ETCD, "endpoints_up": 0}, state="FAULT", faults=("cannot use etcd: get: timeout",))
    assert verdict.code == CRITICAL and "none of 3" not in verdict.text and "cannot use etcd" in verdict.text
    broken = make_status(authority={"kind": "etcd", "endpoints_up": "three"}).to_json()
    assert judge(broken).code == 3 and "authority.'endpoints_up'" in judge(broken).text
