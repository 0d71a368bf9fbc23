"""End to end, as a user does it: register.py -> `scoring fetch` -> `scoring serve` (a real process) -> HTTP.

Uses resnet18 with random weights to stay fast; the example defaults to resnet152.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.runtime.support import SCORING, scoring_serve
from tests.torch.helpers import REGISTER_PY, TEST_ARCH, encode, pattern_image, require_torch

require_torch()
pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(300)]

import httpx  # noqa: E402

from scoring_runtime.imaging import ImageLimits, Preprocess, decode_image, preprocess  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, register.py's stderr) of `scoring serve` on a freshly registered and fetched model."""
    tmp = tmp_path_factory.mktemp("roundtrip")
    registry, dest = tmp / "registry", tmp / "model"
    reg = subprocess.run([sys.executable, str(REGISTER_PY), "--registry", str(registry), "--arch", TEST_ARCH],
                         capture_output=True, text=True, timeout=180)
    assert reg.returncode == 0, reg.stderr
    assert reg.stdout.strip() == "1"
    fetch = subprocess.run([*SCORING, "fetch", "--registry", str(registry), "--name", "image-classifier",
                            "--dest", str(dest)], capture_output=True, text=True, timeout=60)
    assert fetch.returncode == 0, fetch.stderr
    env = {**os.environ, "SCORING_TORCH_THREADS": "1"}
    with scoring_serve(dest, "--max-batch-size", "4", "--max-batch-delay-ms", "5", "--log-format", "text",
                       log=tmp / "serve.log", env=env, ready_timeout=180) as server:
        yield server.url, reg.stderr


def test_register_warns_loudly_about_random_weights(served: tuple[str, str]) -> None:
    url, stderr = served
    assert "MEANINGLESS" in stderr
    meta = httpx.get(url + "/v2/models/image-classifier", timeout=10).json()
    assert meta["platform"] == "pytorch"
    assert {i["name"] for i in meta["inputs"]} == {"image", "pixels"}


def test_jpeg_base64_and_v2_give_the_same_top_k(served: tuple[str, str]) -> None:
    url, _ = served
    jpeg = encode(pattern_image(300, 200, seed=4), "JPEG", quality=92)
    other = encode(pattern_image(180, 260, seed=5), "PNG")
    with httpx.Client(base_url=url, timeout=60) as c:
        raw = c.post("/score", content=jpeg, headers={"Content-Type": "image/jpeg"})
        assert raw.status_code == 200, raw.text
        top5 = raw.json()["predictions"][0]
        assert len(top5) == 5 and {"label", "index", "probability"} <= set(top5[0])

        js = c.post("/score", json={"images": [base64.b64encode(b).decode() for b in (jpeg, other)], "top_k": 3})
        assert js.status_code == 200, js.text
        preds = js.json()["predictions"]
        assert len(preds) == 2 and len(preds[0]) == 3
        assert [p["index"] for p in preds[0]] == [p["index"] for p in top5[:3]]

        pixels = preprocess(decode_image(jpeg, ImageLimits()), Preprocess())
        v2 = c.post("/v2/models/image-classifier/infer", json={
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 224, 224],
                        "data": pixels.ravel().tolist()}],
            "parameters": {"top_k": 5},
        })
        assert v2.status_code == 200, v2.text
        out = {o["name"]: o for o in v2.json()["outputs"]}
        assert out["class_index"]["shape"] == [1, 5]
        assert out["class_index"]["data"] == [p["index"] for p in top5]
        assert out["label"]["data"] == [p["label"] for p in top5]
        for got, want in zip(out["probability"]["data"], top5, strict=True):
            assert got == pytest.approx(want["probability"], abs=1e-5)

        b64 = base64.b64encode(other).decode()
        v2b = c.post("/v2/models/image-classifier/infer", json={
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}],
            "parameters": {"top_k": 3},
        })
        assert v2b.status_code == 200, v2b.text
        idx = {o["name"]: o for o in v2b.json()["outputs"]}["class_index"]["data"]
        assert idx == [p["index"] for p in preds[1]]


def test_bad_input_over_the_wire_is_a_4xx(served: tuple[str, str]) -> None:
    url, _ = served
    r = httpx.post(url + "/score", content=b"not an image", headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 400 and "not a valid JPEG, PNG or WEBP" in r.json()["error"]
    r = httpx.post(url + "/score", content=b"GIF89a...", headers={"Content-Type": "image/gif"}, timeout=30)
    assert r.status_code == 415
