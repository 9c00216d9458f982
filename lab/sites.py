"""Two PACS sites on different networks, joined by BGP routers: the lab of routed VIPs.

What it is for: a routed VIP (a /32 on lo of the MASTER) reaches the
workstations only through BGP: the PACS host's BIRD announces it to its site
router, which passes it to the core router. `SitesLab` builds that in network
namespaces; `start_routers()` runs the five BIRDs (three routers, two PACS
hosts) and waits until every BGP session is Established. Heartbeats between
the PACS hosts are unicast across the routers. Three namespaces for etcd
members (one per site network, one on the core side) are built too, for the
etcd leadership (lab/etcd.py runs members in them: `start_etcd()`).

    site A LAN 198.51.100.0/26                site B LAN 198.51.100.64/26
    [a]  .11 PACS host, BIRD AS 64601          [b]  .75 PACS host, BIRD AS 64602
    [ea] .21 etcd                              [eb] .85 etcd
       |  bridge in ra                            |  bridge in rb
    [ra] .1  site router, BIRD AS 64513        [rb] .65 site router, BIRD AS 64514
       | 192.0.2.0/30 (.2 ra, .1 co)              | 192.0.2.4/30 (.6 rb, .5 co)
       +--------------- [co] core router, BIRD AS 64512 ---------------+
                           | .129, bridge in co: workstation LAN 198.51.100.128/26
                        [ws] .150 workstation       [ec] .140 etcd

Interface names: a member's is `{prefix}{name}0`, its router-side port
`{prefix}{name}p`; a site router's uplink is `{prefix}{router}u`, its
core-side end `{prefix}c{router}`. The VIPs are 203.0.113.100-109/32; BGP
carries nothing else (the LANs are static routes), BFD (100 ms x 3) runs on
every session, and every BIRD retries a failed session after 1 s. The core
keeps a discard (blackhole) route for the VIP range under the BGP host routes
(`discard_vips=False` leaves it out): a SYN sent while no site announces the
VIP is dropped and sent again, not refused by ICMP.

What the etcd leadership's tests and benchmarks find here: `start_etcd()` (members in ea, eb,
ec, ~1.5 s; `timers=` etcd's heartbeat and election timeout); `cut_from_etcd(host)` a host cut
off from every etcd member, not from the workstations; `etcd_agent_extra()` an agent's settings
under `cluster.authority: etcd`; `site_down(site)` cuts a whole site from the core, its etcd member included (left
in the minority); `link_down(host)` a host; `block_bgp(host)` / `flap_bgp(host, ...)` its BGP
session; `watch_core_table().overlaps()` every interval in which the core's BGP table held the
VIP via both sites (its BIRD's route log, milliseconds); `SiteRouteMonitor` the same in the
site routers' kernel tables; `CoreSampler` what a poller of the core sees.

What it must never do: what lab.netns.Lab must never do (nothing in the root
namespace, documentation addresses only, private AS numbers only, no default
route, processes killed by pid), nor touch the system's BIRD.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lab.bird import Bird, require_bird, start_bird
from lab.netns import (
    _COMMON_SYSCTLS, _HOST_SYSCTLS, Lab, _check_prefix, _require_free_prefix, _require_root_and_tools, _run,
    in_namespace, wait_for,
)
from lab.outage import load
from lab.probe import start_probe

VIP_RANGE = "203.0.113.0/24"
VIP = "203.0.113.100"
CORE_AS = 64512
LAN_PREFIXLEN = 26
BFD = "interval 100 ms; multiplier 3;"
# Agents in this lab: Master_Down_Interval (advert_interval 0.1 x dead_after 5 = 0.5 s) above BFD's
# detection time (0.3 s), so a lost host's route is withdrawn before another site announces the VIP.
AGENT_DEAD_AFTER = 5
# Short retries everywhere: BIRD's defaults wait 60-300 s after a failed session, during which a
# recovered site announces into nothing. Hold time 3 s is the BGP floor; BFD detects loss first.
SESSION_TIMERS = "hold time 3; keepalive time 1; connect delay time 1; connect retry time 1; error wait time 1, 2;"
_ROUTER_SYSCTLS = ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")


@dataclass(frozen=True)
class Site:
    name: str            # "a", "b"
    pacs: str            # the PACS host
    etcd: str            # the etcd member's host on this site's LAN
    router: str          # "ra", "rb"
    router_ip: str       # on the LAN
    lan: str             # e.g. 198.51.100.0/26
    uplink_ip: str       # the site router's end of its link to the core
    core_ip: str         # the core's end
    router_as: int
    pacs_as: int
    pacs_ip: str
    etcd_ip: str


SITES = {
    "a": Site("a", "a", "ea", "ra", "198.51.100.1", "198.51.100.0/26", "192.0.2.2", "192.0.2.1", 64513, 64601,
              "198.51.100.11", "198.51.100.21"),
    "b": Site("b", "b", "eb", "rb", "198.51.100.65", "198.51.100.64/26", "192.0.2.6", "192.0.2.5", 64514, 64602,
              "198.51.100.75", "198.51.100.85"),
}
CORE_LAN_IP, CORE_LAN = "198.51.100.129", "198.51.100.128/26"
WORKSTATION_IP, CORE_ETCD_IP = "198.51.100.150", "198.51.100.140"
ROUTERS = ("ra", "rb", "co")
ETCD_HOSTS = ("ea", "eb", "ec")


def vip_filter(name: str = "vip_range") -> str:
    return f"define {name.upper()} = [ {VIP_RANGE}{{32,32}} ];\n"


SAMPLE = Path(__file__).resolve().parent.parent / "etc" / "bird-hapacs.conf"


def pacs_bird_config(site: Site) -> str:
    """The PACS host's BIRD: the sample etc/bird-hapacs.conf (written for site a's host), with this
    site's addresses and AS numbers, logging to stderr (the lab's log file) instead of syslog. So the
    lab runs the documented file: the VIPs on lo by protocol direct, one BGP session `uplink` with
    BFD to the site router."""
    a = SITES["a"]
    text = SAMPLE.read_text().replace("log syslog all;", "log stderr all;")
    for old, new in ((f"local {a.pacs_ip} as {a.pacs_as};", f"local {site.pacs_ip} as {site.pacs_as};"),
                     (f"neighbor {a.router_ip} as {a.router_as};", f"neighbor {site.router_ip} as {site.router_as};"),
                     (f"router id {a.pacs_ip};", f"router id {site.pacs_ip};")):
        if old not in text:
            raise RuntimeError(f"{SAMPLE} no longer has {old!r}: lab/sites.py adapts it per site")
        text = text.replace(old, new)
    return text


def site_router_config(site: Site) -> str:
    return f"""log stderr all;
