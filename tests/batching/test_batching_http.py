"""Adaptive batching through the real HTTP app: own rows back, and a full queue answered 503 fast.

The model is a tiny deterministic Scorer (row -> 3 * row + 1) whose predict can be held at a gate,
so the queue state is known exactly when the overflowing request arrives. No torch needed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np
import pytest

from scoring_runtime.flavours.base import BadRequest, Job, Scorer, V2Request, V2Tensor, decode_json
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.server.app import create_app
from scoring_runtime.settings import RuntimeSettings

pytestmark = pytest.mark.timeout(30)


class RowScorer(Scorer):
    """`{"x": [ints]}` -> `{"y": [3x+1 ...]}`, computed on the concatenated batch; records batch sizes."""

    platform = "test"
    parse_in_thread = False
    gate = threading.Event()
    entered = threading.Event()
    batches: list[list[int]] = []

    @classmethod
    def load(cls, model_dir: Path, manifest: ModelManifest, settings: RuntimeSettings) -> Self:
        return cls(manifest, settings)

    def v2_metadata(self) -> dict[str, Any]:
        return {"inputs": [], "outputs": []}

    def parse_score(self, body: bytes, content_type: str) -> Job:
        x = decode_json(body).get("x")
        if not isinstance(x, list) or not x:
            raise BadRequest('send {"x": [1, 2, ...]}')
        return Job(rows=len(x), data=np.asarray(x, dtype=np.int64))

    def parse_v2(self, request: V2Request) -> Job:
        raise BadRequest("not used")

    def predict(self, jobs: list[Job]) -> list[Any]:
        type(self).entered.set()
        type(self).gate.wait(10)
        type(self).batches.append([j.rows for j in jobs])
        y = 3 * np.concatenate([j.data for j in jobs]) + 1
        out, start = [], 0
        for j in jobs:
            out.append(y[start:start + j.rows])
            start += j.rows
        return out

    def render_score(self, result: Any, job: Job) -> Any:
        return {"y": [int(v) for v in result]}

    def render_v2(self, result: Any, job: Job) -> list[V2Tensor]:
        return [V2Tensor.of("y", result)]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    manifest = ModelManifest(name="rows", version=1, framework="sklearn", task="tabular")
    (tmp_path / "model.json").write_text(manifest.to_json())
    settings = RuntimeSettings(model_dir=tmp_path, max_batch_size=4, max_batch_delay_ms=20, max_queue_rows=4,
                               retry_after_s=2, log_format="text")
    RowScorer.gate.set()
    RowScorer.entered.clear()
    RowScorer.batches.clear()
    app = create_app(settings, loader=lambda s: RowScorer.load(s.model_dir, manifest, s))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            for _ in range(200):
                if (await c.get("/v2/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the test model never became ready")
            yield c
    RowScorer.gate.set()


async def test_concurrent_requests_through_http_get_their_own_rows(client: httpx.AsyncClient) -> None:
    RowScorer.gate.set()
    # max_queue_rows is 4 here, so send in waves that fit; each wave is batched
    for wave in range(5):
        xs = [[wave * 100 + i * 10 + k for k in range(1 + (i % 2))] for i in range(3)]  # 1, 2, 1 rows
        responses = await asyncio.gather(*(client.post("/score", json={"x": x}) for x in xs))
        for x, r in zip(xs, responses, strict=True):
            assert r.status_code == 200, r.text
            assert r.json() == {"y": [3 * v + 1 for v in x]}
    assert any(len(b) > 1 for b in RowScorer.batches), f"nothing was batched: {RowScorer.batches}"
    assert all(sum(b) <= 4 for b in RowScorer.batches)


async def test_full_queue_is_a_fast_503_with_retry_after(client: httpx.AsyncClient) -> None:
    RowScorer.gate.clear()
    RowScorer.entered.clear()
    running = asyncio.ensure_future(client.post("/score", json={"x": [1, 2, 3, 4]}))  # a full batch: runs now
    for _ in range(200):
        if RowScorer.entered.is_set():
            break
        await asyncio.sleep(0.01)
    assert RowScorer.entered.is_set()
    queued = asyncio.ensure_future(client.post("/score", json={"x": [5, 6, 7, 8]}))  # fills the queue (4 rows)
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    overflow = await client.post("/score", json={"x": [9]})
    elapsed = time.monotonic() - t0
    assert overflow.status_code == 503
    assert overflow.headers["retry-after"] == "2"
    assert "queue full" in overflow.json()["error"]
    assert elapsed < 0.5, f"the overloaded answer took {elapsed:.2f}s"
    RowScorer.gate.set()
    first, second = await asyncio.gather(running, queued)
    assert first.json() == {"y": [4, 7, 10, 13]}
    assert second.json() == {"y": [16, 19, 22, 25]}
    metrics = (await client.get("/metrics")).text
    assert 'scoring_errors_total{reason="overloaded"} 1.0' in metrics
    assert "scoring_batch_rows_sum 8.0" in metrics
    assert "scoring_batch_queue_rows 0.0" in metrics
