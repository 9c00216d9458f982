"""A small asyncio client for etcd 3.4's JSON gateway: leases, a create-if-absent take, watch.

What it is for: leadership across sites held as an etcd lease. The client speaks
HTTP/1.1 to the gateway every etcd member serves on its client URL (`POST /v3/...`),
one connection per request (`Connection: close`), so no state survives a failed
member. It tries the endpoints in turn, starting with the last one that answered;
a connection refused, reset or silent past `timeout_s`, a TLS failure or a server
that is not etcd moves it on to the next. Bodies and answers are built and checked
in `hapacs/etcdwire.py`.

What it must never do: block the event loop (every step of every request runs
under a deadline, except a watch stream's wait for its next event, which the
caller cancels), or let an outside answer escape as anything but `EtcdError`.
Decide leadership on a serializable read: every read here is linearizable (the
gateway's default), which a partitioned member cannot answer.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hapacs import etcdwire as wire
from hapacs.etcdwire import EtcdError, KeyValue, Lease, TakeResult, WatchMessage

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024      # one answer; etcd's own request limit is 1.5 MiB
MAX_QUOTED_BYTES = 512                # of an answer that is not etcd's, for the error message
# What reading an answer's body raises when the connection or the answer breaks off.
BROKEN_ANSWER = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        """HOST:PORT as a URL and the Host header carry it ([HOST]:PORT for IPv6)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}"


def parse_endpoint(url: str) -> Endpoint:
    """http(s)://HOST[:PORT] with nothing after it; ValueError with a sentence otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an etcd endpoint: expected http://HOST:PORT or https://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"{url!r}: an etcd endpoint has no path, query or user (the client adds /v3/...)")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
    return Endpoint(parts.scheme, parts.hostname, port)


def tls_context(ca_file: str | None = None, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """A client context that verifies etcd's certificate against `ca_file` (the system's CAs
    without it) and presents `cert_file`/`key_file` when given. Raises OSError or ssl.SSLError
    for unreadable or mismatched files."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


class _Response:
    """An answer's status, headers and body reader (Content-Length, chunked, or up to EOF)."""

    def __init__(self, reader: asyncio.StreamReader, status: int, headers: dict[str, str]):
        self.reader, self.status, self.headers = reader, status, headers
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.json = "json" in headers.get("content-type", "")

    async def read_body(self) -> bytes:
        if self.chunked:
            parts, size = [], 0
            async for chunk in self.chunks():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ValueError("answer too long")
                parts.append(chunk)
            return b"".join(parts)
        length = self.headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                raise ValueError(f"bad Content-Length {length!r}")
            return await self.reader.readexactly(int(length))
        return await self.reader.read(MAX_BODY_BYTES)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ValueError(f"bad chunk size {size_line[:20]!r}") from None
            if size > MAX_BODY_BYTES:
                raise ValueError("chunk too long")
            if size == 0:
                return
            chunk = await self.reader.readexactly(size + 2)
            yield chunk[:-2]

    async def lines(self) -> AsyncIterator[bytes]:
        """A stream's messages, one JSON object per line whatever the chunking."""
        buffered = b""
        source = self.chunks() if self.chunked else self._raw()
        async for chunk in source:
            buffered += chunk
            if len(buffered) > MAX_BODY_BYTES:
                raise ValueError("stream line too long")
            *complete, buffered = buffered.split(b"\n")
            for line in complete:
                if line.strip():
                    yield line
        if buffered.strip():
            yield buffered

    async def _raw(self) -> AsyncIterator[bytes]:
        while chunk := await self.reader.read(65536):
            yield chunk