router id {site.router_ip};
{vip_filter()}
protocol device {{ scan time 10; }}
protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}
protocol bfd {{ interface "*" {{ {BFD} }}; }}
protocol bgp pacs {{
  local {site.router_ip} as {site.router_as};
  neighbor {site.pacs_ip} as {site.pacs_as};
  bfd on; check link on;
  {SESSION_TIMERS}
  graceful restart off;
  ipv4 {{ import where net ~ VIP_RANGE; export none; }};
}}
protocol bgp core {{
  local {site.uplink_ip} as {site.router_as};
  neighbor {site.core_ip} as {CORE_AS};
  bfd on; check link on;
  {SESSION_TIMERS}
  graceful restart off;
  ipv4 {{ import none; export where net ~ VIP_RANGE; }};
}}
"""


def core_router_config() -> str:
    sessions = "".join(f"""protocol bgp site_{site.name} {{
  local {site.core_ip} as {CORE_AS};
  neighbor {site.uplink_ip} as {site.router_as};
  bfd on; check link on;
  {SESSION_TIMERS}
  graceful restart off;
  ipv4 {{ import where net ~ VIP_RANGE; export none; }};
  debug {{ routes }};
}}
""" for site in SITES.values())
    # Every change of the core's BGP table is logged with milliseconds (SitesLab.core_table_events).
    return f"""log stderr all;
