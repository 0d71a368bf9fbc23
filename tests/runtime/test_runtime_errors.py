"""Every class of bad input gets a 4xx `{"error": ...}` that says what to fix; crashes become 500 JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from scoring_runtime.flavours import Scorer
from scoring_runtime.server.app import create_app
from scoring_runtime.server.dispatch import QueueFull
from tests.runtime.support import serving, settings, v2_questions

INFER = "/v2/models/faq-matcher/infer"


def question(**over: Any) -> dict[str, Any]:
    return {"name": "question", "datatype": "BYTES", "shape": [1], "data": ["reset my password"]} | over


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"inputs": []}', 400, "'inputs' is empty"),
        (b'{"id": "x"}', 400, "missing field 'inputs'"),
        (b'{"inputs": [{"name": "question", "shape": [1], "data": ["a"]}]}', 400, "missing field 'datatype'"),
        (b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1]}]}', 400, "missing field 'data'"),
        (b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}', 400,
         "shape [3] needs 3 elements but data has 1"),
        (b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [-1], "data": ["a"]}]}', 400,
         "non-negative integers"),
        (b'{"inputs": [{"name": "question", "datatype": "TEXT", "shape": [1], "data": ["a"]}]}', 400,
         "unknown datatype 'TEXT'"),
        (b'{"inputs": [{"name": "question", "datatype": "FP32", "shape": [1], "data": [1.5]}]}', 400,
         "must have datatype BYTES"),
        (b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": [7]}]}', 400,
         "BYTES data must be JSON strings"),
        (b'{"inputs": [{"name": "query", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}', 400,
         "missing input tensor 'question' (inputs sent: 'query')"),
        (b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]}', 400,
         "shape [n] or [n, 1]"),
        (b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": [""]}]}', 400,
         "non-empty string"),
        (b'{"parameters": {"top_k": 0}, "inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], '
         b'"data": ["a"]}]}', 400, "top_k must be a positive integer"),
        (b'{"outputs": [{"name": "nope"}], "inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], '
         b'"data": ["a"]}]}', 400, "unknown output(s) 'nope'"),
        # regressions: a non-ASCII digit, and zero-size tensors with dimensions numpy cannot represent
        ('{"parameters": {"top_k": "²"}, "inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], '
         '"data": ["a"]}]}'.encode(), 400, "top_k must be a positive integer, got '²'"),
        (b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [0, 100000000000000000000], '
         b'"data": []}]}', 400, "each at most 2147483647"),
        (b'{"inputs": [{"name": "question", "datatype": "FP32", "shape": [0, 2147483647, 2147483647, 2147483647], '
         b'"data": []}]}', 400, "cannot shape the data as [0, 2147483647, 2147483647, 2147483647]"),
    ],
)
async def test_v2_bad_input(faq_app: Callable[..., Starlette], body: bytes, status: int, fragment: str) -> None:
    async with serving(faq_app()) as c:
        r = await c.post(INFER, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert fragment in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "fragment"),
    [
        (b"{oops", "application/json", 400, "malformed JSON"),
        (b'{"q": "hello"}', "application/json", 400, 'missing field "question"'),
        (b'{"question": 42}', "application/json", 400, "question string"),
        (b'{"question": []}', "application/json", 400, "non-empty list"),
        (b'{"question": "hi", "top_k": "three"}', "application/json", 400, "top_k must be a positive integer"),
        (b'{"question": "hi", "top_k": true}', "application/json", 400, "top_k must be a positive integer"),
        ('{"question": "hi", "top_k": "²"}'.encode(), "application/json", 400, "top_k must be a positive integer"),
        (b"\xff\xfe", "text/plain", 400, "UTF-8"),
        (b"<q>hi</q>", "application/xml", 415, "'application/xml' is not accepted"),
    ],
)
async def test_score_bad_input(
    faq_app: Callable[..., Starlette], body: bytes, ctype: str, status: int, fragment: str
) -> None:
    async with serving(faq_app()) as c:
        r = await c.post("/score", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


async def test_too_large_bodies_are_refused_with_413(faq_app: Callable[..., Starlette]) -> None:
    big = b'{"question": "' + b"a" * 2000 + b'"}'
    async with serving(faq_app(max_body_bytes=1000)) as c:
        declared = await c.post("/score", content=big, headers={"content-type": "application/json"})
        assert declared.status_code == 413
        assert "max-body-bytes" in declared.json()["error"]

        sent_chunks: list[int] = []

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while streaming
            for _ in range(50):
                sent_chunks.append(1)
                yield b"x" * 400

        streamed = await c.post(INFER, content=chunked(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert "too large" in streamed.json()["error"]
        ok = await c.post("/score", json={"question": "reset my password"})
        assert ok.status_code == 200


async def test_unknown_model_version_route_and_method(faq_app: Callable[..., Starlette]) -> None:
    async with serving(faq_app()) as c:
        r = await c.post("/v2/models/other/infer", json=v2_questions("a"))
        assert r.status_code == 404 and "model 'other' not found" in r.json()["error"]
        r = await c.get("/v2/models/faq-matcher/versions/9")
        assert r.status_code == 404 and "no version '9'" in r.json()["error"]
        r = await c.get("/nothing/here")
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"
        assert "no endpoint at /nothing/here" in r.json()["error"]
        r = await c.get("/score")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert "not allowed" in r.json()["error"]
        r = await c.delete("/v2/models/faq-matcher/infer")
        assert r.status_code == 405


class Exploding(Scorer):
    """A flavour whose model raises: the server must answer 500 JSON and keep serving."""

    platform = "test"

    @classmethod
    def load(cls, model_dir: Any, manifest: Any, settings: Any) -> Exploding:
        raise NotImplementedError

    def v2_metadata(self) -> dict[str, Any]:
        return {"inputs": [], "outputs": []}

    def parse_score(self, body: bytes, content_type: str) -> Any:
        from scoring_runtime.flavours.base import Job

        return Job(rows=1, data=body)

    def parse_v2(self, request: Any) -> Any:
        raise AssertionError("unused")

    def predict(self, jobs: list[Any]) -> list[Any]:
        if jobs[0].data == b"boom":
            raise RuntimeError("secret internal detail /etc/passwd")
        return ["fine"]

    def render_score(self, result: Any, job: Any) -> Any:
        return {"result": result}

    def render_v2(self, result: Any, job: Any) -> list[Any]:
        return []


async def test_unexpected_errors_are_500_json_without_details(faq_dir: Any, faq_scorer: Scorer) -> None:
    scorer = Exploding(faq_scorer.manifest, settings(faq_dir))
    app = create_app(settings(faq_dir), loader=lambda _s: scorer)
    async with serving(app) as c:
        r = await c.post("/score", content=b"boom")
        assert r.status_code == 500
        assert r.json() == {"error": "internal error while scoring; the details are in the server log"}
        assert "passwd" not in r.text and "Traceback" not in r.text
        assert (await c.post("/score", content=b"ok")).json() == {"result": "fine"}


async def test_queue_full_is_a_fast_503_with_retry_after(faq_app: Callable[..., Starlette]) -> None:
    app = faq_app(retry_after_s=2)
    async with serving(app) as c:
        server = app.state.server

        async def full(job: Any) -> Any:
            raise QueueFull("request queue full (1024 rows waiting, limit 1024)")

        server.dispatcher.submit = full
        r = await c.post("/score", json={"question": "reset my password"})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert "queue full" in r.json()["error"]


async def test_non_http_exceptions_in_client_code_do_not_leak(faq_app: Callable[..., Starlette]) -> None:
    # a request with a broken Content-Length is a 400, not a crash
    async with serving(faq_app()) as c:
        req = c.build_request("POST", "/score", content=b'{"question": "x"}',
                              headers={"content-type": "application/json"})
        req.headers["content-length"] = "abc"
        r = await c.send(req)
    assert r.status_code == 400 and "Content-Length" in r.json()["error"]
    assert isinstance(r, httpx.Response)
