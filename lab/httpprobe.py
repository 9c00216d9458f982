"""HTTP from inside a lab namespace: scrape, send raw bytes, query Prometheus, a bounded storm.

The lab runs it inside a namespace with `Lab.exec` (the test process itself sits
in the root namespace, which has no route to the lab). Standard library only, so
it runs by file path. It prints one JSON object on stdout.

    httpprobe.py get URL [METHOD]               one request: status, headers, body
    httpprobe.py raw HOST PORT HEX [COUNT]      send these bytes COUNT times (each on a new
                                           connection); the first answer line of each
    httpprobe.py query BASE_URL EXPR            a Prometheus instant query: the result list
    httpprobe.py alerts BASE_URL                Prometheus's active alerts
    httpprobe.py storm URL RATE SECONDS [keep-alive]
                                           scrape RATE times a second for SECONDS, each on a new
                                           connection (or all on one, as Prometheus does); bounded
                                           in count (RATE x SECONDS) and time
"""

import http.client
import json
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT_S = 5.0
MAX_RAW = 1000
MAX_STORM = 10000


def get(url: str, method: str = "GET") -> dict:
    request = urllib.request.Request(url, method=method, data=b"x" if method in ("POST", "PUT") else None)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return {"status": response.status, "headers": dict(response.headers),
                    "body": response.read().decode("utf-8", "replace")}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "headers": dict(error.headers), "body": error.read().decode("utf-8", "replace")}
    except (urllib.error.URLError, OSError) as error:
        return {"status": None, "error": str(getattr(error, "reason", error))}


def raw(host: str, port: int, data: bytes, count: int) -> dict:
    answers = []
    for _ in range(min(count, MAX_RAW)):
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while len(answer) < 65536:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            answers.append(answer.split(b"\r\n", 1)[0].decode("latin-1"))
        except OSError as error:
            answers.append(f"error: {error}")
    return {"answers": answers}


def query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.loads(get(url)["body"])
    return {"status": answer.get("status"), "result": answer.get("data", {}).get("result", [])}


def alerts(base: str) -> dict:
    answer = json.loads(get(f"{base}/api/v1/alerts")["body"])
    return {"alerts": answer.get("data", {}).get("alerts", [])}


def storm(url: str, rate: float, seconds: float, keep_alive: bool = False) -> dict:
    parts = urllib.parse.urlsplit(url)
    connection = None
    total = min(int(rate * seconds), MAX_STORM)
    start = time.monotonic()
    latencies, errors, statuses = [], 0, {}
    for index in range(total):
        due = start + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() - start > seconds + 5:
            break
        begin = time.monotonic()
        try:
            if connection is None:
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT_S)
            connection.request("GET", parts.path)
            response = connection.getresponse()
            response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if not keep_alive:
                connection.close()
                connection = None
            latencies.append(time.monotonic() - begin)
        except (OSError, http.client.HTTPException):
            errors += 1
            if connection is not None:
                connection.close()
                connection = None
    latencies.sort()
    return {"scrapes": len(latencies), "errors": errors, "statuses": statuses,
            "elapsed_s": time.monotonic() - start,
            "latency_ms_median": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "latency_ms_p99": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
            "latency_ms_max": 1000 * latencies[-1] if latencies else None}


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("help", [])
    if command == "get":
        out = get(args[0], args[1] if len(args) > 1 else "GET")
    elif command == "raw":
        out = raw(args[0], int(args[1]), bytes.fromhex(args[2]), int(args[3]) if len(args) > 3 else 1)
    elif command == "query":
        out = query(args[0], args[1])
    elif command == "alerts":
        out = alerts(args[0])
    elif command == "storm":
        out = storm(args[0], float(args[1]), float(args[2]), args[3:4] == ["keep-alive"])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
