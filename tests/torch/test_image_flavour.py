"""The image-classification flavour in-process: request codecs, top-k, and batching of mixed requests."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.torch.helpers import encode, pattern_image, require_torch

require_torch()
pytestmark = pytest.mark.torch

from scoring_runtime.flavours import load_scorer  # noqa: E402
from scoring_runtime.flavours.errors import BadRequest  # noqa: E402
from scoring_runtime.flavours.torch_vision import ImageClassifier  # noqa: E402
from scoring_runtime.flavours.v2 import parse_request  # noqa: E402
from scoring_runtime.imaging import ImageLimits, ImageTooLarge, Preprocess, decode_image, preprocess  # noqa: E402
from scoring_runtime.settings import RuntimeSettings  # noqa: E402


@pytest.fixture(scope="module")
def scorer(make_model_dir: Callable[..., Path]) -> ImageClassifier:
    s = load_scorer(RuntimeSettings(model_dir=make_model_dir(), max_batch_size=4))
    assert isinstance(s, ImageClassifier)
    return s


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_raw_base64_and_v2_requests_give_the_same_answer(scorer: ImageClassifier, jpeg: bytes) -> None:
    raw = scorer.parse_score(jpeg, "image/jpeg")
    js = scorer.parse_score(orjson.dumps({"image": b64(jpeg)}), "application/json; charset=utf-8")
    v2_bytes = scorer.parse_v2(parse_request(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(jpeg)]}]}))
    pixels = preprocess(decode_image(jpeg, ImageLimits()), Preprocess())[None]
    v2_fp32 = scorer.parse_v2(parse_request({"inputs": [
        {"name": "pixels", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": pixels.ravel().tolist()}]}))
    for job in (js, v2_bytes, v2_fp32):
        assert job.rows == 1
        np.testing.assert_allclose(job.data, raw.data, atol=1e-6)
    answers = [scorer.render_score(r, raw) for r in scorer.predict([raw, js, v2_bytes, v2_fp32])]
    assert all(a == answers[0] for a in answers)
    top = answers[0]["predictions"][0]
    assert len(top) == 5
    assert [t["label"] for t in top] == [scorer.labels[t["index"]] for t in top]
    assert all(top[i]["probability"] >= top[i + 1]["probability"] for i in range(4))


def test_each_request_in_a_batch_gets_its_own_rows_and_top_k(scorer: ImageClassifier) -> None:
    images = [encode(pattern_image(120 + 17 * i, 100 + 9 * i, seed=i), "PNG") for i in range(4)]
    single = [scorer.predict([scorer.parse_score(img, "image/png")])[0] for img in images]
    jobs = [
        scorer.parse_score(orjson.dumps({"images": [b64(i) for i in images[0:2]], "top_k": 2}), "application/json"),
        scorer.parse_score(images[2], "image/png"),
        scorer.parse_score(orjson.dumps({"images": [b64(images[3])], "top_k": 7}), "application/json"),
    ]
    assert [j.rows for j in jobs] == [2, 1, 1]
    batched = scorer.predict(jobs)  # one model call for four images
    expected = [(range(0, 2), 2), (range(2, 3), 5), (range(3, 4), 7)]
    for (rows, k), (probs, idx) in zip(expected, batched, strict=True):
        assert probs.shape == idx.shape == (len(rows), k)
        for r, img_no in enumerate(rows):
            p1, i1 = single[img_no]
            np.testing.assert_array_equal(idx[r, : min(k, 5)], i1[0, : min(k, 5)])
            np.testing.assert_allclose(probs[r, : min(k, 5)], p1[0, : min(k, 5)], rtol=1e-4, atol=1e-6)
    v2 = {t.name: t for t in scorer.render_v2(batched[2], jobs[2])}
    assert v2["label"].shape == [1, 7] and v2["probability"].datatype == "FP32"
    assert v2["label"].data[0, 0] == scorer.labels[int(v2["class_index"].data[0, 0])]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"image": "x", "images": ["x"]}, "send"),
        ({"picture": "x"}, "send"),
        ({"image": "@@@"}, "not valid base64"),
        ({"images": "abc"}, "must be a list"),
        ({"images": []}, "no images"),
        ({"image": "aGVsbG8=", "top_k": 0}, "top_k must be an integer from 1 to 1000"),
        ({"image": "aGVsbG8=", "top_k": "3"}, "top_k must be an integer"),
        ({"image": "aGVsbG8=", "extra": 1}, "unknown fields"),
        ({"image": "aGVsbG8="}, "not a valid JPEG, PNG or WEBP"),
    ],
)
def test_bad_json_requests_say_what_is_wrong(scorer: ImageClassifier, body: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        scorer.parse_score(orjson.dumps(body), "application/json")


def test_too_many_or_too_big_images_are_refused_before_decoding(scorer: ImageClassifier, jpeg: bytes) -> None:
    with pytest.raises(BadRequest, match="over the limit of 64"):
        scorer.parse_score(orjson.dumps({"images": [b64(jpeg)] * 65}), "application/json")
    huge = "A" * (scorer.limits.max_bytes * 2)
    with pytest.raises(ImageTooLarge):
        scorer.parse_score(orjson.dumps({"image": huge}), "application/json")


def test_bad_v2_requests_say_what_is_wrong(scorer: ImageClassifier) -> None:
    def v2(*inputs: dict[str, object], **params: object) -> None:
        scorer.parse_v2(parse_request({"inputs": list(inputs), "parameters": params}))

    with pytest.raises(BadRequest, match=r"shape \[n, 3, 224, 224\]"):
        v2({"name": "pixels", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192})
    with pytest.raises(BadRequest, match="unknown input 'input0'"):
        v2({"name": "input0", "datatype": "FP32", "shape": [1], "data": [0.0]})
    with pytest.raises(BadRequest, match="exactly one input"):
        v2({"name": "image", "datatype": "BYTES", "shape": [1], "data": ["a"]},
           {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["a"]})
    with pytest.raises(BadRequest, match="must be BYTES"):
        v2({"name": "image", "datatype": "INT32", "shape": [1], "data": [1]})
    with pytest.raises(BadRequest, match=r"parameters\.top_k"):
        v2({"name": "image", "datatype": "BYTES", "shape": [1], "data": ["a"]}, top_k=5000)


def test_metadata_describes_both_inputs(scorer: ImageClassifier) -> None:
    meta = scorer.v2_metadata()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"image": "BYTES", "pixels": "FP32"}
    assert meta["inputs"][1]["shape"] == [-1, 3, 224, 224]
    assert meta["parameters"]["device"] == "cpu" and meta["parameters"]["classes"] == 1000


def test_cpu_batches_by_default_and_warms_every_batch_size_it_may_form(
    make_model_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import CollectorRegistry

    from scoring_runtime.batching import AdaptiveBatcher
    from scoring_runtime.flavours import batching_for
    from scoring_runtime.flavours.torch_vision import CPU_BATCHING
    from scoring_runtime.server.dispatch import make_dispatcher

    monkeypatch.setenv("SCORING_DEVICE", "cpu")
    settings = RuntimeSettings(model_dir=make_model_dir())
    s = load_scorer(settings)
    assert isinstance(s, ImageClassifier)
    assert batching_for(s, settings) == CPU_BATCHING and CPU_BATCHING.max_batch_size > 1
    d = make_dispatcher(s, settings, None, CollectorRegistry())
    assert isinstance(d, AdaptiveBatcher) and d.config.max_batch_rows == CPU_BATCHING.max_batch_size
    seen: list[int] = []
    infer = s.infer

    def counting(pixels: np.ndarray[Any, Any], k: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        seen.append(len(pixels))
        return infer(pixels, k)

    monkeypatch.setattr(s, "infer", counting)
    s.warmup()
    assert sorted(seen) == list(range(1, CPU_BATCHING.max_batch_size + 1))
    # an explicit batch size wins, and the warm-up follows it
    seen.clear()
    off = load_scorer(RuntimeSettings(model_dir=make_model_dir(), max_batch_size=1))
    monkeypatch.setattr(off, "infer", lambda pixels, k: seen.append(len(pixels)))
    off.warmup()
    assert seen == [1]
    # a large batch: every size up to 8 (the ones a light load forms), and the maximum
    seen.clear()
    big = load_scorer(RuntimeSettings(model_dir=make_model_dir(), max_batch_size=12))
    monkeypatch.setattr(big, "infer", lambda pixels, k: seen.append(len(pixels)))
    big.warmup()
    assert sorted(seen) == [*range(1, 9), 12]
