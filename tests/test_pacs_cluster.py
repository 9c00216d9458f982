"""The lab's PACS cluster: two real Orthanc members on one PostgreSQL index.

Load-balancing tests rely on it: a study stored through one member must be
found and retrieved through the other, and a crashed member must leave the
other serving. The workstation acts with pynetdicom (lab.pacsclient) from its
own namespace; the C-MOVE destination is a dcmtk storescp on the workstation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.dicom import start_storescp
from lab.pacs import (
    PACS_AET,
    WORKSTATION_AET,
    WORKSTATION_STORE_PORT,
    crash_member,
    require_pacs_tools,
    scu,
    start_orthanc_cluster,
    stop_orthanc_cluster,
)
from lab.postgres import start_postgres, stop_postgres

from .fixtures import lab_fixture

lab = lab_fixture("pg", before=require_pacs_tools, hosts=("a", "b", "db"))
DICOM_PORT = 104


@pytest.fixture
def pacs(lab):
    database = start_postgres(lab, "db")
    cluster = start_orthanc_cluster(lab, ["a", "b"], database, dicom_port=DICOM_PORT)
    try:
        yield cluster
    finally:
        stop_orthanc_cluster(lab, cluster)


def received(directory: Path) -> set[str]:
    """SOP instance UIDs that the workstation's storescp wrote (files named CT.<uid>)."""
    return {path.name.split(".", 1)[1] for path in directory.glob("CT.*")}


def test_members_share_studies_and_survive_a_crashed_member(lab, pacs):
    inbox = Path(lab.mkdtemp("ws-inbox"))
    start_storescp(lab, "ws", port=WORKSTATION_STORE_PORT, aet=WORKSTATION_AET, tmpdir=inbox)
    member = {host: lab.hosts[host].ipv4 for host in ("a", "b")}

    def on(host, operation, *options):
        return scu(lab, "ws", member[host], DICOM_PORT, PACS_AET, operation, *options)

    stored = on("a", "store", "--count", "2")
    assert stored["ok"], stored
    study, instances = stored["study"], set(stored["instances"])

    found = on("b", "find", "--study", study)
    assert found == {"ok": True, "err": "", "studies": [study]}, "b finds the study stored through a"
    assert on("b", "find", "--study", "1.2.3.4.5.6.7.8.9")["studies"] == [], "C-FIND really filters"

    moved = on("b", "move", "--study", study, "--destination", WORKSTATION_AET)
    assert moved == {"ok": True, "err": "", "completed": 2, "failed": 0, "warning": 0}, moved
    lab.wait_for(lambda: received(inbox) == instances, 5, what="the moved study at the workstation")

    crash_member(lab, pacs, "a")
    assert not on("a", "echo")["ok"], "a crashed member must not answer"
    for path in inbox.glob("CT.*"):
        path.unlink()
    moved = on("b", "move", "--study", study, "--destination", WORKSTATION_AET)
    assert moved["ok"] and moved["completed"] == 2, f"b still serves a's study: {moved}"
    lab.wait_for(lambda: received(inbox) == instances, 5, what="the study moved again by b alone")
    stored_on_b = on("b", "store")
    assert stored_on_b["ok"], stored_on_b
    assert on("b", "find", "--study", stored_on_b["study"])["studies"] == [stored_on_b["study"]]


def test_postgres_start_failure_names_the_cause(lab):
    first = start_postgres(lab, "db")
    try:
        with pytest.raises(RuntimeError) as failure:
            start_postgres(lab, "db", database="second")  # same address and port
        assert "exited" in str(failure.value) and "Address already in use" in str(failure.value)
    finally:
        stop_postgres(lab, first)
