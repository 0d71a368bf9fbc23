"""Large requests are scored alone, in chunks, one at a time; rows per request are bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette

from scoring_runtime.flavours import Job, Scorer
from tests.runtime.support import serving, v2_questions

QUESTIONS = [f"how do I reset the password of account number {i} " + "please " * 60 for i in range(64)]


async def test_a_large_request_is_scored_in_chunks_with_the_same_answer(
    faq_app: Callable[..., Starlette], faq_scorer: Scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    predict = faq_scorer.predict

    def spy(jobs: list[Job]) -> list[Any]:
        calls.append(sum(j.rows for j in jobs))
        return predict(jobs)

    expected = faq_scorer.render_score(predict([Job(rows=64, data=QUESTIONS, params={"top_k": 3})])[0],
                                       Job(rows=64, data=QUESTIONS, params={"top_k": 3}))
    monkeypatch.setattr(faq_scorer, "predict", spy)
    async with serving(faq_app(large_request_bytes=4096, chunk_bytes=4096)) as c:
        calls.clear()  # the warm-up
        r = await c.post("/score", json={"questions": QUESTIONS, "top_k": 3})
        assert r.status_code == 200, r.text
        assert r.json() == expected
        body_len = len(r.request.content)
        assert body_len > 4096
        # about chunk_bytes of body per model call: every chunk but the last has the same rows
        per_chunk = 64 * 4096 // body_len
        assert calls == [per_chunk] * (64 // per_chunk) + ([64 % per_chunk] if 64 % per_chunk else [])
        calls.clear()
        small = await c.post("/score", json={"question": "reset my password"})
        assert small.status_code == 200 and calls == [1]
        v2 = await c.post("/v2/models/faq-matcher/infer", json=v2_questions(*QUESTIONS, top_k=2))
        assert v2.status_code == 200 and len(calls) > 2
        assert v2.json()["outputs"][0]["shape"] == [64, 2]


async def test_large_requests_wait_their_turn_and_excess_ones_get_503(
    faq_app: Callable[..., Starlette], faq_scorer: Scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    running: list[int] = []
    peak: list[int] = [0]
    predict = faq_scorer.predict

    def slow(jobs: list[Job]) -> list[Any]:
        running.append(1)
        peak[0] = max(peak[0], len(running))
        try:
            import time

            time.sleep(0.05)
            return predict(jobs)
        finally:
            running.pop()

    monkeypatch.setattr(faq_scorer, "predict", slow)
    async with serving(faq_app(large_request_bytes=2048, chunk_bytes=100_000, max_large_requests=2)) as c:
        big = {"questions": QUESTIONS[:16]}
        answers = await asyncio.gather(*(c.post("/score", json=big) for _ in range(5)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) >= 2 and set(codes) <= {200, 503}, codes
    assert 503 in codes
    refused = next(r for r in answers if r.status_code == 503)
    assert "too many large requests in progress" in refused.json()["error"] and refused.headers["retry-after"]
    assert peak[0] == 1  # one large request scored at a time


async def test_rows_per_request_are_bounded(faq_app: Callable[..., Starlette]) -> None:
    async with serving(faq_app(max_request_rows=10)) as c:
        r = await c.post("/score", json={"questions": QUESTIONS[:11]})
        assert r.status_code == 413 and "SCORING_MAX_REQUEST_ROWS" in r.json()["error"]
        assert (await c.post("/score", json={"questions": QUESTIONS[:10]})).status_code == 200


async def test_the_faq_bounds_questions_and_characters_per_request_with_413(
    faq_app: Callable[..., Starlette]
) -> None:
    """At most 256 questions of at most 4,000 characters each (so at most ~1 M characters per request)."""
    async with serving(faq_app()) as c:
        r = await c.post("/score", json={"questions": ["reset my password", "x " * 2001]})
        assert r.status_code == 413 and "question 1 is 4002 characters long; the limit is 4000" in r.json()["error"]
        r = await c.post("/v2/models/faq-matcher/infer", json=v2_questions(*["q"] * 257))
        assert r.status_code == 413 and "at most 256 questions" in r.json()["error"]
        assert (await c.post("/score", json={"questions": ["x " * 2000] * 256})).status_code == 200


def test_split_and_join_round_trip(faq_scorer: Scorer) -> None:
    job = Job(rows=5, data=QUESTIONS[:5], params={"top_k": 3})
    parts = faq_scorer.split(job, 2)
    assert [p.rows for p in parts] == [2, 2, 1]
    whole = faq_scorer.predict([job])[0]
    joined = faq_scorer.join(job, [faq_scorer.predict([p])[0] for p in parts])
    np.testing.assert_allclose(joined, whole)
    pair = faq_scorer.join(job, [(np.arange(2), None), (np.arange(3), None)])
    assert pair[0].tolist() == [0, 1, 0, 1, 2] and pair[1] is None


async def test_v2_bodies_over_the_limits_are_refused_before_decoding(
    faq_app: Callable[..., Starlette], monkeypatch: pytest.MonkeyPatch
) -> None:
    import scoring_runtime.server.app as app_module

    decoded: list[int] = []
    real = app_module.decode_json

    def counting(body: bytes) -> Any:
        decoded.append(len(body))
        return real(body)

    monkeypatch.setattr(app_module, "decode_json", counting)
    infer = "/v2/models/faq-matcher/infer"
    many = b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [2000000], "data": [' \
        + b'"a",' * 1_999_999 + b'"a"]}]}'
    wide = b'{"inputs": [{"name": "question", "datatype": "INT64", "shape" : [ 1, 3000000 ], "data": [1]}]}'
    async with serving(faq_app(max_body_bytes=20_000_000, max_request_elements=1_000_000)) as c:
        r = await c.post(infer, content=many, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "SCORING_MAX_REQUEST_ROWS" in r.json()["error"]
        r = await c.post(infer, content=wide, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "3000000 values" in r.json()["error"]
        assert decoded == []
        # "shape" inside a string value is not a shape
        quoted = v2_questions('"shape": [99999999]')
        r = await c.post(infer, json=quoted)
        assert r.status_code == 200, r.text
        assert len(decoded) == 1


async def test_a_large_single_row_request_goes_to_the_batcher_not_the_lane(
    faq_app: Callable[..., Starlette], monkeypatch: pytest.MonkeyPatch
) -> None:
    # one row cannot be chunked: a big image (or a long question) keeps its batching
    app = faq_app(large_request_bytes=1024, max_batch_size=8)
    server = app.state.server
    lane: list[int] = []
    original = server._predict_large

    async def spy(job: Job, body_bytes: int) -> Any:
        lane.append(job.rows)
        return await original(job, body_bytes)

    monkeypatch.setattr(server, "_predict_large", spy)
    long_question = "how do I reset my password " * 60  # ~1.6 kB of body, one row
    async with serving(app) as c:
        one = await c.post("/score", json={"question": long_question, "top_k": 2})
        many = await c.post("/score", json={"questions": [long_question, "reset my password"], "top_k": 2})
        metrics = (await c.get("/metrics")).text
    assert one.status_code == 200 and many.status_code == 200
    assert lane == [2]  # only the two-row request took the lane
    assert "scoring_batch_rows_count 1.0" in metrics  # the one-row request was a batch of the batcher
