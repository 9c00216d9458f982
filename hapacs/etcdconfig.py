"""The `etcd:` section: where the leadership lease of `cluster.authority: etcd` lives.

Read like the rest of the configuration (hapacs.config): every problem is
reported at once as `FILE:LINE: etcd.prefix: ...`. The TLS files must exist
and be readable when the configuration is checked, so that `check-config`
finds a typo before a night-time failover does. The whole section is
restart-only (hapacs.reload): a lease is granted with its TTL and its key
lives under the prefix, so changing either while holding it would move the
leadership key under a running MASTER.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

from .etcd import parse_endpoint, tls_context
from .fields import INVALID, Context, Section, absolute_path, integer, list_of, text

# etcd raises a TTL below 2 s to 2 s (its minimum is 1.5 x its election timeout); above a
# minute a dead MASTER's site would keep the leadership for too long.
MIN_TTL_S = 2
MAX_TTL_S = 60
DEFAULT_TTL_S = 3
AUTHORITIES = ("heartbeats", "etcd")


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]
    prefix: str                   # starts and ends with "/"; the key is PREFIX + "leader"
    ttl_s: int
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def leader_key(self) -> bytes:
        return (self.prefix + "leader").encode()


def _endpoint(ctx: Context, located, path: str):
    value = text(1, 512)(ctx, located, path)
    if value is INVALID:
        return value
    try:
        parse_endpoint(value)
    except ValueError as err:
        return ctx.bad(located, path, str(err))
    return value


def _readable_file(ctx: Context, located, path: str):
    value = absolute_path(ctx, located, path)
    if value is INVALID:
        return value
    if not os.path.isfile(value):
        return ctx.bad(located, path, f"{value} does not exist or is not a file")
    if not os.access(value, os.R_OK):
        return ctx.bad(located, path, f"{value} cannot be read by this user")
    return value


def read(ctx: Context, sec: Section) -> EtcdConfig | None:
    endpoints = sec.take("endpoints", list_of(_endpoint, min_items=1))
    prefix = sec.take("prefix", text(2, 200))
    ttl = sec.take("ttl", integer(MIN_TTL_S, MAX_TTL_S), default=DEFAULT_TTL_S)
    ca_file = sec.take("ca_file", _readable_file, default=None)
    cert_file = sec.take("cert_file", _readable_file, default=None)
    key_file = sec.take("key_file", _readable_file, default=None)
    sec.done()
    if prefix is not INVALID and not (prefix.startswith("/") and prefix.endswith("/")):
        sec.problem("prefix", f"{prefix!r} must start and end with '/', such as /hapacs/cluster-1/")
        prefix = INVALID
    if (cert_file is None) != (key_file is None) and INVALID not in (cert_file, key_file):
        missing, given = ("cert_file", "key_file") if cert_file is None else ("key_file", "cert_file")
        sec.problem(missing, f"cert_file and key_file go together: {given} is given; give both (client "
                    "certificate) or neither", line=sec.key_lines.get(given))
        cert_file = key_file = INVALID      # the other problems are still reported
    if endpoints is not INVALID and len(set(endpoints)) != len(endpoints):
        twice = sorted({e for e in endpoints if endpoints.count(e) > 1})
        sec.problem("endpoints", f"lists the same endpoint twice ({', '.join(twice)}); give each etcd member once")
    if endpoints is not INVALID and (ca_file or cert_file) and not any(e.startswith("https:") for e in endpoints):
        sec.problem("endpoints", "ca_file/cert_file are set but no endpoint is https://; TLS needs https:// "
                    "endpoints")
    if INVALID in (endpoints, prefix, ttl, ca_file, cert_file, key_file):
        return None
    if ca_file or cert_file:
        try:
            tls_context(ca_file, cert_file, key_file)
        except (OSError, ssl.SSLError) as err:
            sec.problem("ca_file" if ca_file else "cert_file", f"the TLS files cannot be used together: {err} "
                        "(ca_file: PEM certificates of etcd's CA; cert_file and key_file: PEM, the key matching "
                        "the certificate)")
            return None
    return EtcdConfig(tuple(endpoints), prefix, ttl, ca_file, cert_file, key_file)
