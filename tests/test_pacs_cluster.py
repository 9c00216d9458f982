"""The lab's PACS cluster: two real Orthanc members on one PostgreSQL index.

Load-balancing tests rely on it: a study stored through one member must be
found and retrieved through the other, and a crashed member must leave the
other serving. The workstation acts with pynetdicom (lab.pacsclient) from its
own namespace; the C-MOVE destination is a dcmtk storescp on the workstation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import Lab, unique_prefix
from lab.dicom import start_storescp
from lab.pacs import (
    PACS_AET,
    WORKSTATION_AET,
    WORKSTATION_STORE_PORT,
    crash_member,
    require_pacs_tools,
    scu,
    start_orthanc_cluster,
)
from lab.postgres import start_postgres

from .fixtures import lab_fixture

lab = lab_fixture("pg", before=require_pacs_tools, hosts=("a", "b", "db"))
DICOM_PORT = 104


@pytest.fixture
def pacs(lab):
    """Two members on one database; the lab's teardown kills them, then stops the database."""
    return start_orthanc_cluster(lab, ["a", "b"], start_postgres(lab, "db"), dicom_port=DICOM_PORT)


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
    start_postgres(lab, "db")
    with pytest.raises(RuntimeError) as failure:
        start_postgres(lab, "db", database="second")  # same address and port
    assert "exited" in str(failure.value) and "Address already in use" in str(failure.value)


def _process_tree(pid) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {pid}.union(*(_process_tree(int(child)) for child in children))


@pytest.mark.netns  # its own Lab, to look after the teardown
def test_teardown_stops_the_database_and_its_backends_with_clients_connected():
    # The lab's generic SIGTERM would make PostgreSQL wait for its clients, be
    # SIGKILLed, and leave its backends as zombies (pid 1 here reaps them only seconds later).
    with Lab(unique_prefix("pg"), hosts=("a", "db")) as built:
        database = start_postgres(built, "db")
        cluster = start_orthanc_cluster(built, ["a"], database)
        postgres = _process_tree(database.process.pid)
        assert len(postgres) > 3, f"postmaster with workers and Orthanc's backend: {postgres}"
        members = {process.pid for process in cluster.members.values()}
    left = {pid for pid in postgres | members if Path(f"/proc/{pid}").exists()}
    assert not left, f"processes (or zombies) left after teardown: {left}"
    assert database.process.returncode == 0, "fast shutdown, not SIGKILL"
