"""check_hapacs: the monitoring plugin for NRPE and the Icinga agent.

It asks the local agent for its status over the control socket, as
`hapacs status` does, and prints one line in the monitoring-plugins format,
`HAPACS OK|WARNING|CRITICAL|UNKNOWN - text | perfdata`, exiting 0, 1, 2 or
3 (https://www.monitoring-plugins.org/doc/guidelines.html). It only reads:
it never sends anything to the agent but a status request.

`judge()` is the whole decision, a pure function of the status JSON; every
rule is there and nowhere else:

| what the status shows | code |
| --- | --- |
| this node is FAULT | CRITICAL |
| no MASTER heard (neither this node nor any peer is MASTER) | CRITICAL |
| two or more MASTERs heard (split brain) | CRITICAL |
| a misconfigured peer heard (another key, another cluster.id, this node's name) | CRITICAL |
| a check with weight 0 down while this node is MASTER (possible only in maintenance) | CRITICAL |
| any other check down (a BACKUP's, or one with a negative weight on the MASTER) | WARNING |
| maintenance on | WARNING |
| a peer LOST, or no peer heard at all (no standby) | WARNING |
| a balanced member (balance:) down, drained or in maint (in this node's HAProxy; direct mode: down, or this node drained) | WARNING |
| otherwise | OK |
| the agent does not answer, answers garbage, or the config cannot be read | UNKNOWN |

The worst code wins and the text names every problem, worst first.
"""

from __future__ import annotations

import argparse
import math
import re
import signal
import sys
from dataclasses import dataclass
from typing import NoReturn

from . import __version__

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
CODE_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
DEFAULT_TIMEOUT_S = 10.0     # the monitoring-plugins default for -t
MAX_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class Verdict:
    code: int                       # OK, WARNING, CRITICAL or UNKNOWN
    text: str
    perfdata: tuple[str, ...] = ()

    def line(self) -> str:
        """The plugin's output: `HAPACS CODE - text | perfdata` on one line."""
        line = f"HAPACS {CODE_NAMES[self.code]} - {_one_line(self.text)}"
        return line + (" | " + " ".join(self.perfdata) if self.perfdata else "")


class MalformedStatus(ValueError):
    """The agent's status lacks a field the plugin needs, or has the wrong type in it."""


def judge(status: dict) -> Verdict:
    """The plugin's verdict on one status JSON (as `hapacs status --json` prints it)."""
    try:
        return _judge(status)
    except MalformedStatus as err:
        return Verdict(UNKNOWN, f"the agent's status is malformed: {err}")


def _judge(status: dict) -> Verdict:
    node, state = _field(status, "node", str), _field(status, "state", str)
    peers = [_peer(p) for p in _field(status, "peers", list)]
    checks = [_check(c) for c in _field(status, "checks", list)]
    problems: list[tuple[int, str]] = []

    if state == "FAULT":
        faults = [str(f) for f in status.get("faults") or []]
        problems.append((CRITICAL, "FAULT" + (f" ({'; '.join(faults)})" if faults else "")))
    masters = ([node] if state == "MASTER" else []) + [p.name for p in peers if p.state == "MASTER"]
    if not masters:
        problems.append((CRITICAL, "no MASTER heard"))
    elif len(masters) > 1:
        problems.append((CRITICAL, f"{len(masters)} MASTERs heard: {', '.join(masters)} (split brain)"))
    # A living peer this node cannot understand: one of the two may hold the VIPs wrongly, or
    # will never take over. (An older agent's status has no "misconfigured": none.)
    misconfigured = _field(status, "misconfigured", list) if "misconfigured" in status else []
    for peer in map(_misconfigured, misconfigured):
        problems.append((CRITICAL, f"misconfigured peer {peer.address} ({peer.cause}: {peer.message})"
                         + ("; this node will not become MASTER while it hears it" if peer.blocking else "")))
    for check in checks:
        if check.ok is not False or (state == "FAULT" and check.weight == 0):
            continue   # up, pending, or already named in the FAULT's reasons
        down = f"check {check.name} down" + (f" ({check.message})" if check.message else "")
        if state == "MASTER" and check.weight == 0:
            problems.append((CRITICAL, down + " while this node holds the VIPs"))
        else:
            problems.append((WARNING, down))
    if _field(status, "maintenance", bool):
        problems.append((WARNING, "maintenance on: no automatic transition"))
    for peer in peers:
        if peer.state == "LOST":
            problems.append((WARNING, f"peer {peer.name} lost (last heard {_seconds(peer.last_seen_s)} ago)"))
    if not peers:
        problems.append((WARNING, "no peer heard: no standby"))
    # Out of the balancer's rotation (no "balance" without balance:, or from an older agent).
    members = _members(status["balance"]) if status.get("balance") is not None else []
    problems += [(WARNING, f"balanced member {m.name} of {m.service} {MEMBER_STATE_TEXT[m.state]}")
                 for m in members if m.state in MEMBER_STATE_TEXT]

    problems += _authority(status.get("authority"), state)

    problems.sort(key=lambda problem: -problem[0])   # stable: worst first, then in the order above
    code = problems[0][0] if problems else OK
    master = status.get("master")
    head = f"{node} {state}" + (f", MASTER {master}" if isinstance(master, str) and master != node else "")
    if problems:
        text = f"{head}: " + "; ".join(sentence for _, sentence in problems)
    else:
        up, pending = sum(c.ok is True for c in checks), sum(c.ok is None for c in checks)
        text = head + "".join(f"; peer {p.name} {p.state}" for p in peers)
        text += f"; checks: {up} up" + (f", {pending} not run yet" if pending else "") if checks else "; no checks"
    return Verdict(code, text, _perfdata(peers, checks, members))