timeformat log iso long ms;
router id {CORE_LAN_IP};
{vip_filter()}
protocol device {{ scan time 10; }}
protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}
protocol bfd {{ interface "*" {{ {BFD} }}; }}
{sessions}"""


class SitesLab(Lab):
    """The sites topology (module docstring). Hosts (for lab.cluster.AgentCluster and lab.etcd):
    a, b (PACS), ea, eb, ec (etcd); the workstation ws; the routers ra, rb, co."""

    def __init__(self, prefix: str, discard_vips: bool = True):
        self.discard_vips = discard_vips
        _check_prefix(prefix)
        _require_root_and_tools()
        require_bird()
        _require_free_prefix(prefix)
        self.prefix = prefix
        self.switch_ns = prefix + "co"          # Lab.partition/heal are not used here
        self.bridge = prefix + "cl"
        members = {"a": SITES["a"].pacs_ip, "b": SITES["b"].pacs_ip, "ea": SITES["a"].etcd_ip,
                   "eb": SITES["b"].etcd_ip, "ec": CORE_ETCD_IP}
        self.hosts = {name: self._node(name, ip, "") for name, ip in members.items()}
        self.workstation = self._node("ws", WORKSTATION_IP, "")
        self.router_of = {"a": "ra", "ea": "ra", "b": "rb", "eb": "rb", "ec": "co", "ws": "co"}
        self.birds: dict[str, Bird] = {}
        self._build_or_close()

    # ---- naming ----------------------------------------------------------

    def ns(self, name: str) -> str:
        if name in ROUTERS:
            return self.prefix + name
        if name.startswith(self.prefix) and name[len(self.prefix):] in ROUTERS:
            return name
        return self.node(name).ns

    def site_of(self, host: str) -> Site:
        return next(site for site in SITES.values() if host in (site.pacs, site.etcd, site.name))

    # ---- building -------------------------------------------------------

    def _build(self):
        for router in ROUTERS:
            self._add_namespace(self.prefix + router, _COMMON_SYSCTLS + _ROUTER_SYSCTLS)
        lans = {"ra": (SITES["a"].router_ip, SITES["a"].lan), "rb": (SITES["b"].router_ip, SITES["b"].lan),
                "co": (CORE_LAN_IP, CORE_LAN)}
        for router, (address, _lan) in lans.items():
            ns, bridge = self.ns(router), f"{self.prefix}{router}l"
            self.exec(ns, ["ip", "link", "add", bridge, "type", "bridge"])
            self.exec(ns, ["ip", "addr", "add", f"{address}/{LAN_PREFIXLEN}", "dev", bridge])
            self.exec(ns, ["ip", "link", "set", bridge, "up"])
        for node in self.nodes:
            router = self.router_of[node.name]
            self._add_namespace(node.ns, _COMMON_SYSCTLS + _HOST_SYSCTLS + _ROUTER_SYSCTLS[1:])
            _run(["ip", "link", "add", node.ifname, "netns", node.ns, "type", "veth",
                  "peer", "name", node.switch_port, "netns", self.ns(router)])
            self.exec(router, ["ip", "link", "set", node.switch_port, "master", f"{self.prefix}{router}l", "up"])
            self.exec(node.ns, ["ip", "link", "set", node.ifname, "up"])
            self.exec(node.ns, ["ip", "addr", "add", f"{node.ipv4}/{LAN_PREFIXLEN}", "dev", node.ifname])
            gateway = lans[router][0]
            for net in ("198.51.100.0/24", VIP_RANGE):   # no default route: only the lab's ranges
                self.exec(node.ns, ["ip", "route", "add", net, "via", gateway])
        for site in SITES.values():
            uplink, core_end = f"{self.prefix}{site.router}u", f"{self.prefix}c{site.router}"
            _run(["ip", "link", "add", uplink, "netns", self.ns(site.router), "type", "veth",
                  "peer", "name", core_end, "netns", self.ns("co")])
            self.exec(site.router, ["ip", "addr", "add", f"{site.uplink_ip}/30", "dev", uplink])
            self.exec(site.router, ["ip", "link", "set", uplink, "up"])
            self.exec("co", ["ip", "addr", "add", f"{site.core_ip}/30", "dev", core_end])
            self.exec("co", ["ip", "link", "set", core_end, "up"])
            self.exec(site.router, ["ip", "route", "add", "198.51.100.0/24", "via", site.core_ip])
            self.exec(site.router, ["ip", "route", "add", VIP_RANGE, "via", site.core_ip])
            self.exec("co", ["ip", "route", "add", site.lan, "via", site.uplink_ip])
        if self.discard_vips:
            # While no site announces a VIP (a break-before-make handover under the etcd lease), a
            # workstation's SYN is dropped silently and sent again a second later, instead of being
            # refused at once by ICMP net unreachable (which fails the connection attempt).
            self.exec("co", ["ip", "route", "add", "blackhole", VIP_RANGE])

    # ---- BGP --------------------------------------------------------------

    def start_routers(self, pacs: bool = True, timeout_s: float = 15.0) -> None:
        """Start the routers' BIRDs (and, with `pacs`, the PACS hosts'); wait for every session."""
        self.birds["co"] = start_bird(self, "co", "core", core_router_config())
        for site in SITES.values():
            self.birds[site.router] = start_bird(self, site.router, f"router-{site.name}", site_router_config(site))
        if pacs:
            for site in SITES.values():
                self.start_pacs_bird(site.pacs, wait=False)
        wanted = [("co", f"site_{s.name}") for s in SITES.values()]
        wanted += [(s.router, "pacs") for s in SITES.values()] if pacs else []
        wait_for(lambda: all(self.birds[r].protocol_state(p) == "Established" for r, p in wanted), timeout_s,
                 interval=0.05, what="every BGP session of the sites lab to be Established")

    def pacs_bird(self, host: str) -> Bird:
        """The BGP speaker of a PACS host, made (not started) on first use: its control socket's
        path is known before it runs, for the agent's bgp.socket."""
        if host not in self.birds:
            directory = Path(self.tmpdir) / f"bird-pacs-{host}"
            directory.mkdir(exist_ok=True)
            self.birds[host] = Bird(self, f"pacs-{host}", self.ns(host), directory,
                                    pacs_bird_config(self.site_of(host)))
        return self.birds[host]

    def start_pacs_bird(self, host: str, wait: bool = True, timeout_s: float = 10.0) -> Bird:
        """(Re)start the BGP speaker of a PACS host; with `wait`, until its session is Established."""
        bird = self.pacs_bird(host)
        if not bird.running:
            bird.start()
        if wait:
            wait_for(lambda: bird.protocol_state("uplink") == "Established", timeout_s, interval=0.05,
                     what=f"the BGP session of {host}")
        return bird

    def wait_serving(self, cluster, host: str, timeout: float = 10.0) -> None:
        """Wait until `host` is the AgentCluster's sole MASTER and the core knows the VIP only
        through its site."""
        wait_for(lambda: cluster.masters() == [host], timeout, what=f"{host} sole MASTER")
        wait_for(lambda: self.core_routes() == [host], timeout, what=f"the core's route to the VIP via site {host}")

    def core_routes(self, vip: str = VIP) -> list[str]:
        """The sites ("a", "b") through which the core router knows `vip`/32, best first."""
        return [name.removeprefix("site_") for name in self.birds["co"].routes(f"{vip}/32")]

    def core_table_events(self, since: float = 0.0, vip: str = VIP) -> list[tuple[float, str, bool]]:
        """Every change of the core's BGP table for `vip`/32 since `since` (time.time()), from its
        BIRD's route log (milliseconds): (time, site, the core has a route via that site now)."""
        found = []
        for line in self.birds["co"].log_path.read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) < 6 or words[2] != "<TRACE>" or f"{vip}/32" not in words or \
                    not words[3].startswith("site_") or words[5] not in ("added", "removed"):
                continue
            stamp = datetime.strptime(f"{words[0]} {words[1]}", "%Y-%m-%d %H:%M:%S.%f").timestamp()
            if stamp >= since:
                found.append((stamp, words[3].split(".")[0].removeprefix("site_"), words[5] == "added"))
        return found

    def watch_core_table(self, vip: str = VIP) -> "CoreTable":
        """From now on, every change of the core's BGP table for `vip` (CoreTable.overlaps)."""
        return CoreTable(self, vip)

    def core_forwarding(self, vip: str = VIP) -> list[str]:
        """The sites ("a", "b") the core's kernel forwards `vip` to (`ip route`): one, or none;
        two only if BGP multipath were on, which this lab's BIRD does not configure."""
        by_address = {site.uplink_ip: name for name, site in SITES.items()}
        route = self.kernel_route("co", vip)
        return [by_address[word] for previous, word in zip(route.split(), route.split()[1:])
                if previous == "via" and word in by_address]

    def kernel_route(self, router: str, vip: str = VIP) -> str:
        """The router's kernel route for the VIP (`ip route get`), e.g. "via 192.0.2.2 dev ..."."""
        return self.exec(router, ["ip", "route", "show", f"{vip}/32"], check=False).stdout.strip()

    def start_etcd(self, timers=None):
        """Three etcd members: one on each site's LAN and one on the core side (lab/etcd.py);
        `timers` (lab.etcd.RaftTimers): their heartbeat and election timeout."""
        from lab.etcd import start_etcd_cluster
        return start_etcd_cluster(self, ETCD_HOSTS, timers=timers)

    def cut_from_etcd(self, host: str, on: bool = True) -> None:
        """Drop what `host` sends to every etcd member's client port (nftables in its namespace):
        the host is cut off from etcd, not from the workstations, its peer or its router."""
        if not on:
            self.exec(host, ["nft", "delete", "table", "inet", "labetcd"], check=False)
            return
        members = ", ".join(self.node(h).ipv4 for h in ETCD_HOSTS)
        self.exec(host, ["nft", "-f", "-"], input=(
            "table inet labetcd {\n chain out { type filter hook output priority 0; "
            f"ip daddr {{ {members} }} tcp dport 2379 drop; }}\n}}\n"))

    # ---- faults -------------------------------------------------------------

    def link_down(self, host):
        """Carrier loss at a host: its router-side port goes down (a pulled cable, a dead host)."""
        self.exec(self.router_of[host], ["ip", "link", "set", self.node(host).switch_port, "down"])

    def link_up(self, host):
        self.exec(self.router_of[host], ["ip", "link", "set", self.node(host).switch_port, "up"])

    def site_down(self, site: str):
        """A whole site silent: its router's link to the core loses carrier."""
        self.exec("co", ["ip", "link", "set", f"{self.prefix}c{SITES[site].router}", "down"])

    def site_up(self, site: str):
        """The site's uplink back; the core's static route to the site's LAN too (the kernel
        removed it with the link)."""
        self.exec("co", ["ip", "link", "set", f"{self.prefix}c{SITES[site].router}", "up"])
        self.exec("co", ["ip", "route", "replace", SITES[site].lan, "via", SITES[site].uplink_ip])

    def block_bgp(self, host: str, on: bool = True):
        """Drop BGP (TCP 179) and BFD (UDP 3784) in a PACS host, both ways: its session fails
        while the host and its BIRD stay up."""
        if on:
            ruleset = ("table inet labbgp {\n chain in { type filter hook input priority 0; "
                       "tcp sport 179 drop; tcp dport 179 drop; udp dport 3784 drop; }\n"
                       " chain out { type filter hook output priority 0; "
                       "tcp sport 179 drop; tcp dport 179 drop; udp dport 3784 drop; }\n}\n")
            self.exec(host, ["nft", "-f", "-"], input=ruleset)
        else:
            self.exec(host, ["nft", "delete", "table", "inet", "labbgp"], check=False)

    def flap_bgp(self, host: str, times: int, period_s: float, between=None) -> None:
        """Restart the PACS host's BGP session `times` times, every `period_s` (bounded), calling
        `between()` after each restart (a test's check that nothing took over meanwhile)."""
        bird = self.pacs_bird(host)
        for _ in range(min(times, 100)):
            bird.birdc("restart", "uplink")
            if between is not None:
                between(period_s)
            else:
                time.sleep(period_s)     # the flap's period itself: nothing to wait for

    def partition(self, host):
        raise NotImplementedError("the sites lab cuts links: link_down, site_down, block_bgp")

    def heal(self, host):
        raise NotImplementedError("the sites lab cuts links: link_up, site_up, block_bgp(on=False)")


