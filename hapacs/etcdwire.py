"""etcd's JSON gateway in data: the request bodies hapacs sends and the answers it accepts.

What it is for: `hapacs/etcd.py` talks to etcd 3.4 over its gRPC-JSON gateway
(`POST /v3/...`, answered by every etcd 3.4 member on its client URL). This
module builds the bodies and checks every answer: keys and values travel in
base64, 64-bit numbers as JSON strings, fields equal to zero or false are left
out (a watch event of type PUT has no "type"; a failed transaction has no
"succeeded"). Anything that does not have the shape etcd gives becomes one
`EtcdError(code, reason)` naming what was wrong.

What it must never do: touch a socket or a clock, or let a malformed answer
escape as KeyError, ValueError or TypeError.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

# EtcdError codes: what went wrong, for logs, status and tests.
UNREACHABLE = "unreachable"      # no connection, or no answer before the deadline
NOT_ETCD = "not-etcd"            # something answered, but not etcd's JSON gateway
TLS = "tls"                      # handshake failed: wrong CA, expired or refused certificate
PERMISSION = "permission"        # etcd refused: authentication or role does not allow this key
LEASE_NOT_FOUND = "lease-not-found"
UNAVAILABLE = "unavailable"      # this member cannot serve now (no leader, timed out): try another
REFUSED = "refused"              # any other error etcd itself returned
BAD_ANSWER = "bad-answer"        # etcd's JSON without the fields it always carries

# gRPC status codes etcd returns in its error answers (google.golang.org/grpc/codes).
_GRPC_DEADLINE_EXCEEDED, _GRPC_NOT_FOUND, _GRPC_PERMISSION_DENIED = 4, 5, 7
_GRPC_UNAVAILABLE, _GRPC_UNAUTHENTICATED = 14, 16

# A watch event's "type" (mvccpb.Event_EventType); PUT is 0 and so left out of the JSON.
PUT, DELETE = "PUT", "DELETE"


class EtcdError(Exception):
    """etcd could not be used for this request: `code` (one of the names above) and a sentence."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Lease:
    id: int
    ttl_s: int          # as granted: etcd raises a TTL below its minimum (2 s with the default election timeout)


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    lease: int          # 0 when the key is held by no lease
    create_revision: int
    mod_revision: int


@dataclass(frozen=True)
class TakeResult:
    """A create-if-absent transaction: `succeeded` when this call created the key (then
    `holder` is None); otherwise `holder` is the key as it is now, whoever holds it."""

    succeeded: bool
    holder: KeyValue | None
    revision: int = 0   # the store's revision after the transaction (etcd's header)


@dataclass(frozen=True)
class WatchEvent:
    type: str           # PUT or DELETE
    kv: KeyValue


@dataclass(frozen=True)
class WatchMessage:
    created: bool
    canceled: bool
    revision: int
    events: tuple[WatchEvent, ...]


# ---- request bodies -------------------------------------------------------------


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def grant_body(ttl_s: int) -> dict:
    return {"TTL": int(ttl_s)}


def lease_body(lease_id: int) -> dict:
    return {"ID": str(lease_id)}


def range_body(key: bytes) -> dict:
    return {"key": b64(key)}


