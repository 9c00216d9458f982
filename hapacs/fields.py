"""Typed readers for configuration values, each with an operator's message.

A reader takes `(ctx, located, path)` and returns the value, or records a
problem naming what is wrong and what is allowed and returns INVALID.
`Section` walks one YAML mapping, remembers which keys were asked for and
reports the rest as unknown (with a "did you mean" for typos).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import shlex
import urllib.parse
from dataclasses import dataclass, field

from .yamlsource import Located, Problem, parse


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID = _Invalid()
_REQUIRED = object()


@dataclass
class Context:
    path: str
    root: Located | None
    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def from_text(cls, text: str, path: str) -> "Context":
        root, problems = parse(text, path)
        return cls(path, root, problems)

    def bad(self, located: Located | None, key: str, message: str, line: int | None = None):
        where = line if line is not None else (located.line if located else 1)
        self.problems.append(Problem(self.path, where, key or "(top level)", message))
        return INVALID


def shown(located: Located) -> str:
    """How a value reads back to the operator in a message."""
    if located.kind == "map":
        return "a mapping"
    if located.kind == "seq":
        return "a list"
    value = located.value
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)


class Section:
    """One YAML mapping being read key by key."""

    REQUIRED = _REQUIRED

    def __init__(self, ctx: Context, located: Located | None, path: str, line: int | None = None):
        """`line` is where a missing key is reported: the section's own key, if known."""
        self.ctx, self.path = ctx, path
        self.asked: list[str] = []
        self.items: dict[str, Located] = {}
        self.key_lines: dict[str, int] = {}
        self.line = line or 1
        if located is None or (located.kind == "scalar" and located.value is None):
            return
        self.line = line or located.line
        if located.kind != "map":
            ctx.bad(located, path, f"must be a mapping of keys to values, not {shown(located)}")
            return
        self.items = located.value
        self.key_lines = located.key_lines

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def take(self, key: str, reader, default=_REQUIRED):
        self.asked.append(key)
        located = self.items.get(key)
        if located is None or (located.kind == "scalar" and located.value is None):
            if default is _REQUIRED:
                return self.ctx.bad(None, self.key_path(key), "is required but missing",
                                    line=self.key_lines.get(key, self.line))
            return default
        return reader(self.ctx, located, self.key_path(key))

    def section(self, key: str, required: bool = False) -> "Section":
        self.asked.append(key)
        located = self.items.get(key)
        if located is None and required:
            self.ctx.bad(None, self.key_path(key), "this section is required but missing", line=self.line)
        return Section(self.ctx, located, self.key_path(key), line=self.key_lines.get(key, self.line))

    def problem(self, key: str, message: str, line: int | None = None) -> None:
        where = line if line is not None else self.key_lines.get(key, self.line)
        self.ctx.bad(None, self.key_path(key), message, line=where)

    def item_line(self, key: str, index: int) -> int:
        located = self.items.get(key)
        if located is not None and located.kind == "seq" and index < len(located.value):
            return located.value[index].line
        return self.key_lines.get(key, self.line)

    def done(self, hint: str | None = None, allowed: tuple[str, ...] | None = None) -> None:
        """Report every key nobody asked for: typos must not pass silently."""
        allowed = tuple(allowed if allowed is not None else self.asked)
        for key in self.items:
            if key in allowed:
                continue
            guess = difflib.get_close_matches(key, allowed, n=1)
            message = "unknown key" + (f" {hint}" if hint else "")
            message += f" (did you mean {guess[0]}?)" if guess else ""
            message += f"; allowed: {', '.join(allowed)}"
            self.ctx.bad(None, self.key_path(key), message, line=self.key_lines[key])


# --- readers -----------------------------------------------------------------

def integer(low: int, high: int):
    def read(ctx, located, path):
        value = located.value
        if located.kind != "scalar" or isinstance(value, bool) or not isinstance(value, int):
            return ctx.bad(located, path, f"must be a whole number from {low} to {high}, not {shown(located)}")
        if not low <= value <= high:
            return ctx.bad(located, path, f"{value} is out of range; allowed: {low} to {high}")
        return value
    return read


