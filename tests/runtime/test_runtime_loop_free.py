"""A big request must not freeze the event loop, even for a flavour that parses inline (FAQ)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest
from starlette.applications import Starlette

from tests.runtime.support import serving

pytestmark = pytest.mark.timeout(60)


async def test_large_v2_body_is_parsed_off_the_event_loop(faq_app: Callable[..., Starlette]) -> None:
    # ~2 MB of integers: cheap for orjson (which holds the GIL), but checking each value in Python
    # takes hundreds of ms; on the loop that is how long every other request would wait.
    n = 1_000_000
    body = orjson.dumps({"inputs": [{"name": "question", "datatype": "INT64", "shape": [n], "data": [7] * n}]})
    # (the limits would refuse this shape before decoding it: raised here to test the decoding itself)
    async with serving(faq_app(max_request_rows=n, max_request_elements=n)) as c:
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                lags.append(now - last - 0.005)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        r = await c.post("/v2/models/faq-matcher/infer", content=body, headers={"content-type": "application/json"})
        took = time.perf_counter() - t0
        done.set()
        await tick
    assert r.status_code == 400 and "must have datatype BYTES" in r.json()["error"]
    # On the loop the worst stall is the whole parse (~= took); off it, only orjson's share and GIL
    # hand-offs. Relative bound, so a slow shared machine slows both sides alike.
    assert max(lags) < max(0.1, 0.4 * took), f"loop stalled {max(lags) * 1000:.0f} ms (request took {took:.2f} s)"
