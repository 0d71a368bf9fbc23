"""The scoring routes' fast lane (server/hot.py) answers exactly as the full ASGI stack would, and
steps aside whenever a layer it does not reproduce is present."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from scoring_runtime.server.hot import HotPath
from tests.runtime.support import serving

QUESTION = {"question": "how do I reset my password?", "top_k": 2, "min_score": 0}
V2 = {"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["how do I reset my password?"]}],
      "parameters": {"top_k": 2, "min_score": 0}}


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if not labels and line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}} in /metrics")


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The routes the lane served (its calls are recorded, then it runs as usual)."""
    calls: list[str] = []
    original = HotPath.__call__

    async def spy(self: HotPath, scope: Scope, receive: Receive, send: Send, route: str,
                  params: dict[str, str]) -> None:
        calls.append(route)
        await original(self, scope, receive, send, route, params)

    monkeypatch.setattr(HotPath, "__call__", spy)
    return calls


async def test_scoring_routes_take_the_lane_with_the_same_answers_metrics_and_headers(
    faq_app: Callable[..., Starlette], monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = faq_app(api_key_file=None)
    calls = _spy(monkeypatch)
    async with serving(app) as c:
        r = await c.post("/score", json=QUESTION)
        assert r.status_code == 200 and len(r.json()["matches"]) == 2
        assert r.headers["content-type"] == "application/json" and r.headers["x-model-name"] == "faq-matcher"
        assert r.headers["content-length"] == str(len(r.content))
        v2 = await c.post("/v2/models/faq-matcher/infer", json=V2)
        assert v2.status_code == 200
        ids = {o["name"]: o for o in v2.json()["outputs"]}["id"]["data"]
        assert ids == [str(m["id"]) for m in r.json()["matches"]]  # both protocols: the same ranking
        assert (await c.post("/v2/models/faq-matcher/versions/1/infer", json=V2)).status_code == 200
        # errors on the lane: the same handlers, bodies and metrics as on the full stack
        bad = await c.post("/score", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "error" in bad.json() and bad.headers["x-model-version"] == "1"
        unknown = await c.post("/v2/models/other/infer", json=V2)
        assert unknown.status_code == 404 and "not found" in unknown.json()["error"]
        wrong_version = await c.post("/v2/models/faq-matcher/versions/7/infer", json=V2)
        assert wrong_version.status_code == 404
        # not scoring routes: the full stack (routing 404/405 included)
        assert (await c.get("/score")).status_code == 405
        assert (await c.post("/v2/models/faq-matcher/infer/extra", json=V2)).status_code == 404
        metrics = (await c.get("/metrics")).text
    assert calls == ["/score", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer", "/score",
                         "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"]
    assert _sample(metrics, "scoring_requests_total", endpoint="/score", method="POST", code="200") == 1
    assert _sample(metrics, "scoring_requests_total", endpoint="/score", method="POST", code="400") == 1
    assert _sample(metrics, "scoring_requests_total", endpoint="/v2/models/{name}/infer", method="POST",
                   code="404") == 1
    assert _sample(metrics, "scoring_requests_total", endpoint="/score", method="GET", code="405") == 1
    assert _sample(metrics, "scoring_request_duration_seconds_count", endpoint="/score") == 3  # 2 lane + 1 stack
    assert _sample(metrics, "scoring_requests_in_flight") == 1  # the /metrics request itself
    assert _sample(metrics, "scoring_errors_total", reason="bad_request") >= 1


async def test_an_added_middleware_turns_the_lane_off(
    faq_app: Callable[..., Starlette], monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []

    class Recorder:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.app(scope, receive, send)

    app = faq_app(api_key_file=None)
    app.add_middleware(Recorder)
    calls = _spy(monkeypatch)
    async with serving(app) as c:
        assert (await c.post("/score", json=QUESTION)).status_code == 200
    assert "/score" in seen and calls == []


async def test_a_crash_on_the_lane_is_a_500_and_reaches_the_server(
    faq_app: Callable[..., Starlette], monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = faq_app(api_key_file=None)

    async def boom(request: Any) -> Any:
        raise LookupError("a bug")

    hot = app.hot  # type: ignore[attr-defined]
    monkeypatch.setattr(hot, "score", boom)
    async with serving(app) as c:
        with pytest.raises(LookupError):  # Starlette re-raises after answering, and so does the lane
            await c.post("/score", json=QUESTION)
        metrics = (await c.get("/metrics")).text
    assert _sample(metrics, "scoring_requests_total", endpoint="/score", method="POST", code="500") == 1