def number(low: float, high: float, unit: str = "seconds"):
    def read(ctx, located, path):
        value = located.value
        if located.kind != "scalar" or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            return ctx.bad(located, path, f"must be a number of {unit} from {low:g} to {high:g}, "
                           f"not {shown(located)}")
        if not low <= value <= high:
            return ctx.bad(located, path, f"{value:g} is out of range; allowed: {low:g} to {high:g} {unit}")
        return float(value)
    return read


def boolean(ctx, located, path):
    if located.kind != "scalar" or not isinstance(located.value, bool):
        return ctx.bad(located, path, f"must be true or false, not {shown(located)}")
    return located.value


def choice(*options: str):
    def read(ctx, located, path):
        value = located.value
        if located.kind == "scalar" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # "version: 3" arrives as a number
        if located.kind != "scalar" or value not in options:
            return ctx.bad(located, path, f"{shown(located)} is not allowed; use one of: {', '.join(options)}")
        return value
    return read


def _string(ctx, located, path):
    if located.kind != "scalar" or not isinstance(located.value, str):
        hint = " (put it in quotes)" if located.kind == "scalar" and located.value is not None else ""
        return ctx.bad(located, path, f"must be text{hint}, not {shown(located)}")
    return located.value


def text(min_length: int, max_length: int):
    def read(ctx, located, path):
        value = _string(ctx, located, path)
        if value is INVALID:
            return value
        if not min_length <= len(value) <= max_length:
            return ctx.bad(located, path, f"must be {min_length} to {max_length} characters long, "
                           f"not {len(value)}")
        return value
    return read


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


def name_text(ctx, located, path):
    value = _string(ctx, located, path)
    if value is not INVALID and not _NAME.match(value):
        return ctx.bad(located, path, f"{value!r} is not a valid name; use 1 to 32 letters, digits, "
                       "'.', '_' or '-', starting with a letter or digit")
    return value


def ae_title(ctx, located, path):
    value = _string(ctx, located, path)
    if value is INVALID:
        return value
    if not 1 <= len(value.strip()) <= 16 or len(value) > 16 or not value.isascii() \
            or "\\" in value or not value.isprintable():
        return ctx.bad(located, path, f"{value!r} is not a DICOM AE title; use 1 to 16 printable ASCII "
                       "characters without a backslash")
    return value


def ip_address(ctx, located, path):
    value = _string(ctx, located, path) if located.kind == "scalar" else INVALID
    if located.kind != "scalar":
        return ctx.bad(located, path, f"must be an IPv4 or IPv6 address such as 192.0.2.12, not {shown(located)}")
    if value is INVALID:
        return value
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return ctx.bad(located, path, f"{value!r} is not an IPv4 or IPv6 address (such as 192.0.2.12 or 2001:db8::12)")


def vip_address(ctx, located, path):
    value = _string(ctx, located, path)
    if value is INVALID:
        return value
    if "/" not in value:
        return ctx.bad(located, path, f"{value!r} needs a prefix length, such as 192.0.2.100/24 or 2001:db8::100/64")
    try:
        address = ipaddress.ip_interface(value)
    except ValueError:
        return ctx.bad(located, path, f"{value!r} is not an address with prefix length "
                       "(such as 192.0.2.100/24 or 2001:db8::100/64)")
    ip = address.ip
    if ip.is_multicast or ip.is_loopback or ip.is_unspecified or ip.is_link_local:
        return ctx.bad(located, path, f"{ip} cannot be a VIP (multicast, loopback, unspecified or "
                       "link-local); use an address of the workstations' subnet")
    if address.version == 4 and address.network.prefixlen < 31 and ip in (
            address.network.network_address, address.network.broadcast_address):
        return ctx.bad(located, path, f"{ip} is the network or broadcast address of {address.network}")
    return address


def interface_name(ctx, located, path):
    value = _string(ctx, located, path)
    if value is INVALID:
        return value
    if not 1 <= len(value) <= 15 or value in (".", "..") or any(c in value for c in "/: \t"):
        return ctx.bad(located, path, f"{value!r} is not a network interface name (1 to 15 characters, "
                       "no '/', ':' or spaces, such as eth0)")
    return value


