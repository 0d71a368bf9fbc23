"""Regressions from issue 11: a non-UTF-8 key file on reload, and the trailing-slash redirect."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.types import Message

from scoring_runtime.server import auth
from tests.runtime.support import serving

KEY = "key-a-0123456789abcdef"


async def test_a_non_utf8_key_file_on_reload_keeps_the_old_keys_and_warns(
    faq_app: Callable[..., Starlette], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"{KEY}\n", encoding="utf-8")
    monkeypatch.setattr(auth, "RECHECK_S", 0.0)
    score = {"question": "how do I reset my password"}
    with caplog.at_level(logging.WARNING, logger="scoring_runtime"):
        async with serving(faq_app(api_key_file=key_file)) as c:
            key_file.write_bytes(b"\xff\xfe k\x00e\x00y\x00\n")  # UTF-16 written by mistake
            for _ in range(3):
                r = await c.post("/score", json=score, headers={"Authorization": f"Bearer {KEY}"})
                assert r.status_code == 200, r.text
            wrong = await c.post("/score", json=score, headers={"Authorization": "Bearer other-key-0123456789"})
            assert wrong.status_code == 401
    warnings = [r for r in caplog.records if r.getMessage() == "api_keys_reload_failed"]
    assert warnings, [r.getMessage() for r in caplog.records]
    fields = warnings[0].__dict__["fields"]
    assert "is not UTF-8 text" in fields["error"] and "keeping the 1 keys" in fields["action"]
    assert KEY not in caplog.text
    with pytest.raises(auth.ApiKeyError, match="not UTF-8"):  # at start-up: a one-line error, not a traceback
        auth.read_api_keys(key_file)


async def test_trailing_slash_redirect_is_relative_whatever_the_host(faq_app: Callable[..., Starlette]) -> None:
    async with serving(faq_app()) as c:
        r = await c.get("/v2/health/ready/?x=1", headers={"Host": "evil.example"})
        assert r.status_code == 307 and r.headers["location"] == "/v2/health/ready?x=1"
        r = await c.post("/score/", json={"question": "hi"}, headers={"Host": "evil.example"})
        assert r.status_code == 307 and r.headers["location"] == "/score"
        r = await c.get("/v2/models/faq-matcher/ready/")
        assert r.status_code == 307 and r.headers["location"] == "/v2/models/faq-matcher/ready"
        for path in ("/nothing/here/", "/v2/nothing/"):
            r = await c.get(path)
            assert r.status_code == 404 and "location" not in r.headers, (path, r.headers)
    # a protocol-relative target ("//host/") never becomes a Location (httpx cannot send one: ASGI directly)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    app = faq_app()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "//v2/health/ready/", "raw_path": b"//v2/health/ready/", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"evil.example")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    assert sent[0]["status"] == 404 and b"location" not in dict(sent[0]["headers"])