def take_body(key: bytes, value: bytes, lease_id: int) -> dict:
    """Put key=value with the lease if the key does not exist (create_revision == 0);
    otherwise read it, so the answer says who holds it. A retry of the same take on
    another endpoint thus learns that its first attempt had succeeded (holder.lease)."""
    return {"compare": [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": b64(key), "value": b64(value), "lease": str(lease_id)}}],
            "failure": [{"request_range": {"key": b64(key)}}]}


def watch_body(key: bytes, start_revision: int = 0) -> dict:
    request: dict[str, Any] = {"key": b64(key)}
    if start_revision:
        request["start_revision"] = str(start_revision)
    return {"create_request": request}


# ---- answers --------------------------------------------------------------------


def decode_json(text: bytes, what: str) -> dict:
    """The JSON object in one answer (or one line of a stream); streamed answers wrap it in "result"."""
    try:
        answer = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EtcdError(NOT_ETCD, f"{what}: the answer is not JSON ({error})") from None
    if not isinstance(answer, dict):
        raise EtcdError(NOT_ETCD, f"{what}: the answer is JSON but not an object")
    check_error(answer, what)
    if "result" in answer:
        answer = answer["result"]
        if not isinstance(answer, dict):
            raise EtcdError(BAD_ANSWER, f"{what}: \"result\" is not an object")
    if not isinstance(answer.get("header"), dict):
        raise EtcdError(NOT_ETCD, f"{what}: the answer has no etcd \"header\"")
    return answer


def check_error(answer: dict, what: str) -> None:
    """Raise the EtcdError for an error answer: {"error": "...", "code": N} from a unary call, or
    {"error": {"grpc_code": N, "message": "..."}} from a stream."""
    error = answer.get("error")
    if error is None:
        return
    if isinstance(error, dict):
        message, code = error.get("message", ""), error.get("grpc_code", error.get("code"))
    else:
        message, code = error, answer.get("code")
    message = str(message or answer.get("message") or "no message")
    if code == _GRPC_NOT_FOUND and "lease" in message:
        raise EtcdError(LEASE_NOT_FOUND, f"{what}: {message}")
    if code in (_GRPC_UNAVAILABLE, _GRPC_DEADLINE_EXCEEDED):
        raise EtcdError(UNAVAILABLE, f"{what}: this etcd member cannot answer now: {message}")
    if "user name is empty" in message:       # gRPC InvalidArgument: authentication is on
        raise EtcdError(PERMISSION, f"{what}: etcd has authentication on and hapacs sends no user ({message})")
    if code in (_GRPC_PERMISSION_DENIED, _GRPC_UNAUTHENTICATED):
        raise EtcdError(PERMISSION, f"{what}: etcd refused ({message}): check the user's role for this prefix")
    raise EtcdError(REFUSED, f"{what}: etcd refused: {message} (gRPC code {code})")


def _int(value: Any, field: str, what: str, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EtcdError(BAD_ANSWER, f"{what}: {field} missing or not a number: {value!r}")
    try:
        return int(value)
    except ValueError:
        raise EtcdError(BAD_ANSWER, f"{what}: {field} is not a number: {value!r}") from None


def _bytes(value: Any, field: str, what: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise EtcdError(BAD_ANSWER, f"{what}: {field} is not a base64 string: {value!r}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EtcdError(BAD_ANSWER, f"{what}: {field} is not valid base64: {value[:40]!r}") from None


def parse_kv(kv: Any, what: str) -> KeyValue:
    if not isinstance(kv, dict) or "key" not in kv:
        raise EtcdError(BAD_ANSWER, f"{what}: a key-value without \"key\": {kv!r}")
    return KeyValue(key=_bytes(kv["key"], "key", what), value=_bytes(kv.get("value"), "value", what),
                    lease=_int(kv.get("lease"), "lease", what, 0),
                    create_revision=_int(kv.get("create_revision"), "create_revision", what, 0),
                    mod_revision=_int(kv.get("mod_revision"), "mod_revision", what, 0))


def parse_grant(answer: dict, what: str = "lease grant") -> Lease:
    return Lease(id=_int(answer.get("ID"), "ID", what), ttl_s=_int(answer.get("TTL"), "TTL", what))


def parse_keepalive(answer: dict, what: str = "lease keepalive") -> int:
    """Seconds the lease has left after this renewal; 0 when etcd no longer knows it (expired
    or revoked: etcd leaves the TTL out, or answers -1 or 0)."""
    return max(0, _int(answer.get("TTL"), "TTL", what, 0))


def parse_range(answer: dict, what: str = "get") -> KeyValue | None:
    kvs = answer.get("kvs", [])
    if not isinstance(kvs, list):
        raise EtcdError(BAD_ANSWER, f"{what}: \"kvs\" is not a list")
    return parse_kv(kvs[0], what) if kvs else None


def parse_take(answer: dict, what: str = "take") -> TakeResult:
    succeeded = parse_succeeded(answer, what)
    responses = answer.get("responses", [])
    if not isinstance(responses, list) or not responses or not isinstance(responses[0], dict):
        raise EtcdError(BAD_ANSWER, f"{what}: the transaction answered no response")
    if succeeded:
        return TakeResult(True, None, header_revision(answer, what))
    ranged = responses[0].get("response_range")
    if not isinstance(ranged, dict):
        raise EtcdError(BAD_ANSWER, f"{what}: the failed transaction answered no range")
    return TakeResult(False, parse_range(ranged, what), header_revision(answer, what))


def header_revision(answer: dict, what: str) -> int:
    """The store's revision when etcd answered (decode_json checked the header is there)."""
    return _int(answer["header"].get("revision"), "header.revision", what, 0)


def parse_succeeded(answer: dict, what: str) -> bool:
    succeeded = answer.get("succeeded", False)
    if not isinstance(succeeded, bool):
        raise EtcdError(BAD_ANSWER, f"{what}: \"succeeded\" is not true or false")
    return succeeded


def parse_watch(answer: dict, what: str = "watch") -> WatchMessage:
    events = answer.get("events", [])
    if not isinstance(events, list):
        raise EtcdError(BAD_ANSWER, f"{what}: \"events\" is not a list")
    parsed = []
    for event in events:
        if not isinstance(event, dict):
            raise EtcdError(BAD_ANSWER, f"{what}: an event is not an object")
        kind = event.get("type", PUT)
        if kind not in (PUT, DELETE):
            raise EtcdError(BAD_ANSWER, f"{what}: unknown event type {kind!r}")
        parsed.append(WatchEvent(kind, parse_kv(event.get("kv"), what)))
    return WatchMessage(created=answer.get("created") is True, canceled=answer.get("canceled") is True,
                        revision=header_revision(answer, what), events=tuple(parsed))