def _authority(authority, state: str) -> list[tuple[int, str]]:
    """With authority etcd: CRITICAL when no endpoint answers (no lease can be held or renewed),
    WARNING while some do not (fewer failures left before that)."""
    if authority is None or not isinstance(authority, dict) or authority.get("kind") != "etcd":
        return []    # heartbeats, or an older agent without the field
    up = _field(authority, "endpoints_up", int, "authority.")
    total = _field(authority, "endpoints", int, "authority.")
    if up == 0 and total:
        return [] if state == "FAULT" else [(CRITICAL, f"etcd: none of {total} endpoints answers")]
    if up < total:
        return [(WARNING, f"etcd: {up} of {total} endpoints answer")]
    return []


def _perfdata(peers: list[_Peer], checks: list[_Check], members: list[_Member]) -> tuple[str, ...]:
    """`'label'=value[UOM];warn;crit;min;max`: heartbeat age of each peer, latency of each check,
    open associations of each balanced member."""
    data = [_perf(f"peer_{p.name}_last_seen", p.last_seen_s) for p in peers]
    data += [_perf(f"check_{c.name}_latency", None if c.latency_ms is None else c.latency_ms / 1000)
             for c in checks]
    data += [_perf(f"balance_{m.service}_{m.name}_associations", m.associations, unit="") for m in members]
    return tuple(data)


def _perf(label: str, value: float | None, unit: str = "s") -> str:
    # Labels may hold anything but '=' and "'"; quoted when they hold more than [A-Za-z0-9_.-].
    label = re.sub(r"['=|]", "_", label)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
        label = f"'{label}'"
    # No exponent in perfdata values; "U" when the value is not known (a check not yet run).
    shown = "U" if value is None else f"{value:.6f}".rstrip("0").rstrip(".") + unit
    return f"{label}={shown};;;0"


def _field(data: dict, key: str, kind: type, where: str = ""):
    if not isinstance(data, dict) or key not in data:
        raise MalformedStatus(f"no {where}{key!r}")
    value = data[key]
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MalformedStatus(f"{where}{key!r} is {value!r}, not a number")
    elif not isinstance(value, kind):
        raise MalformedStatus(f"{where}{key!r} is {value!r}, not {kind.__name__}")
    return value


def _nullable(data: dict, key: str, kind: type, where: str = ""):
    """A field that must be there and may be null (None)."""
    return None if _field(data, key, object, where) is None else _field(data, key, kind, where)


@dataclass(frozen=True)
class _Peer:
    name: str
    state: str             # INIT, BACKUP, MASTER, FAULT, or LOST when silent
    last_seen_s: float


@dataclass(frozen=True)
class _Check:
    name: str
    ok: bool | None        # None: not run yet
    latency_ms: float | None
    weight: int
    message: str


@dataclass(frozen=True)
class _Misconfigured:
    address: str
    cause: str             # auth, cluster or name
    blocking: bool         # it keeps this node from becoming MASTER
    message: str


# The member states that take a member out of the rotation, and what each means (hapacs.balancer).
MEMBER_STATE_TEXT = {
    "down": "down (its PACS fails the DICOM check, or its agent says down)",
    "drain": "draining (no new association: hapacs drain on, maintenance or a handover)",
    "maint": "in maint (taken out by hand in HAProxy)",
}


@dataclass(frozen=True)
class _Member:
    service: str
    name: str
    state: str             # up, drain, down or maint
    associations: int | None   # None in direct mode: the kernel counts nothing per member