port = integer(1, 65535)


def absolute_path(ctx, located, path):
    value = _string(ctx, located, path)
    if value is not INVALID and not value.startswith("/"):
        return ctx.bad(located, path, f"{value!r} must be an absolute path (starting with /)")
    return value


_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")


def hostname(ctx, located, path):
    value = _string(ctx, located, path)
    if value is INVALID:
        return value
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOST.match(value):
        return ctx.bad(located, path, f"{value!r} is neither an IP address nor a host name")
    return value


def listen_address(ctx, located, path):
    value = _string(ctx, located, path)
    if value is INVALID:
        return value
    host, _, port_text = value.rpartition(":") if not value.startswith("[") or "]:" in value else (value, "", "")
    if not host:
        host, port_text = value, "161"
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number_ = int(port_text)
        if not 1 <= number_ <= 65535:
            raise ValueError
    except ValueError:
        return ctx.bad(located, path, f"{value!r} is not ADDRESS:PORT (such as 0.0.0.0:161 or [::]:161)")
    return host, number_


def tcp_endpoint(default_port: int):
    """One ADDRESS:PORT to listen on (IPv6 in brackets); a bare address takes `default_port`."""
    example = f"127.0.0.1:{default_port} or [::1]:{default_port}"

    def read(ctx, located, path):
        if located.kind == "seq":
            return ctx.bad(located, path, f"must be one ADDRESS:PORT such as {example}, not a list")
        value = _string(ctx, located, path)
        if value is INVALID:
            return value
        if value.startswith("["):
            host, closing, rest = value[1:].partition("]")
            if not closing or (rest and not rest.startswith(":")):
                return ctx.bad(located, path, f"{value!r} is not ADDRESS:PORT; write it as {example}")
            port_text = rest[1:] if rest else str(default_port)
        elif value.count(":") > 1:
            return ctx.bad(located, path, f"{value!r}: write an IPv6 address in brackets, "
                           f"such as [::1]:{default_port}")
        else:
            host, colon, port_text = value.partition(":")
            port_text = port_text if colon else str(default_port)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return ctx.bad(located, path, f"{host!r} is not an IP address of this host; allowed: ADDRESS:PORT "
                           f"with an IP address (no host name), such as {example}")
        if address.is_multicast:
            return ctx.bad(located, path, f"{address} is a multicast address; give one of this host's "
                           f"addresses, such as {example}")
        if not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
            return ctx.bad(located, path, f"{port_text!r} is not a port; allowed: 1 to 65535")
        return str(address), int(port_text)
    return read


def command_line(ctx, located, path):
    if located.kind == "seq":
        parts = [item.value for item in located.value]
        if not parts or not all(isinstance(p, str) and p for p in parts):
            return ctx.bad(located, path, "must be a command: a non-empty list of words, or one line of text")
        return tuple(parts)
    value = _string(ctx, located, path)
    if value is INVALID:
        return value
    try:
        parts = shlex.split(value)
    except ValueError as err:
        return ctx.bad(located, path, f"cannot split this command line: {err}")
    if not parts:
        return ctx.bad(located, path, "is empty; give the command to run")
    return tuple(parts)


def url(ctx, located, path):
    value = _string(ctx, located, path)
    if value is INVALID:
        return value
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return ctx.bad(located, path, f"{value!r} is not an http:// or https:// URL with a host")
    return value


def list_of(reader, min_items: int = 0):
    def read(ctx, located, path):
        if located.kind != "seq":
            return ctx.bad(located, path, f"must be a list, not {shown(located)}")
        if len(located.value) < min_items:
            return ctx.bad(located, path, f"needs at least {min_items} entr{'y' if min_items == 1 else 'ies'}")
        values = [reader(ctx, item, f"{path}[{index}]") for index, item in enumerate(located.value)]
        return INVALID if any(v is INVALID for v in values) else tuple(values)
    return read
