"""A closed-loop async HTTP load generator: N concurrent clients, each sending its next request as
soon as the previous one is answered.

Two modes: a fixed measuring window (`duration_s`, after `warmup_s` whose requests are not counted)
or a fixed number of measured requests (`requests`, after `warmup_requests`), for slow models.
Reports throughput, latency percentiles and errors (non-2xx, timeouts, connection errors).
Uses aiohttp: its client costs far less CPU per request than httpx, which matters when the load
generator shares a small machine with the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np


@dataclass(frozen=True)
class Call:
    """One request template: POST `body` to `path` with `content_type`; `rows` items in it."""

    path: str
    body: bytes
    content_type: str = "application/json"
    rows: int = 1


@dataclass
class LoadResult:
    target: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    throughput_rps: float
    rows_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    error_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 3)
        return d


class _Window:
    """Which finished requests count: those that started after warm-up and finished before the end."""

    def __init__(self) -> None:
        self.start = float("inf")
        self.end = float("inf")
        self.latencies: list[float] = []
        self.rows = 0
        self.errors = 0
        self.samples: list[str] = []
        self.first_start = float("inf")
        self.last_end = 0.0


async def run_load(
    base_url: str,
    calls: Sequence[Call],
    *,
    target: str,
    concurrency: int,
    duration_s: float | None = None,
    warmup_s: float = 1.0,
    requests: int | None = None,
    warmup_requests: int = 0,
    timeout_s: float = 60.0,
    check: Callable[[int, bytes], str | None] | None = None,
) -> LoadResult:
    """Drive `base_url` with `calls` (round robin) from `concurrency` clients; see the module docstring."""
    if (duration_s is None) == (requests is None):
        raise ValueError("give exactly one of duration_s or requests")
    if not calls:
        raise ValueError("no requests to send")
    w = _Window()
    issued = 0
    stop_at = float("inf")
    counted_limit = requests if requests is not None else None
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:

        def next_call() -> tuple[int, Call] | None:
            nonlocal issued
            now = time.perf_counter()
            if now >= stop_at:
                return None
            if counted_limit is not None and issued >= warmup_requests + counted_limit:
                return None
            i = issued
            issued += 1
            return i, calls[i % len(calls)]

        async def client() -> None:
            while (nxt := next_call()) is not None:
                i, call = nxt
                t0 = time.perf_counter()
                error: str | None = None
                try:
                    async with session.post(call.path, data=call.body,
                                            headers={"Content-Type": call.content_type}) as resp:
                        body = await resp.read()
                        if resp.status >= 300:
                            error = f"HTTP {resp.status}: {body[:200]!r}"
                        elif check is not None:
                            error = check(resp.status, body)
                except (aiohttp.ClientError, TimeoutError) as e:
                    error = f"{type(e).__name__}: {e}"
                t1 = time.perf_counter()
                counted = (t0 >= w.start and t1 <= w.end) if counted_limit is None else i >= warmup_requests
                if not counted:
                    continue
                w.first_start = min(w.first_start, t0)
                w.last_end = max(w.last_end, t1)
                if error is None:
                    w.latencies.append(t1 - t0)
                    w.rows += call.rows
                else:
                    w.errors += 1
                    if len(w.samples) < 5:
                        w.samples.append(error)

        t_begin = time.perf_counter()
        if duration_s is not None:
            w.start = t_begin + warmup_s
            w.end = w.start + duration_s
            stop_at = w.end
        else:
            w.start = t_begin
        await asyncio.gather(*(client() for _ in range(concurrency)))

    elapsed = duration_s if duration_s is not None else max(w.last_end - w.first_start, 1e-09)
    lat = np.asarray(w.latencies) * 1000.0
    pct = np.percentile(lat, [50, 95, 99]) if lat.size else np.array([np.nan] * 3)
    return LoadResult(
        target=target,
        concurrency=concurrency,
        requests=len(w.latencies),
        errors=w.errors,
        duration_s=elapsed,
        throughput_rps=len(w.latencies) / elapsed,
        rows_per_s=w.rows / elapsed,
        p50_ms=float(pct[0]),
        p95_ms=float(pct[1]),
        p99_ms=float(pct[2]),
        mean_ms=float(lat.mean()) if lat.size else float("nan"),
        error_samples=w.samples,
    )
