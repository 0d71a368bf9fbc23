"""Bad images through the real HTTP app: every one is a 4xx with a JSON message, never a 500."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.torch.helpers import encode, pattern_image, require_torch

require_torch()
pytestmark = [pytest.mark.torch, pytest.mark.timeout(120)]

import httpx  # noqa: E402

from scoring_runtime.server.app import create_app  # noqa: E402
from scoring_runtime.settings import RuntimeSettings  # noqa: E402


def png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def model_dir(make_model_dir: Callable[..., Path]) -> Path:
    return make_model_dir()


@pytest.fixture
async def client(model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = RuntimeSettings(model_dir=model_dir, max_body_bytes=2_000_000, log_format="text", warmup=False,
                               max_batch_size=4, max_batch_delay_ms=5)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for _ in range(600):
            r = await c.get("/v2/health/ready")
            if r.status_code == 200:
                break
            assert "failed" not in r.text, r.text
            await asyncio.sleep(0.05)
        yield c


async def test_bad_images_are_4xx_with_a_clear_message(client: httpx.AsyncClient) -> None:
    jpeg = encode(pattern_image(320, 240), "JPEG")
    cases: list[tuple[bytes, str, int, str]] = [
        (b"\xff\xd8\xff\xe0 this is not really a jpeg", "image/jpeg", 400, "not a valid JPEG"),
        (jpeg[: len(jpeg) // 2], "image/jpeg", 400, "could not be decoded"),  # pixels cut off
        (jpeg[:40], "image/jpeg", 400, "not a valid JPEG"),  # header cut off
        (b"", "image/png", 400, "empty"),
        (encode(pattern_image(16, 16), "GIF"), "image/png", 415, "GIF"),
        (encode(pattern_image(16, 16), "GIF"), "image/gif", 415, "image/gif"),
        (png_bomb(30_000, 30_000), "image/png", 413, "pixels"),
        (b"x" * 2_000_001, "image/jpeg", 413, "too large"),
    ]
    for body, ctype, status, message in cases:
        r = await client.post("/score", content=body, headers={"Content-Type": ctype})
        assert r.status_code == status, (ctype, message, r.text)
        assert message in r.json()["error"], r.json()


async def test_bad_json_and_v2_image_requests_are_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/score", json={"image": "%%%"})
    assert r.status_code == 400 and "base64" in r.json()["error"]
    r = await client.post("/score", json={"images": [base64.b64encode(b"GIF89a....").decode()]})
    assert r.status_code == 415 and "GIF" in r.json()["error"]
    r = await client.post("/v2/models/image-classifier/infer", json={"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"junk").decode()]}]})
    assert r.status_code == 400 and "not a valid JPEG" in r.json()["error"]
    r = await client.post("/v2/models/image-classifier/infer", json={"inputs": [
        {"name": "pixels", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0.0] * 12}]})
    assert r.status_code == 400 and "[n, 3, 224, 224]" in r.json()["error"]


async def test_concurrent_image_requests_are_batched_and_answered(client: httpx.AsyncClient) -> None:
    images = [encode(pattern_image(96 + 8 * i, 80, seed=i), "PNG") for i in range(4)]
    single = [(await client.post("/score", content=img, headers={"Content-Type": "image/png"})).json()
              for img in images]
    together = await asyncio.gather(*(client.post("/score", content=img, headers={"Content-Type": "image/png"})
                                      for img in images))
    for one, r in zip(single, together, strict=True):
        assert r.status_code == 200
        got, want = r.json()["predictions"][0], one["predictions"][0]
        assert [g["index"] for g in got] == [w["index"] for w in want]
    metrics = (await client.get("/metrics")).text
    assert "scoring_batch_rows_count" in metrics


async def test_v2_outputs_selects_and_orders_the_image_classifier_tensors(client: httpx.AsyncClient) -> None:
    image = base64.b64encode(encode(pattern_image(120, 90), "PNG")).decode()
    body: dict[str, object] = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}],
                               "parameters": {"top_k": 2}}
    full = (await client.post("/v2/models/image-classifier/infer", json=body)).json()
    assert [t["name"] for t in full["outputs"]] == ["label", "probability", "class_index"]
    r = await client.post("/v2/models/image-classifier/infer",
                          json=body | {"outputs": [{"name": "class_index"}, {"name": "label"}]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [full["outputs"][2], full["outputs"][0]]
    r = await client.post("/v2/models/image-classifier/infer", json=body | {"outputs": [{"name": "logits"}]})
    assert r.status_code == 400 and "unknown output(s) 'logits'" in r.json()["error"]
    metrics = (await client.get("/metrics")).text
    assert 'scoring_errors_total{reason="bad_request"} 1.0' in metrics


async def test_a_415_image_is_counted_as_unsupported_media_type(client: httpx.AsyncClient) -> None:
    r = await client.post("/score", content=encode(pattern_image(16, 16), "GIF"), headers={"Content-Type": "image/png"})
    assert r.status_code == 415
    metrics = (await client.get("/metrics")).text
    assert 'scoring_errors_total{reason="unsupported_media_type"} 1.0' in metrics
    assert 'reason="bad_request"' not in metrics
