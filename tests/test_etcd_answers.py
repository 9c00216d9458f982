"""The etcd client's checks of what it is told, without etcd: answer parsing (hapacs/etcdwire.py)
and the HTTP layer against small servers on loopback that answer like etcd, like something
else, chunked, broken, or not at all. The real etcd is in tests/test_etcd_client.py."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path

import pytest

from hapacs import etcdwire as wire
from hapacs.etcd import EtcdClient, parse_endpoint, tls_context
from hapacs.etcdwire import EtcdError
from lab.etcd import make_certificates

HEADER = {"cluster_id": "1", "member_id": "2", "revision": "7", "raft_term": "3"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kv(key="k", value="v", lease="0"):
    return {"key": b64(key), "value": b64(value), "lease": lease, "create_revision": "5", "mod_revision": "6"}


# ---- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize("text, code, words", [
    (b"<html>hello</html>", wire.NOT_ETCD, "not JSON"),
    (b"[1, 2]", wire.NOT_ETCD, "not an object"),
    (b'{"ok": true}', wire.NOT_ETCD, "no etcd \"header\""),
    (b'{"result": 5}', wire.BAD_ANSWER, "\"result\" is not an object"),
    (b"\xff\xfe", wire.NOT_ETCD, "not JSON"),
    (b'{"error": "etcdserver: permission denied", "code": 7}', wire.PERMISSION, "role"),
    (b'{"error": "etcdserver: invalid auth token", "code": 16}', wire.PERMISSION, "role"),
    (b'{"error": "etcdserver: user name is empty", "code": 3}', wire.PERMISSION, "authentication on"),
    (b'{"error": "etcdserver: requested lease not found", "code": 5}', wire.LEASE_NOT_FOUND, "lease not found"),
    (b'{"error": "etcdserver: no leader", "code": 14}', wire.UNAVAILABLE, "cannot answer now: etcdserver: no leader"),
    (b'{"error": "etcdserver: request timed out", "code": 4}', wire.UNAVAILABLE, "cannot answer now"),
    (b'{"error": {"grpc_code": 9, "message": "etcdserver: mvcc: required revision has been compacted"}}',
     wire.REFUSED, "compacted"),
])
def test_a_malformed_or_refusing_answer_is_one_clear_error(text, code, words):
    with pytest.raises(EtcdError) as raised:
        wire.decode_json(text, "get")
    assert raised.value.code == code
    assert words in raised.value.reason and raised.value.reason.startswith("get: ")


@pytest.mark.parametrize("answer, parse, words", [
    ({"header": HEADER, "TTL": "3"}, wire.parse_grant, "ID missing"),
    ({"header": HEADER, "ID": "x1", "TTL": "3"}, wire.parse_grant, "ID is not a number"),
    ({"header": HEADER, "ID": True, "TTL": "3"}, wire.parse_grant, "ID missing or not a number"),
    ({"header": HEADER, "kvs": "nope"}, wire.parse_range, "\"kvs\" is not a list"),
    ({"header": HEADER, "kvs": [{"value": b64("v")}]}, wire.parse_range, "without \"key\""),
    ({"header": HEADER, "kvs": [{"key": "!!!"}]}, wire.parse_range, "not valid base64"),
    ({"header": HEADER, "kvs": [{"key": 5}]}, wire.parse_range, "not a base64 string"),
    ({"header": HEADER, "succeeded": "yes", "responses": [{}]}, wire.parse_take, "not true or false"),
    ({"header": HEADER}, wire.parse_take, "no response"),
    ({"header": HEADER, "responses": [{"response_put": {}}]}, wire.parse_take, "no range"),
    ({"header": HEADER, "events": {}}, wire.parse_watch, "\"events\" is not a list"),
    ({"header": HEADER, "events": [{"type": "BOOM", "kv": kv()}]}, wire.parse_watch, "unknown event type"),
    ({"header": HEADER, "events": [{"type": "DELETE"}]}, wire.parse_watch, "without \"key\""),
])
def test_an_answer_missing_a_field_is_a_bad_answer(answer, parse, words):
    with pytest.raises(EtcdError) as raised:
        parse(answer)
    assert raised.value.code == wire.BAD_ANSWER
    assert words in raised.value.reason


def test_well_formed_answers_parse_with_etcds_omitted_zero_fields():
    assert wire.parse_grant({"header": HEADER, "ID": "7587862108741830916", "TTL": "2"}) == \
        wire.Lease(7587862108741830916, 2)
    assert wire.parse_keepalive({"header": HEADER, "ID": "1", "TTL": "3"}) == 3
    assert wire.parse_keepalive({"header": HEADER, "ID": "1"}) == 0         # expired: TTL left out
    assert wire.parse_keepalive({"header": HEADER, "ID": "1", "TTL": "-1"}) == 0
    assert wire.parse_range({"header": HEADER}) is None                     # no "kvs": no key
    held = wire.parse_range({"header": HEADER, "kvs": [kv(lease="99")]})
    assert (held.key, held.value, held.lease, held.create_revision) == (b"k", b"v", 99, 5)
    lost = wire.parse_take({"header": HEADER, "responses": [{"response_range": {"header": HEADER,
                                                                               "kvs": [kv(value="other")]}}]})
    assert lost.succeeded is False and lost.holder.value == b"other"
    won = wire.parse_take({"header": HEADER, "succeeded": True, "responses": [{"response_put": {"header": HEADER}}]})
    assert won == wire.TakeResult(True, None, 7)          # the store revision after the put
    assert lost.revision == 7
    message = wire.parse_watch({"header": HEADER, "events": [{"kv": kv()}, {"type": "DELETE", "kv": kv(value="")}]})
    assert [e.type for e in message.events] == [wire.PUT, wire.DELETE] and message.revision == 7


def test_requests_carry_base64_and_int64_as_strings():
    body = wire.take_body(b"/hapacs/51/leader", b"pacs-a", 12)
    assert body["compare"][0] == {"key": b64("/hapacs/51/leader"), "target": "CREATE", "result": "EQUAL",
                                  "create_revision": "0"}
    assert body["success"][0]["request_put"]["lease"] == "12"
    assert body["failure"] == [{"request_range": {"key": b64("/hapacs/51/leader")}}]


@pytest.mark.parametrize("url, words", [
    ("198.51.100.1:2379", "expected http://HOST:PORT"),
    ("ftp://198.51.100.1", "expected http://HOST:PORT"),
    ("http://198.51.100.1:2379/v3", "no path"),
    ("http://198.51.100.1:99999", "port"),
])
def test_an_endpoint_that_is_not_a_url_is_refused_with_a_sentence(url, words):
    with pytest.raises(ValueError, match=words):
        parse_endpoint(url)


# ---- the HTTP layer against small loopback servers -----------------------------------------


def answer_with(head: bytes, body_parts: list[bytes], chunked: bool):
    """A server handler that reads one request and answers `head` + the body (chunked or not)."""
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        if chunked:
            writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
            for part in body_parts:
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
        else:
            body = b"".join(body_parts)
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()
    return handle


async def silent(reader, writer):
    await asyncio.sleep(5)
    writer.close()


async def serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


JSON_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def get_refused(handler, key=b"k", more_endpoints=()) -> EtcdError:
    """The EtcdError a get of `key` raises against a loopback server running `handler` (then
    `more_endpoints`); the server is closed even when the get did not raise."""
    async def scenario():
        server, url = await serve(handler)
        try:
            with pytest.raises(EtcdError) as raised:
                await EtcdClient([url, *more_endpoints]).get(key)
        finally:
            server.close()
        return raised.value
    return run(scenario())


def test_a_chunked_stream_split_mid_line_yields_whole_messages():
    lines = [json.dumps({"result": {"header": HEADER, "created": True}}).encode() + b"\n",
             json.dumps({"result": {"header": HEADER, "events": [{"kv": kv(value="a")}]}}).encode() + b"\n"]
    joined = b"".join(lines)

    async def scenario():
        server, url = await serve(answer_with(JSON_OK, [joined[:30], joined[30:95], joined[95:]], chunked=True))
        seen = []
        with pytest.raises(EtcdError, match="ended the stream"):
            async for message in EtcdClient([url]).watch(b"k"):
                seen.append(message)
        server.close()
        return seen

    seen = run(scenario())
    assert [m.created for m in seen] == [True, False] and seen[1].events[0].kv.value == b"a"


def test_a_silent_endpoint_costs_one_deadline_then_the_next_one_answers():
    grant = json.dumps({"header": HEADER, "ID": "5", "TTL": "3"}).encode()

    async def scenario():
        quiet, quiet_url = await serve(silent)
        good, good_url = await serve(answer_with(JSON_OK, [grant], chunked=False))
        client = EtcdClient([quiet_url, good_url], timeout_s=0.3)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        lease = await client.grant(3)
        elapsed = loop.time() - begin
        again = await client.grant(3)       # the answering endpoint is now tried first
        quiet.close(), good.close()
        return lease, again, elapsed, client.last_errors

    lease, again, elapsed, errors = run(scenario())
    assert lease.id == 5 and again.id == 5
    assert 0.3 <= elapsed < 2.0
    assert errors == {}


def test_nothing_listening_and_a_web_server_are_named_in_the_error():
    async def scenario():
        web, web_url = await serve(answer_with(b"HTTP/1.0 501 Unsupported method ('POST')\r\n"
                                               b"Content-Type: text/html\r\n", [b"<html/>"], chunked=False))
        closed, closed_url = await serve(silent)
        closed.close()
        await closed.wait_closed()
        client = EtcdClient([web_url, closed_url], timeout_s=0.5)
        with pytest.raises(EtcdError) as raised:
            await client.get(b"k")
        web.close()
        return raised.value, web_url, closed_url

    error, web_url, closed_url = run(scenario())
    assert error.code == wire.UNREACHABLE and error.reason.startswith("get: no etcd endpoint answered")
    assert f"{web_url}: get: answered HTTP 501 (text/html): '<html/>', not etcd's JSON gateway" in error.reason
    assert f"{closed_url}: connection refused" in error.reason


def test_etcds_own_refusal_is_not_retried_elsewhere():
    refusal = b'{"error": "etcdserver: permission denied", "code": 7, "message": "etcdserver: permission denied"}'
    error = get_refused(answer_with(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n",
                                    [refusal], chunked=False),
                        key=b"/hapacs/51/leader", more_endpoints=["http://127.0.0.1:9"])
    assert error.code == wire.PERMISSION and "role" in error.reason


def test_a_member_without_a_leader_is_passed_over():
    no_leader = b'{"error": "etcdserver: no leader", "code": 14, "message": "etcdserver: no leader"}'
    grant = json.dumps({"header": HEADER, "ID": "5", "TTL": "3"}).encode()

    async def scenario():
        lost, lost_url = await serve(answer_with(b"HTTP/1.1 503 Service Unavailable\r\n"
                                                 b"Content-Type: application/json\r\n", [no_leader], chunked=False))
        good, good_url = await serve(answer_with(JSON_OK, [grant], chunked=False))
        client = EtcdClient([lost_url, good_url])
        lease = await client.grant(3)
        lost.close(), good.close()
        return lease, {url: error.code for url, error in client.last_errors.items()}, lost_url

    lease, failed, lost_url = run(scenario())
    assert lease.id == 5 and failed == {lost_url: wire.UNAVAILABLE}


def test_the_gateway_refusing_client_certificates_under_authentication_is_a_permission_error():
    # etcd 3.4's own answer (reproduced with auth enabled and --client-cert-auth)
    text = b"CommonName of client sending a request against gateway will be ignored and not used as expected\n"
    head = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    error = get_refused(answer_with(head, [text], chunked=False))
    assert error.code == wire.PERMISSION and "authentication on" in error.reason and "CommonName" in error.reason


def test_garbage_instead_of_http_is_not_etcd():
    error = get_refused(answer_with(b"SSH-2.0-OpenSSH_9.2\r\n", [b""], chunked=False))
    assert error.code == wire.NOT_ETCD and "not an HTTP answer" in error.reason


def test_an_error_answer_that_breaks_the_chunking_is_not_etcd():
    # a chunk-size line longer than the reader's limit: LimitOverrunError must not escape the client
    head = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def endless_chunk_size(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + b"f" * 40000)
        await writer.drain()
        writer.close()

    error = get_refused(endless_chunk_size)
    assert error.code == wire.NOT_ETCD and "no etcd \"header\"" in error.reason


# ---- TLS: expired certificates, on a loopback TLS server ------------------------------------


def tls_server_context(certs, require_client: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs["server"], certs["server_key"])
    if require_client:
        context.load_verify_locations(certs["ca"])
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def tls_get(server_certs, client_context, require_client: bool) -> EtcdError:
    async def scenario():
        server = await asyncio.start_server(answer_with(JSON_OK, [b"{}"], chunked=False), "127.0.0.1", 0,
                                            ssl=tls_server_context(server_certs, require_client))
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            with pytest.raises(EtcdError) as raised:
                await EtcdClient([url], ssl_context=client_context).get(b"k")
        finally:
            server.close()
        return raised.value
    return run(scenario())


def test_an_expired_etcd_certificate_is_named(tmp_path):
    expired = make_certificates(tmp_path, ["127.0.0.1"], leaves_expired=True)
    error = tls_get(expired, tls_context(expired["ca"]), require_client=False)
    assert error.code == wire.TLS
    assert "etcd's certificate has expired" in error.reason and "renew it on the etcd members" in error.reason


def test_an_expired_client_certificate_is_named(tmp_path):
    valid = make_certificates(tmp_path / "valid", ["127.0.0.1"])
    expired = make_certificates(tmp_path / "expired", ["127.0.0.1"], name="old", leaves_expired=True)
    # the server trusts both CAs: only the client certificate's dates are wrong
    (tmp_path / "both.pem").write_text(Path(valid["ca"]).read_text() + Path(expired["ca"]).read_text())
    server = {**valid, "ca": str(tmp_path / "both.pem")}
    error = tls_get(server, tls_context(valid["ca"], expired["client"], expired["client_key"]), require_client=True)
    assert error.code == wire.TLS, error.reason
    # TLS 1.3 refuses a client certificate after the client's handshake: the client sees the close
    assert "refused this client's certificate" in error.reason and "etcd.cert_file" in error.reason