def agent_extra(lab: SitesLab, host: str, stable_for: float = 1.0) -> dict:
    """The agent settings of a PACS host of this lab (for AgentCluster.add): the routed VIP and
    the BGP gate on its BIRD's `uplink`."""
    return {"vips": [{"address": f"{VIP}/32", "mode": "routed"}],
            "bgp": {"socket": lab.pacs_bird(host).socket, "protocols": ["uplink"], "stable_for": stable_for,
                    "poll_interval": 0.2}}



def etcd_agent_extra(lab: SitesLab, host: str, etcd, prefix: str, ttl: int, stable_for: float = 1.0) -> dict:
    """agent_extra with `cluster.authority: etcd` on the lab's three members, and the DICOM port
    drained at a handover (the lease lets go before the successor holds: the drain keeps
    associations whole)."""
    return {**agent_extra(lab, host, stable_for), "cluster": {"authority": "etcd"},
            "etcd": {"endpoints": etcd.endpoints, "prefix": prefix, "ttl": ttl},
            "handover": {"drain_timeout": 2, "shutdown_drain_timeout": 1, "drain_ports": [104]}}


class VipProbe:
    """The workstation's C-ECHO to the VIP every 20 ms (lab/probe.py) through a handover, its
    records in `name` under the lab's tmpdir; returns once 20 echoes have been answered."""

    def __init__(self, lab: SitesLab, name: str, duration: float, timeout: float):
        self.lab, self.path = lab, os.path.join(lab.tmpdir, name)
        self.process = start_probe(lab, self.path, VIP, port=104, called_ae="PACS", interval=0.02,
                                   duration=duration, timeout=timeout)
        lab.wait_for(lambda: os.path.exists(self.path) and sum(r["ok"] for r in load(self.path)) >= 20, 15,
                     what="the workstation's echoes answered")

    def records_after_move(self, site: str) -> list[dict]:
        """Once 20 echoes sent from now on have been answered (through `site`), stop the probe:
        every record it wrote."""
        moved_at = time.monotonic()     # the probe records monotonic times, system-wide
        self.lab.wait_for(lambda: sum(1 for r in load(self.path) if r["ok"] and r["t"] > moved_at) >= 20, 10,
                          what=f"echoes answered through site {site}")
        self.lab.stop(self.process, timeout=5)
        return load(self.path)


