"""HTTP client the real-node tests run INSIDE the client network namespace (stdlib only).

    python3 client.py request URL [--method POST] [--json BODY] [--header K:V ...]
        one request; prints {"status", "headers", "body"} as JSON
    python3 client.py load URL --json BODY [--header K:V] [--concurrency N] [--max-seconds S]
        a bounded steady load until SIGTERM/SIGINT (or S seconds); prints a summary as JSON:
        requests, failures (any non-200 or connection error, with samples), per-version and per-pod
        counts, when each version answered first and last, the version that answered last, and per
        second since the start [requests, failures]. ``--requests N`` stops after N requests.
        ``--alternate-header K:V --alternate-seconds S``: time is cut in blocks of S seconds, the
        requests of even blocks carry the header and those of odd blocks do not; the summary then
        has ``groups`` {"with": ..., "without": ...}: requests, p50/p99 over all of a group's blocks
        (interleaved, so a slow drift of the machine weighs on both alike) and each block's p99;
        with ``--raw`` also every latency of the group (ms), to pool several runs.

Every request uses a fresh connection (``Connection: close``), as a client without keep-alive
would, so each one is routed by kube-proxy anew and counts on its own.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import time
import urllib.parse
from typing import Any


def one(
    url: str, method: str, body: bytes | None, headers: dict[str, str], timeout: float
) -> tuple[int, dict[str, str], bytes]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=timeout)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body,
                     headers={"Connection": "close", **headers})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def parse_headers(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, _, v = item.partition(":")
        out[k.strip()] = v.strip()
    return out


def cmd_request(a: argparse.Namespace) -> int:
    headers = parse_headers(a.header)
    body = a.json.encode() if a.json is not None else None
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    try:
        status, hdrs, data = one(a.url, a.method, body, headers, a.timeout)
    except OSError as e:
        print(json.dumps({"status": 0, "headers": {}, "body": f"{type(e).__name__}: {e}"}))
        return 0
    text = data.decode(errors="replace")
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text
    print(json.dumps({"status": status, "headers": hdrs, "body": parsed}))
    return 0


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: list[float]) -> dict[str, Any]:
    """requests, p50_ms and p99_ms (nearest rank) of latencies in seconds."""
    if not latencies:
        return {"requests": 0}
    return {"requests": len(latencies), "p50_ms": round(1000 * nearest_rank(latencies, 0.5), 2),
            "p99_ms": round(1000 * nearest_rank(latencies, 0.99), 2)}


def cmd_load(a: argparse.Namespace) -> int:
    headers = {"Content-Type": "application/json", **parse_headers(a.header)}
    body = a.json.encode()
    stop = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    alternate = parse_headers([a.alternate_header]) if a.alternate_header else {}
    by_block: dict[int, list[float]] = {}
    t0 = time.monotonic()
    stats: dict[str, Any] = {"requests": 0, "failures": 0, "failure_samples": [], "versions": {}, "pods": {},
                             "first_seen": {}, "last_seen": {}, "last_version": None, "per_second": {},
                             "t0": t0}  # time.monotonic() is system-wide: the test can compare with its own

    def worker() -> None:
        while not stop.is_set():
            block = int((time.monotonic() - t0) / a.alternate_seconds) if alternate else 0
            sent = {**headers, **alternate} if alternate and block % 2 == 0 else headers
            started = time.perf_counter()
            try:
                status, hdrs, data = one(a.url, "POST", body, sent, a.timeout)
                err = None if status == 200 else f"HTTP {status}: {data[:200].decode(errors='replace')}"
            except OSError as e:
                status, hdrs, err = 0, {}, f"{type(e).__name__}: {e}"
            with lock:
                if a.requests and stats["requests"] >= a.requests:
                    stop.set()
                    break
                stats["requests"] += 1
                second = stats["per_second"].setdefault(str(int(time.monotonic() - t0)), [0, 0])
                second[0] += 1
                if err is not None:
                    second[1] += 1
                    stats["failures"] += 1
                    if len(stats["failure_samples"]) < 10:
                        stats["failure_samples"].append({"t": round(time.monotonic() - t0, 2), "error": err})
                    continue
                latencies.append(time.perf_counter() - started)
                by_block.setdefault(block, []).append(latencies[-1])
                version = hdrs.get("x-model-version", "?")
                pod = hdrs.get("x-scoring-pod", "?")
                stats["versions"][version] = stats["versions"].get(version, 0) + 1
                stats["pods"][pod] = stats["pods"].get(pod, 0) + 1
                now = round(time.monotonic() - t0, 2)
                stats["first_seen"].setdefault(version, now)
                stats["last_seen"][version] = now
                stats["last_version"] = version
            if a.pause:
                time.sleep(a.pause)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    # Tell the test that the load is running (it waits for this line before changing anything).
    print("started", flush=True)
    stop.wait(a.max_seconds)
    stop.set()
    for t in threads:
        t.join(a.timeout + 1)
    stats["seconds"] = round(time.monotonic() - t0, 2)
    stats.update({k: v for k, v in summary(latencies).items() if k != "requests"})
    if alternate:
        stats["groups"] = {}
        for name, parity in (("with", 0), ("without", 1)):
            blocks = [v for b, v in sorted(by_block.items()) if b % 2 == parity]
            stats["groups"][name] = {**summary([x for v in blocks for x in v]),
                                     "block_p99_ms": [summary(v).get("p99_ms") for v in blocks]}
            if a.raw:
                stats["groups"][name]["latencies_ms"] = [round(1000 * x, 3) for v in blocks for x in v]
    print(json.dumps(stats), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("request")
    r.add_argument("url")
    r.add_argument("--method", default="GET")
    r.add_argument("--json")
    r.add_argument("--header", action="append", default=[])
    r.add_argument("--timeout", type=float, default=10)
    ld = sub.add_parser("load")
    ld.add_argument("url")
    ld.add_argument("--json", required=True)
    ld.add_argument("--header", action="append", default=[])
    ld.add_argument("--concurrency", type=int, default=4)
    ld.add_argument("--max-seconds", type=float, default=300)
    ld.add_argument("--timeout", type=float, default=10)
    ld.add_argument("--pause", type=float, default=0.0, help="seconds each worker waits between requests")
    ld.add_argument("--requests", type=int, default=0, help="stop after this many requests (0: until stopped)")
    ld.add_argument("--alternate-header", help="K:V sent with the requests of every other block of time")
    ld.add_argument("--alternate-seconds", type=float, default=3.0, help="length of those blocks")
    ld.add_argument("--raw", action="store_true", help="with --alternate-header: each group's latencies too")
    a = ap.parse_args(argv)
    return cmd_request(a) if a.cmd == "request" else cmd_load(a)


if __name__ == "__main__":
    sys.exit(main())
