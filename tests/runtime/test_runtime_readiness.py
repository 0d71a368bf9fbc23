"""Readiness: live at once, ready (and `/`) only after load AND warm-up; a failed load is reported."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from scoring_runtime.flavours import ModelLoadError, Scorer
from scoring_runtime.server.app import create_app
from tests.runtime.support import serving, settings


class SlowWarmup:
    """Wraps the real FAQ scorer; warm-up blocks until the test releases it."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def warmup(self) -> None:
        self.started.set()
        assert self.release.wait(10), "test never released the warm-up"
        self.inner.warmup()


async def test_ready_is_503_while_warmup_runs(faq_dir: Path, faq_scorer: Scorer) -> None:
    slow = SlowWarmup(faq_scorer)
    app = create_app(settings(faq_dir), loader=lambda _s: slow)  # type: ignore[arg-type,return-value]
    async with serving(app, wait_ready=False) as c:
        assert await asyncio.to_thread(slow.started.wait, 10)
        assert (await c.get("/v2/health/live")).status_code == 200
        ready = await c.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False, "status": "warming_up"}
        root = await c.get("/")
        assert root.status_code == 503 and "warming up" in root.json()["error"]
        score = await c.post("/score", json={"question": "reset my password"})
        assert score.status_code == 503 and score.headers["retry-after"] == "1"
        assert (await c.get("/v2/models/faq-matcher/ready")).status_code == 503
        metrics = (await c.get("/metrics")).text
        assert "scoring_model_ready 0.0" in metrics

        slow.release.set()
        for _ in range(500):
            if (await c.get("/v2/health/ready")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await c.get("/v2/health/ready")).json() == {"ready": True}
        assert (await c.get("/")).status_code == 200
        assert (await c.post("/score", json={"question": "reset my password"})).status_code == 200


async def test_a_failed_load_keeps_ready_503_and_calls_on_fatal(faq_dir: Path) -> None:
    def broken(_s: Any) -> Scorer:
        raise ModelLoadError("pipeline.skops is corrupt")

    reasons: list[str] = []
    app = create_app(settings(faq_dir), loader=broken, on_fatal=reasons.append)
    async with serving(app, wait_ready=False) as c:
        for _ in range(500):
            if reasons:
                break
            await asyncio.sleep(0.01)
        assert reasons == ["pipeline.skops is corrupt"]
        r = await c.get("/v2/health/ready")
        assert r.status_code == 503
        assert r.json() == {"ready": False, "status": "failed",
                            "error": "the model failed to load: pipeline.skops is corrupt"}
        assert (await c.get("/v2/health/live")).status_code == 200
        s = await c.post("/score", json={"question": "x"})
        assert s.status_code == 503 and "failed to load" in s.json()["error"]
