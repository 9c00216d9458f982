"""A real PACS cluster behind the real HAProxy started by hapacs (mode proxy): two Orthanc members on
one PostgreSQL, the workstation acting through the VIP only.

Orthanc checks the calling host (`DicomCheckModalityHost`): with `client_address: snat` it sees the
balancing node and refuses the workstation's C-STORE; after a reload to `transparent` it sees the
workstation and accepts it. A study stored through the VIP is then found (C-FIND) and retrieved (C-MOVE)
through the VIP, whichever member serves, both members serve, and with `outgoing_from_vip` the C-MOVE's
sub-associations reach the workstation from the VIP, from either member; the return route follows the VIP
to the other node. Back with snat, only the VIP holder's own sub-associations can leave from the VIP. On
the reload back to snat and on exit, hapacs's own rules and routes are gone."""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

from lab.cluster import AgentCluster
from lab.dicom import STORESCP, wait_until_serving
from lab.pacs import PACS_AET, WORKSTATION_AET, WORKSTATION_STORE_PORT, require_pacs_tools, scu, start_orthanc_cluster
from lab.postgres import start_postgres

from .e2e import VIP, settle
from .fixtures import lab_fixture


def _need_tools():
    assert shutil.which("haproxy"), "these tests need HAProxy (Debian: apt install haproxy)"
    assert shutil.which("nft"), "these tests need nft (Debian: apt install nftables)"
    require_pacs_tools()


lab = lab_fixture("tp", before=_need_tools, hosts=("a", "b", "db"))

PACS_PORT = 11112           # each Orthanc; HAProxy takes VIP:104
CHECK = [{"name": "pacs-dicom", "type": "dicom-echo", "port": PACS_PORT, "called_ae": PACS_AET,
          "interval": 0.5, "timeout": 2.0, "fall": 2, "rise": 1}]
SERVICES = [{"name": "dicom", "address": VIP, "port": 104, "target_port": PACS_PORT, "health": "pacs-dicom"}]
SNAT = {"client_address": "snat", "services": SERVICES, "check_interval": 0.3}
SNAT_OUTGOING = {**SNAT, "workstations": ["192.0.2.200/32"], "outgoing_from_vip": True}
TRANSPARENT = {**SNAT, "client_address": "transparent", "workstations": ["192.0.2.200/32"],
               "outgoing_from_vip": True}
# The workstation is allowed only from its own address, for every operation.
ORTHANC_OPTIONS = {"DicomCheckModalityHost": True, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False}


def members(cluster, host: str) -> dict[str, dict]:
    status = cluster.status(host) or {}
    services = (status.get("balance") or {}).get("services", [])
    return {m["name"]: m for m in services[0]["members"]} if services else {}


def routing(lab, host: str) -> str:
    """hapacs's part of the host's routing: its nft table, its rules, its two tables."""
    rules = [line for line in lab.exec(host, ["ip", "rule"]).stdout.splitlines() if re.match(r"10[45]:", line)]
    tables = [lab.exec(host, ["ip", "route", "show", "table", t], check=False).stdout.strip() for t in ("104", "105")]
    nft = lab.exec(host, ["nft", "list", "tables"]).stdout
    return "\n".join([*rules, *filter(None, tables), *(["nft hapacs_proxy"] if "hapacs_proxy" in nft else [])])


def reload(cluster, balance: dict) -> None:
    for host in ("a", "b"):
        cluster.specs[host].extra["balance"] = balance
        cluster.write(host)
        done = cluster.cli(host, "reload")
        assert done.returncode == 0, done.stdout + done.stderr


def calling_hosts(log: Path) -> list[str]:
    """The addresses storescp received associations from (`-d`: "Association Received: ADDRESS")."""
    return re.findall(r"Association Received: ([0-9.]+)", log.read_text(errors="replace"))


def rejections(pacs) -> list[str]:
    """The calling addresses Orthanc refused the workstation's AE title from (its host check)."""
    return [address for host in pacs.members for address in re.findall(
        r"DICOM authorization rejected for AET WS on IP ([0-9.]+)", pacs.log(host).read_text(errors="replace"))]


