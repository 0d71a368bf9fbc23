"""Every endpoint of the server, in process (httpx + ASGITransport), serving the sample FAQ model."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from scoring_runtime.flavours import Scorer
from tests.runtime.support import serving, v2_questions

PASSWORD_Q = "I forgot my console password, how can I get a new one?"


async def test_health_and_server_metadata(faq_app: Callable[..., Starlette]) -> None:
    async with serving(faq_app()) as c:
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        assert (await c.get("/v2/health/ready")).json() == {"ready": True}
        root = await c.get("/")
        assert root.status_code == 200
        assert root.json() == {"status": "ready", "model": "faq-matcher", "version": 1}
        meta = (await c.get("/v2")).json()
        assert meta["name"] == "scoring-runtime" and meta["version"]


async def test_model_metadata_and_ready(faq_app: Callable[..., Starlette]) -> None:
    async with serving(faq_app()) as c:
        for path in ("/v2/models/faq-matcher", "/v2/models/faq-matcher/versions/1"):
            meta = (await c.get(path)).json()
            assert meta["name"] == "faq-matcher"
            assert meta["versions"] == ["1"]
            assert meta["platform"] == "sklearn"
            assert meta["inputs"] == [{"name": "question", "datatype": "BYTES", "shape": [-1]}]
            assert [o["name"] for o in meta["outputs"]] == ["id", "score", "question", "answer", "no_match"]
        for path in ("/v2/models/faq-matcher/ready", "/v2/models/faq-matcher/versions/1/ready"):
            r = await c.get(path)
            assert r.status_code == 200 and r.json() == {"name": "faq-matcher", "ready": True}


async def test_v2_infer_returns_ranked_tensors(faq_app: Callable[..., Starlette]) -> None:
    async with serving(faq_app()) as c:
        # min_score 0: every top_k slot filled (the default is the model's no-match threshold)
        body = v2_questions(PASSWORD_Q, "ssh connection times out", top_k=3, min_score=0) | {"id": "req-42"}
        r = await c.post("/v2/models/faq-matcher/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "req-42"
        assert out["model_name"] == "faq-matcher" and out["model_version"] == "1"
        tensors = {t["name"]: t for t in out["outputs"]}
        assert set(tensors) == {"id", "score", "question", "answer", "no_match"}
        assert tensors["no_match"] == {"name": "no_match", "datatype": "BOOL", "shape": [2], "data": [False, False]}
        for t in (tensors[n] for n in ("id", "score", "question", "answer")):
            assert t["shape"] == [2, 3]
            assert len(t["data"]) == 6
        assert tensors["score"]["datatype"] == "FP32"
        assert tensors["id"]["data"][0] == "101"  # the password-reset FAQ, best first
        scores = tensors["score"]["data"]
        assert scores[0] >= scores[1] >= scores[2] and scores[3] >= scores[4] >= scores[5]
        assert tensors["id"]["data"][3] in ("110", "111")  # SSH questions


async def test_v2_infer_versioned_path_nested_data_and_output_selection(faq_app: Callable[..., Starlette]) -> None:
    async with serving(faq_app()) as c:
        body = {
            "inputs": [{"name": "question", "datatype": "BYTES", "shape": [2, 1],
                        "data": [["how do I delete my account"], ["download last month's invoice"]],
                        "parameters": {"top_k": 1}}],
            "outputs": [{"name": "id"}],
        }
        r = await c.post("/v2/models/faq-matcher/versions/1/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert "id" not in out  # no request id sent, none echoed
        assert [t["name"] for t in out["outputs"]] == ["id"]
        assert out["outputs"][0]["shape"] == [2, 1]
        assert out["outputs"][0]["data"] == ["103", "106"]


async def test_score_single_list_reference_and_plain_text(faq_app: Callable[..., Starlette]) -> None:
    async with serving(faq_app()) as c:
        single = (await c.post("/score", json={"question": PASSWORD_Q, "top_k": 2, "min_score": 0})).json()
        assert single["question"] == PASSWORD_Q
        assert len(single["matches"]) == 2
        best = single["matches"][0]
        assert best["id"] == 101 and "Forgot password" in best["answer"]
        assert set(best) == {"id", "question", "answer", "score"} and single["no_match"] is False
        assert 0.0 <= single["matches"][1]["score"] <= best["score"] <= 1.0

        many = (await c.post("/score", json={"questions": [PASSWORD_Q, "delete my account"], "min_score": 0})).json()
        assert [r["matches"][0]["id"] for r in many["results"]] == [101, 103]
        assert all(len(r["matches"]) == 3 for r in many["results"])  # default top_k from the manifest

        ref = (await c.post("/score", json={"input": PASSWORD_Q})).json()
        assert ref["matches"][0]["id"] == 101

        plain = {"content-type": "text/plain; charset=utf-8"}
        text = await c.post("/score", content=PASSWORD_Q.encode(), headers=plain)
        assert text.status_code == 200 and text.json()["matches"][0]["id"] == 101


async def test_top_k_is_capped_at_the_number_of_faq_entries(faq_app: Callable[..., Starlette]) -> None:
    async with serving(faq_app()) as c:
        r = await c.post("/score", json={"question": PASSWORD_Q, "top_k": 1000, "min_score": 0})
        assert r.status_code == 200
        ids = [m["id"] for m in r.json()["matches"]]
        assert len(ids) == 40 and len(set(ids)) == 40


async def test_metrics_change_after_requests(faq_app: Callable[..., Starlette]) -> None:
    def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    async with serving(faq_app()) as c:
        before = samples((await c.get("/metrics")).text)
        for _ in range(3):
            assert (await c.post("/score", json={"question": PASSWORD_Q})).status_code == 200
        assert (await c.post("/score", content=b"{oops")).status_code == 400
        r = await c.get("/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        after = samples(r.text)

    ok = ("scoring_requests_total", (("code", "200"), ("endpoint", "/score"), ("method", "POST")))
    bad = ("scoring_requests_total", (("code", "400"), ("endpoint", "/score"), ("method", "POST")))
    assert after[ok] - before.get(ok, 0.0) == 3
    assert after[bad] - before.get(bad, 0.0) == 1
    count = ("scoring_request_duration_seconds_count", (("endpoint", "/score"),))
    assert after[count] - before.get(count, 0.0) == 4
    assert after[("scoring_model_seconds_count", (("protocol", "score"),))] == 3
    assert after[("scoring_errors_total", (("reason", "bad_request"),))] == 1
    assert after[("scoring_model_ready", ())] == 1
    assert after[("scoring_model_load_seconds", ())] > 0
    assert ("scoring_model_warmup_seconds", ()) in after
    assert after[("scoring_model_info", (("flavour", "sklearn-faq"), ("name", "faq-matcher"), ("version", "1")))] == 1
    # the /metrics request that produced the text is itself in flight
    assert after[("scoring_requests_in_flight", ())] == 1


async def test_batching_dispatcher_scores_concurrent_requests_correctly(
    faq_app: Callable[..., Starlette], faq_scorer: Scorer
) -> None:
    import asyncio

    questions = [PASSWORD_Q, "delete my account", "download last month's invoice", "ssh connection times out"]
    # what each question gets when scored alone, without batching
    alone = [faq_scorer.render_score(faq_scorer.predict([j])[0], j)
             for j in (faq_scorer.parse_score(orjson.dumps({"question": q}), "application/json") for q in questions)]
    async with serving(faq_app(max_batch_size=8, max_batch_delay_ms=20)) as c:
        rs = await asyncio.gather(*(c.post("/score", json={"question": q}) for q in questions * 4))
        text = (await c.get("/metrics")).text
    assert [r.json() for r in rs] == alone * 4
    # the requests were really combined: some model call held more than one request
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    batch = {s.labels.get("le"): s.value for s in fams["scoring_batch_requests"].samples
             if s.name.endswith("_bucket")}
    assert batch["1.0"] < batch["+Inf"]