async def _read_head(reader: asyncio.StreamReader, what: str) -> tuple[int, dict[str, str]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise EtcdError(wire.NOT_ETCD, f"{what}: the HTTP header is longer than {MAX_HEADER_BYTES} bytes") from None
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
        raise EtcdError(wire.NOT_ETCD, f"{what}: not an HTTP answer: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return int(status_line[1]), headers


class EtcdClient:
    """Requests to one etcd cluster through its members' JSON gateways.

    `timeout_s` bounds each attempt on one endpoint (connect, TLS, request, answer); a request
    tries every endpoint once, so it ends within len(endpoints) x timeout_s.
    """

    def __init__(self, endpoints: list[str], *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 ssl_context: ssl.SSLContext | None = None):
        if not endpoints:
            raise ValueError("etcd: at least one endpoint is needed")
        self.endpoints = [parse_endpoint(url) for url in endpoints]
        if any(e.scheme == "https" for e in self.endpoints) and ssl_context is None:
            ssl_context = tls_context()
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context
        self.current = 0            # the endpoint that answered last: tried first
        self.last_errors: dict[str, EtcdError] = {}   # per endpoint URL, from the latest request

    # ---- the operations ---------------------------------------------------------

    async def grant(self, ttl_s: int) -> Lease:
        return wire.parse_grant(await self.call("/v3/lease/grant", wire.grant_body(ttl_s), "lease grant"))

    async def keepalive(self, lease_id: int) -> int:
        """Renew the lease once; the seconds it has left, 0 when etcd no longer has it."""
        answer = await self.call("/v3/lease/keepalive", wire.lease_body(lease_id), "lease keepalive")
        return wire.parse_keepalive(answer)

    async def revoke(self, lease_id: int) -> None:
        await self.call("/v3/lease/revoke", wire.lease_body(lease_id), "lease revoke")

    async def take(self, key: bytes, value: bytes, lease_id: int) -> TakeResult:
        """Put key=value with the lease if the key is absent, in one transaction."""
        return wire.parse_take(await self.call("/v3/kv/txn", wire.take_body(key, value, lease_id), "take"))

    async def get(self, key: bytes) -> KeyValue | None:
        return wire.parse_range(await self.call("/v3/kv/range", wire.range_body(key), "get"))

    async def get_at(self, key: bytes) -> tuple[KeyValue | None, int]:
        """The key and the store's revision it was read at (a watch from the next one misses nothing)."""
        answer = await self.call("/v3/kv/range", wire.range_body(key), "get")
        return wire.parse_range(answer), wire.header_revision(answer, "get")

    async def status(self) -> dict:
        """The member's status (answers without a quorum): is this endpoint an etcd that answers?"""
        return await self.call("/v3/maintenance/status", {}, "status")

    async def watch(self, key: bytes, start_revision: int = 0) -> AsyncIterator[WatchMessage]:
        """Messages of a watch on one key, the first with `created`; ends (EtcdError) when the
        stream breaks. Opening it fails over like any request; waiting for events has no deadline."""
        what = "watch"
        response, writer = await self._first_answering("/v3/watch", wire.watch_body(key, start_revision), what)
        try:
            async for line in response.lines():
                message = wire.parse_watch(wire.decode_json(line, what), what)
                if message.canceled:
                    raise EtcdError(wire.REFUSED, f"{what}: etcd canceled the watch")
                yield message
        except BROKEN_ANSWER as error:
            raise EtcdError(wire.UNREACHABLE, f"{what}: the stream broke: {error}") from None
        finally:
            writer.close()
        raise EtcdError(wire.UNREACHABLE, f"{what}: etcd ended the stream")

    # ---- requests and failover -------------------------------------------------------

    async def call(self, path: str, body: dict, what: str) -> dict:
        """One request, failing over; the answer's JSON object (checked to be etcd's)."""
        return await self._over_endpoints(lambda endpoint: self._unary(endpoint, path, body, what), what)

    async def _first_answering(self, path: str, body: dict, what: str):
        return await self._over_endpoints(lambda endpoint: self._open(endpoint, path, body, what), what)

    async def _over_endpoints(self, attempt, what: str):
        errors: dict[str, EtcdError] = {}     # this request's own: requests may run side by side
        self.last_errors = errors
        count = len(self.endpoints)
        for step in range(count):
            index = (self.current + step) % count
            endpoint = self.endpoints[index]
            try:
                result = await asyncio.wait_for(attempt(endpoint), self.timeout_s)
            except EtcdError as error:
                errors[endpoint.url] = error
                if error.code in (wire.PERMISSION, wire.LEASE_NOT_FOUND, wire.REFUSED, wire.BAD_ANSWER):
                    self.current = index
                    raise       # etcd itself answered: another member would say the same
                continue
            except TimeoutError:
                errors[endpoint.url] = EtcdError(
                    wire.UNREACHABLE, f"{endpoint.url}: no answer within {self.timeout_s:g} s")
                continue
            self.current = index
            return result
        codes = {error.code for error in errors.values()}
        code = codes.pop() if len(codes) == 1 else wire.UNREACHABLE
        detail = "; ".join(error.reason for error in errors.values())
        raise EtcdError(code, f"{what}: no etcd endpoint answered: {detail}")

    async def _unary(self, endpoint: Endpoint, path: str, body: dict, what: str) -> dict:
        response, writer = await self._open(endpoint, path, body, what)
        try:
            data = await response.read_body()
        except BROKEN_ANSWER as error:
            raise EtcdError(wire.UNREACHABLE, f"{endpoint.url}: {what}: the answer broke off: {error}") from None
        finally:
            writer.close()
        if response.chunked:
            data = data.split(b"\n", 1)[0]      # a stream call (keepalive) answers one line per request
        return wire.decode_json(data, f"{endpoint.url}: {what}")

    async def _open(self, endpoint: Endpoint, path: str, body: dict, what: str):
        """Connect, send the request, read the answer's head; checks it is etcd's JSON gateway."""
        where = f"{endpoint.url}: {what}"
        writer = None
        try:
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, limit=MAX_HEADER_BYTES,
                ssl=self.ssl_context if endpoint.scheme == "https" else None,
                server_hostname=endpoint.host if endpoint.scheme == "https" else None)
            writer.write(_request(endpoint, path, body))
            await writer.drain()
            status, headers = await _read_head(reader, where)
        except BaseException as error:      # the attempt's deadline (a cancel) too: leave no socket open
            _close(writer)
            raise _open_failure(endpoint, error, connected=writer is not None) from None
        response = _Response(reader, status, headers)
        if status != 200 and not response.json:
            raise await _not_json(response, writer, status, where)
        if status != 200:
            try:
                error_body = await response.read_body()
            except BROKEN_ANSWER:
                error_body = b"{}"
            finally:
                _close(writer)
            wire.decode_json(error_body, where)      # raises the error etcd named
            raise EtcdError(wire.NOT_ETCD, f"{where}: HTTP {status} without an etcd error")
        return response, writer


async def _not_json(response: _Response, writer, status: int, where: str) -> EtcdError:
    """The error for a non-JSON answer, quoting its first line: etcd's gateway answers text
    itself in one case, authentication on together with client certificates."""
    try:
        text = (await response.reader.read(MAX_QUOTED_BYTES)).decode("utf-8", "replace")
    except (OSError, ValueError):
        text = ""
    finally:
        _close(writer)
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if "CommonName" in first_line:
        # etcd 3.4 refuses any request through its JSON gateway that carries a client certificate
        # while authentication is on: the gateway cannot pass the certificate's CommonName on as the user.
        return EtcdError(wire.PERMISSION, f"{where}: etcd has authentication on, and its JSON gateway refuses "
                                          f"client certificates then ({first_line!r}): turn etcd's authentication "
                                          "off and rely on the client certificates, or give hapacs its own etcd")
    kind = response.headers.get("content-type", "no content type")
    quoted = f": {first_line[:120]!r}" if first_line else ""
    return EtcdError(wire.NOT_ETCD, f"{where}: answered HTTP {status} ({kind}){quoted}, not etcd's JSON gateway")


def _open_failure(endpoint: Endpoint, error: BaseException, connected: bool) -> BaseException:
    """What to raise when opening a request failed: an EtcdError for a TLS or connection
    failure; anything else (an EtcdError already, a cancel) as it is."""
    if isinstance(error, ssl.SSLError):
        return EtcdError(wire.TLS, f"{endpoint.url}: TLS: {_tls_reason(error)}")
    if isinstance(error, (ConnectionResetError, asyncio.IncompleteReadError)) and endpoint.scheme == "https" \
            and connected:
        # TLS 1.3: a server that refuses the client's certificate does so after the
        # client's side of the handshake is done; the client sees the connection close.
        return EtcdError(wire.TLS, f"{endpoint.url}: TLS: the connection closed before an HTTP answer: "
                                   "etcd may have refused this client's certificate (check etcd.cert_file, "
                                   "etcd.key_file, their CA and dates)")
    if isinstance(error, (OSError, asyncio.IncompleteReadError)):
        return EtcdError(wire.UNREACHABLE, f"{endpoint.url}: {_os_reason(error)}")
    return error


def _request(endpoint: Endpoint, path: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {endpoint.authority}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + payload


def _close(writer) -> None:
    if writer is not None:
        writer.close()


def _tls_reason(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        if "expired" in str(error.verify_message):
            return f"etcd's certificate has expired: {error.verify_message} (renew it on the etcd members)"
        return f"etcd's certificate was refused: {error.verify_message} (check etcd.ca_file)"
    reason = error.reason or str(error)
    if "ALERT" in reason.upper() and "EXPIRED" in reason.upper():
        return f"etcd refused this client's certificate: {reason} (renew etcd.cert_file)"
    if "ALERT" in reason.upper() and "CERTIFICATE" in reason.upper():
        return f"etcd refused this client's certificate: {reason} (check etcd.cert_file, etcd.key_file and their CA)"
    return f"handshake failed: {reason}"


def _os_reason(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (no etcd listening)"
    if isinstance(error, asyncio.IncompleteReadError):
        return "the connection closed before an HTTP answer"
    return f"{type(error).__name__}: {error.strerror or error}" if isinstance(error, OSError) else str(error)