def test_a_pacs_cluster_behind_the_vip_sees_the_workstation_with_transparent(lab):
    for host in ("a", "b"):     # the VIP holder passes the other member's sub-associations on
        lab.exec(host, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                        f"net.ipv4.conf.{lab.hosts[host].ifname}.send_redirects=0"])
    pacs = start_orthanc_cluster(lab, ["a", "b"], start_postgres(lab, "db"), dicom_port=PACS_PORT,
                                 options=ORTHANC_OPTIONS)
    inbox = Path(lab.mkdtemp("ws-inbox"))
    with open(inbox / "storescp.log", "ab") as out:
        store_scp = lab.spawn("ws", [STORESCP, "-d", "--aetitle", WORKSTATION_AET, "--output-directory",
                                     str(inbox), "--disable-host-lookup", "--fork", str(WORKSTATION_STORE_PORT)],
                              stdout=out, stderr=out)
    wait_until_serving(lab, store_scp, lab.ns("ws"), [WORKSTATION_STORE_PORT], lambda: True, "storescp",
                        inbox / "storescp.log", 5.0)

    cluster = AgentCluster(lab, checks={"a": CHECK, "b": CHECK})
    cluster.add("a", 150, balance=SNAT)
    cluster.add("b", 100, balance=SNAT)
    cluster.start_all()

    def through_vip(operation, *options):
        return scu(lab, "ws", VIP, 104, PACS_AET, operation, *options)

    try:
        settle(lab, cluster, "a", timeout=20)
        lab.wait_for(lambda: {m["state"] for m in members(cluster, "a").values()} == {"up"}, 15,
                     what="HAProxy on pacs-a sees both Orthanc members up")
        assert routing(lab, "a") == "" and routing(lab, "b") == "", "snat needs nothing from the host"

        # snat: Orthanc sees 192.0.2.11 or .12 calling as WS and refuses.
        refused = through_vip("store")
        assert not refused["ok"], f"Orthanc accepted WS from a balancing node's address: {refused}"
        lab.wait_for(lambda: rejections(pacs) == ["192.0.2.11"], 3, what="Orthanc refusing WS from pacs-a's address")
        assert through_vip("echo")["ok"], "the VIP serves (only the host check refuses)"

        reload(cluster, TRANSPARENT)
        lab.wait_for(lambda: "104:\tfrom all fwmark 0x68 lookup 104" in routing(lab, "a")
                     and "192.0.2.200 via 192.0.2.100" in routing(lab, "b"), 5,
                     what="the transparent routing on both nodes (b routes the workstation via the VIP)")
        assert "via" not in routing(lab, "a"), "the VIP holder keeps its own route to the workstation"
        before = {name: m["total"] for name, m in members(cluster, "a").items()}
        stored = [through_vip("store", "--count", "2") for _ in range(4)]
        assert all(s["ok"] for s in stored), stored
        study, instances = stored[0]["study"], set(stored[0]["instances"])
        found = through_vip("find", "--study", study)
        assert found == {"ok": True, "err": "", "studies": [study]}, found
        for serving, drained in (("a", "b"), ("b", "a")):     # each member serves one C-MOVE
            assert cluster.cli(drained, "drain", "on").returncode == 0
            lab.wait_for(lambda: members(cluster, "a")[f"pacs-{drained}"]["state"] == "drain", 5,
                         what=f"pacs-{drained} drained")
            moves = members(cluster, "a")[f"pacs-{serving}"]["total"]
            moved = through_vip("move", "--study", study, "--destination", WORKSTATION_AET)
            assert moved == {"ok": True, "err": "", "completed": 2, "failed": 0, "warning": 0}, moved
            lab.wait_for(lambda: members(cluster, "a")[f"pacs-{serving}"]["total"] == moves + 1, 3,
                         what=f"pacs-{serving} counted as the member that served it")
            assert cluster.cli(drained, "drain", "off").returncode == 0
            lab.wait_for(lambda: members(cluster, "a")[f"pacs-{drained}"]["state"] == "up", 5,
                         what=f"pacs-{drained} back")
        lab.wait_for(lambda: {p.name.split(".", 1)[1] for p in inbox.glob("CT.*")} == instances, 5,
                     what="the moved study at the workstation")
        after = {name: m["total"] for name, m in members(cluster, "a").items()}
        served = {name: after[name] - before[name] for name in after}
        print(f"associations per member after the reload to transparent: {served}")
        assert all(count >= 2 for count in served.values()), f"both members serve: {served}"   # a move each
        assert rejections(pacs) == ["192.0.2.11"], "no refusal with transparent"
        hosts = calling_hosts(inbox / "storescp.log")
        assert len(hosts) >= 2 and set(hosts) == {VIP}, f"sub-associations from the VIP only: {hosts}"

        # The VIP moves to pacs-b: the return route follows it (pacs-a now routes the workstation via the
        # VIP, pacs-b no longer), and pacs-a's PACS serves through pacs-b's HAProxy, still seeing WS.
        assert cluster.cli("b", "takeover").returncode == 0
        settle(lab, cluster, "b", timeout=10)
        lab.wait_for(lambda: "192.0.2.200 via 192.0.2.100" in routing(lab, "a")
                     and "via" not in routing(lab, "b"), 5, what="the return route moved with the VIP")
        assert cluster.cli("b", "drain", "on").returncode == 0
        lab.wait_for(lambda: members(cluster, "b")["pacs-b"]["state"] == "drain"
                     and members(cluster, "b")["pacs-a"]["state"] == "up", 5, what="pacs-b drained, pacs-a up")
        stored_via_b = through_vip("store")
        assert stored_via_b["ok"], stored_via_b
        lab.wait_for(lambda: members(cluster, "b")["pacs-a"]["total"] == 1, 3,
                     what="pacs-a served it through pacs-b's HAProxy")
        assert cluster.cli("b", "drain", "off").returncode == 0

        # Back to snat (with outgoing_from_vip): the transparent routing is removed on both nodes, and
        # Orthanc refuses the workstation's C-STORE again. A C-MOVE served by the VIP holder (pacs-b) still
        # reaches the workstation from the VIP; one served by pacs-a leaves from pacs-a's own address (its
        # route to the workstation does not pass the holder).
        reload(cluster, SNAT_OUTGOING)
        lab.wait_for(lambda: routing(lab, "a") == "nft hapacs_proxy" and routing(lab, "b") == "nft hapacs_proxy", 5,
                     what="hapacs's rules and routes removed by the reload to snat, the SNAT table kept")
        assert not through_vip("store")["ok"]
        lab.wait_for(lambda: "192.0.2.12" in rejections(pacs), 3, what="Orthanc refusing pacs-b's address")
        seen = len(calling_hosts(inbox / "storescp.log"))
        for serving, drained in (("b", "a"), ("a", "b")):
            assert cluster.cli(drained, "drain", "on").returncode == 0
            lab.wait_for(lambda: members(cluster, "b")[f"pacs-{drained}"]["state"] == "drain", 5,
                         what=f"pacs-{drained} drained")
            moved = through_vip("move", "--study", study, "--destination", WORKSTATION_AET)
            assert moved["ok"] and moved["completed"] == 2, moved
            assert cluster.cli(drained, "drain", "off").returncode == 0
            lab.wait_for(lambda: members(cluster, "b")[f"pacs-{drained}"]["state"] == "up", 5,
                         what=f"pacs-{drained} back")
        assert set(calling_hosts(inbox / "storescp.log")[seen:]) == {VIP, "192.0.2.11"}, \
            "snat: the holder's sub-associations from the VIP, the other member's from its own address"

        # And on exit: transparent again on b, then b stops.
        cluster.specs["b"].extra["balance"] = TRANSPARENT
        cluster.write("b")
        assert cluster.cli("b", "reload").returncode == 0
        lab.wait_for(lambda: "fwmark 0x68 lookup 104" in routing(lab, "b"), 5, what="b's transparent routing again")
        cluster.kill("b", signal.SIGTERM)
        assert routing(lab, "b") == "", "hapacs removes its routing when it stops"
    finally:
        print(cluster.logs())