class CoreSampler:
    """The core's routes to the VIP every `interval_s`, in a thread, until stopped (at most
    `limit_s`): what an operator polling the core would see. `table`: "bgp" (BIRD's table,
    core_routes: every route it knows) or "kernel" (what it forwards by, core_forwarding)."""

    def __init__(self, lab: SitesLab, interval_s: float = 0.05, limit_s: float = 120.0, vip: str = VIP,
                 table: str = "bgp"):
        self.lab, self.vip, self.samples = lab, vip, []
        self.read = lab.core_routes if table == "bgp" else lab.core_forwarding
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s, limit_s), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.samples.append((time.monotonic(), self.read(self.vip)))
            self._stop.wait(interval_s)

    def stop(self) -> list[tuple[float, list[str]]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples

    def via_two_sites(self) -> list[tuple[float, list[str]]]:
        return [(t, routes) for t, routes in self.samples if len(routes) > 1]


class CoreTable:
    """The core's BGP table for the VIP from a moment on (its BIRD logs every change with
    milliseconds): the intervals in which it held the VIP via both sites at once."""

    def __init__(self, lab: SitesLab, vip: str = VIP):
        self.lab, self.vip = lab, vip
        self.since = time.time()
        routes = lab.core_routes(vip)
        self.initial = {site: site in routes for site in SITES}

    def events(self) -> list[tuple[float, str, bool]]:
        return self.lab.core_table_events(self.since, self.vip)

    def overlaps(self) -> list[float]:
        return both_held(self.initial, self.events())


class SiteRouteMonitor:
    """Every change of the VIP's kernel route in both site routers (`ip -ts monitor route`, so
    nothing between two samples is missed): the intervals in which both sites held a route to
    the VIP, i.e. announced it to the core at once."""

    def __init__(self, lab: SitesLab, vip: str = VIP):
        self.lab, self.vip, self.paths, self.processes = lab, vip, {}, {}
        for site in SITES.values():
            path = Path(lab.mkdtemp(f"routes-{site.router}")) / "monitor.txt"
            with open(path, "w") as handle:
                self.processes[site.name] = lab.spawn(site.router, ["ip", "-ts", "monitor", "route"], stdout=handle)
            self.paths[site.name] = path
        # `ip monitor` subscribes right after it starts; wait until it runs in the router's namespace.
        for site in SITES.values():
            pid = self.processes[site.name].pid
            wait_for(lambda: in_namespace(pid, lab.ns(site.router)), 5, what="ip monitor running")
        self.initial = {site.name: bool(lab.kernel_route(site.router, vip)) for site in SITES.values()}

    def events(self) -> list[tuple[float, str, bool]]:
        """(wall-clock time, site, the site router has a route now), in time order."""
        found = []
        for site, path in self.paths.items():
            for line in path.read_text().splitlines():
                if line.startswith("[") and f" {self.vip} via " in f" {line[28:].strip()}".replace("Deleted ", ""):
                    stamp = datetime.strptime(line[1:27], "%Y-%m-%dT%H:%M:%S.%f").timestamp()
                    found.append((stamp, site, not line[28:].strip().startswith("Deleted")))
        return sorted(found)

    def overlaps(self) -> list[float]:
        """Seconds during which both site routers held the VIP, one entry per interval."""
        return both_held(self.initial, self.events())

    def stop(self) -> None:
        for process in self.processes.values():
            self.lab.stop(process)



def both_held(initial: dict[str, bool], events: list[tuple[float, str, bool]]) -> list[float]:
    """The lengths of the intervals in which every site held a route, from `initial` and the
    (time, site, present) events in time order; an interval still open at the end is left out."""
    held = dict(initial)
    both_since, spans = None, []
    for stamp, site, present in events:
        held[site] = present
        if all(held.values()) and both_since is None:
            both_since = stamp
        elif not all(held.values()) and both_since is not None:
            spans.append(stamp - both_since)
            both_since = None
    return spans


def ready_to_take_over(cluster, host: str) -> bool:
    """`host` may become MASTER: its BGP gate open (a session Established for bgp.stable_for) and its
    checks up. Until then its heartbeats say it is held back, and a release has nobody to go to."""
    status = cluster.status(host) or {}
    return status.get("state") == "BACKUP" and (status.get("bgp") or {}).get("ready") is True \
        and all(check["ok"] for check in status.get("checks", []))
