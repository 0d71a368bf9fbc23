"""Errors that are not the server's fault are counted as what they are, and never logged as ERROR."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.types import Message

from scoring_runtime.flavours import Job, Scorer, UnsupportedMediaType
from tests.runtime.support import serving

pytestmark = pytest.mark.timeout(60)


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_client_disconnect_mid_upload_is_a_499_not_an_error(
    faq_app: Callable[..., Starlette], caplog: pytest.LogCaptureFixture
) -> None:
    app = faq_app()
    async with serving(app) as c:
        incoming: list[Message] = [
            {"type": "http.request", "body": b'{"question": "how do I res', "more_body": True},
            {"type": "http.disconnect"},  # the client went away before the rest of the body
        ]
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/score", "raw_path": b"/score", "root_path": "", "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"200")],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        }
        with caplog.at_level(logging.DEBUG, logger="scoring_runtime"):
            await app(scope, receive, send)
        metrics = (await c.get("/metrics")).text
    assert sent[0]["status"] == 499
    assert sample(metrics, "scoring_errors_total", reason="client_disconnect") == 1
    assert sample(metrics, "scoring_errors_total", reason="internal") == 0
    assert sample(metrics, "scoring_requests_total", endpoint="/score", code="499") == 1
    assert sample(metrics, "scoring_requests_total", endpoint="/score", code="500") == 0
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [(r.levelname, r.getMessage()) for r in errors]


async def test_a_415_from_a_flavour_is_counted_as_unsupported_media_type(
    faq_app: Callable[..., Starlette], faq_scorer: Scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gif(body: bytes, content_type: str) -> Job:
        raise UnsupportedMediaType("the body is a GIF image; send JPEG, PNG or WEBP")

    monkeypatch.setattr(faq_scorer, "parse_score", gif)
    async with serving(faq_app()) as c:
        r = await c.post("/score", content=b"GIF89a", headers={"content-type": "application/json"})
        metrics = (await c.get("/metrics")).text
    assert r.status_code == 415 and "GIF" in r.json()["error"]
    assert sample(metrics, "scoring_errors_total", reason="unsupported_media_type") == 1
    assert sample(metrics, "scoring_errors_total", reason="bad_request") == 0