def _members(balance: object) -> list[_Member]:
    """Every (service, member) of the status's "balance" object."""
    found = []
    for service in _field(balance, "services", list, "balance "):
        name = _field(service, "name", str, "balance service ")
        for member in _field(service, "members", list, "balance service "):
            where = "balance member "
            count = _nullable(member, "associations", float, where)
            found.append(_Member(name, _field(member, "name", str, where), _field(member, "state", str, where),
                                 None if count is None else int(count)))
    return found


def _misconfigured(entry: object) -> _Misconfigured:
    where = "misconfigured peer "
    return _Misconfigured(_field(entry, "address", str, where), _field(entry, "cause", str, where),
                          _field(entry, "blocking", bool, where), _field(entry, "message", str, where))


def _peer(peer: object) -> _Peer:
    return _Peer(_field(peer, "name", str, "peer "), _field(peer, "state", str, "peer "),
                 _field(peer, "last_seen_s", float, "peer "))


def _check(check: object) -> _Check:
    name = _field(check, "name", str, "check ")
    ok = _field(check, "ok", object, "check ")
    if not (ok is None or isinstance(ok, bool)):
        raise MalformedStatus(f"check 'ok' is {ok!r}, not true, false or null")
    latency = _nullable(check, "latency_ms", float, "check ")
    weight, message = check.get("weight", 0), check.get("message")
    return _Check(name, ok, latency, weight if isinstance(weight, int) and not isinstance(weight, bool) else 0,
                  message if isinstance(message, str) else "")


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.0f} min" if value < 7200 else f"{value / 3600:.1f} h"


def _one_line(text: str) -> str:
    # '|' starts the perfdata for Nagios; a line break would start the long output.
    return " ".join(text.replace("|", "/").split())


# --- the command ---------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors are UNKNOWN (exit 3), as in the monitoring-plugins."""

    def error(self, message: str) -> NoReturn:
        print(f"HAPACS UNKNOWN - {message} (see check_hapacs --help)")
        sys.exit(UNKNOWN)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stdout.write(message)
        sys.exit(UNKNOWN)   # after --help and --version too, as the C plugins do


def _parser() -> argparse.ArgumentParser:
    from .cli import add_config_option, add_socket_option
    parser = _Parser(prog="check_hapacs", description=(
        "Monitoring plugin for NRPE and the Icinga agent: asks the local hapacs agent for its status "
        "and prints one line, HAPACS OK|WARNING|CRITICAL|UNKNOWN - text | perfdata, exiting 0/1/2/3. "
        "CRITICAL: this node FAULT, no MASTER or two MASTERs heard, a weight-0 check down on the MASTER. "
        "WARNING: another check down, maintenance on, a peer lost or none heard, a balanced member "
        "down or drained. "
        "UNKNOWN: the agent does not answer."))
    parser.add_argument("-V", "--version", action="version",
                        version=f"check_hapacs v{__version__} (hapacs {__version__})")
    add_config_option(parser)
    add_socket_option(parser)
    parser.add_argument("-t", "--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"give up (UNKNOWN) when the agent has not answered by then "
                             f"(default {DEFAULT_TIMEOUT_S:g})")
    return parser


class _Timeout(Exception):
    pass


def _alarm(signum, frame) -> NoReturn:
    raise _Timeout


def evaluate(args) -> Verdict:
    """Find the socket, ask the agent, judge its answer."""
    from .cli import socket_path
    from .control import ControlError, request
    if not 0 < args.timeout <= MAX_TIMEOUT_S:
        return Verdict(UNKNOWN, f"--timeout must be more than 0 and at most {MAX_TIMEOUT_S:g} seconds")
    try:
        path = socket_path(args, strict=True)
    except OSError as err:
        return Verdict(UNKNOWN, f"cannot read the configuration {args.config}: {err.strerror or err}")
    except UnicodeDecodeError:
        return Verdict(UNKNOWN, f"cannot read the configuration {args.config}: not UTF-8 text")
    # The socket's timeout covers each step; the alarm bounds the whole exchange.
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    try:
        reply = request(path, {"command": "status"}, args.timeout)
    except ControlError as err:
        return Verdict(UNKNOWN, str(err))
    except _Timeout:
        return Verdict(UNKNOWN, f"the agent at {path} did not answer within {args.timeout:g} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if not reply.get("ok"):
        return Verdict(UNKNOWN, f"the agent at {path} refused: {reply.get('message', 'no reason given')}")
    status = reply.get("status")
    if not isinstance(status, dict):
        return Verdict(UNKNOWN, f"the agent at {path} answered without a status")
    return judge(status)


def main(argv: list[str] | None = None) -> int:
    verdict = evaluate(_parser().parse_args(argv))
    print(verdict.line())
    return verdict.code


if __name__ == "__main__":
    sys.exit(main())
