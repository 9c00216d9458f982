"""hapacs's etcd client run from inside a lab namespace: one scenario, one JSON answer.

The test process sits in the root namespace, which has no route to the lab, so
tests and benchmarks run this with `Lab.exec` (the repository on PYTHONPATH). It
prints one JSON object; an EtcdError becomes {"error": code, "reason": ...}.

    etcdprobe.py [TLS options] lease ENDPOINTS TTL        grant, 5 keepalives, revoke, keepalive after revoke
    etcdprobe.py [TLS options] take ENDPOINTS KEY         two clients race for KEY; retry; delete-if-value
    etcdprobe.py [TLS options] watch ENDPOINTS KEY        watch KEY, take it, delete it: the events seen
    etcdprobe.py [TLS options] expire ENDPOINTS KEY TTL   take KEY with a lease never renewed: when the watch sees it go
    etcdprobe.py [TLS options] get ENDPOINTS KEY          one read, timed, and which endpoint answered

ENDPOINTS is comma-separated. TLS options: --ca FILE --cert FILE --key FILE; --timeout S per attempt.
Every wait is bounded (WAIT_S).
"""

import argparse
import asyncio
import json
import sys
import time

from hapacs.etcd import EtcdClient, tls_context
from hapacs.etcdwire import DELETE, EtcdError, b64, parse_succeeded

WAIT_S = 15.0
KEEPALIVES = 5


async def delete_if_value(client: EtcdClient, key: bytes, value: bytes) -> bool:
    """Delete the key only while it still holds `value`: the probe's own transaction through the
    client (hapacs itself never deletes a key: it revokes its lease)."""
    body = {"compare": [{"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}],
            "success": [{"request_delete_range": {"key": b64(key)}}]}
    return parse_succeeded(await client.call("/v3/kv/txn", body, "delete"), "delete")


async def lease(client: EtcdClient, ttl_s: int) -> dict:
    begin = time.monotonic()
    granted = await client.grant(ttl_s)
    grant_s = time.monotonic() - begin
    keepalive_s, left = [], []
    for _ in range(KEEPALIVES):
        begin = time.monotonic()
        left.append(await client.keepalive(granted.id))
        keepalive_s.append(time.monotonic() - begin)
    await client.revoke(granted.id)
    return {"ttl_s": granted.ttl_s, "grant_s": grant_s, "keepalive_s": keepalive_s, "left_s": left,
            "left_after_revoke_s": await client.keepalive(granted.id)}


async def take(client: EtcdClient, rival: EtcdClient, key: bytes) -> dict:
    mine, theirs = await client.grant(10), await rival.grant(10)
    first = await client.take(key, b"node-a", mine.id)
    second = await rival.take(key, b"node-b", theirs.id)
    retried = await client.take(key, b"node-a", mine.id)
    held = await client.get(key)
    wrong_delete = await delete_if_value(rival, key, b"node-b")
    right_delete = await delete_if_value(client, key, b"node-a")
    after = await client.get(key)
    for lease_id in (mine.id, theirs.id):
        await client.revoke(lease_id)
    return {"first": first.succeeded, "second": second.succeeded,
            "second_sees": second.holder.value.decode() if second.holder else None,
            "retry": retried.succeeded,
            "retry_holder_is_own_lease": bool(retried.holder and retried.holder.lease == mine.id),
            "held": held.value.decode() if held else None, "held_lease_is_mine": bool(held and held.lease == mine.id),
            "wrong_delete": wrong_delete, "right_delete": right_delete, "absent_after_delete": after is None}


async def _watch_until_delete(client: EtcdClient, key: bytes, created: asyncio.Event, seen: list):
    async for message in client.watch(key):
        if message.created:
            created.set()
        for event in message.events:
            seen.append((event.type, event.kv.value.decode(), time.monotonic()))
            if event.type == DELETE:
                return


async def watch(client: EtcdClient, key: bytes, ttl_s: int | None) -> dict:
    created, seen = asyncio.Event(), []
    watcher = asyncio.create_task(_watch_until_delete(client, key, created, seen))
    try:
        await asyncio.wait_for(created.wait(), WAIT_S)
        granted = await client.grant(ttl_s or 10)
        taken_at = time.monotonic()
        await client.take(key, b"holder", granted.id)
        if ttl_s is None:
            await delete_if_value(client, key, b"holder")
        await asyncio.wait_for(watcher, WAIT_S + (ttl_s or 0))
    finally:
        watcher.cancel()
    answer = {"events": [[kind, value] for kind, value, _ in seen], "ttl_s": granted.ttl_s}
    if ttl_s is not None:
        answer["expired_after_s"] = seen[-1][2] - taken_at
    return answer


async def get(client: EtcdClient, key: bytes) -> dict:
    begin = time.monotonic()
    held = await client.get(key)
    return {"elapsed_s": time.monotonic() - begin, "answered_by": client.endpoints[client.current].url,
            "value": held.value.decode() if held else None,
            "failed": {url: error.code for url, error in client.last_errors.items()}}


async def run(args) -> dict:
    context = tls_context(args.ca, args.cert, args.key) if args.ca else None

    def client():
        return EtcdClient(args.endpoints.split(","), timeout_s=args.timeout, ssl_context=context)

    key = args.rest[0].encode() if args.rest else b""
    if args.scenario == "lease":
        return await lease(client(), int(args.rest[0]))
    if args.scenario == "take":
        return await take(client(), client(), key)
    if args.scenario == "watch":
        return await watch(client(), key, None)
    if args.scenario == "expire":
        return await watch(client(), key, int(args.rest[1]))
    if args.scenario == "get":
        return await get(client(), key)
    raise SystemExit(f"unknown scenario {args.scenario!r}\n{__doc__}")


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ca"), parser.add_argument("--cert"), parser.add_argument("--key")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("scenario"), parser.add_argument("endpoints"), parser.add_argument("rest", nargs="*")
    args = parser.parse_args(argv)
    begin = time.monotonic()
    try:
        out = asyncio.run(asyncio.wait_for(run(args), 4 * WAIT_S))
    except EtcdError as error:
        out = {"error": error.code, "reason": error.reason, "elapsed_s": time.monotonic() - begin}
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
