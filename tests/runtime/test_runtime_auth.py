"""API keys: 401 without or with a wrong key, 200 with any listed key; health and metrics stay open."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.applications import Starlette

from scoring_runtime.server import auth
from tests.runtime.support import serving, v2_questions

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    f = tmp_path / "keys"
    f.write_text(f"# rotation: both keys valid\n{KEY_A}\n\n  {KEY_B}  \n", encoding="utf-8")
    return f


async def test_protected_endpoints_need_a_listed_key(
    faq_app: Callable[..., Starlette], key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    score = {"question": "how do I reset my password"}
    async with serving(faq_app(api_key_file=key_file)) as c:
        none = await c.post("/score", json=score)
        assert none.status_code == 401
        assert none.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in none.json()["error"]

        wrong = await c.post("/score", json=score, headers={"Authorization": "Bearer not-a-key"})
        assert wrong.status_code == 401
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]

        basic = await c.post("/score", json=score, headers={"Authorization": f"Basic {KEY_A}"})
        assert basic.status_code == 401

        for key in (KEY_A, KEY_B):  # every key in the file works (rotation)
            ok = await c.post("/score", json=score, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200, ok.text
            v2 = await c.post("/v2/models/faq-matcher/infer", json=v2_questions("reset password"),
                              headers={"authorization": f"bearer {key}"})
            assert v2.status_code == 200

        for path in ("/v2/models/faq-matcher", "/v2/models/faq-matcher/ready"):
            assert (await c.get(path)).status_code == 401
        assert (await c.post("/v2/models/faq-matcher/infer", json=v2_questions("x"))).status_code == 401

        # health, server metadata and metrics stay open for probes and scrapers
        for path in ("/", "/v2", "/v2/health/live", "/v2/health/ready", "/metrics"):
            assert (await c.get(path)).status_code == 200, path
    assert KEY_A not in caplog.text and KEY_B not in caplog.text and "not-a-key" not in caplog.text


async def test_key_file_is_reloaded_when_the_secret_changes(
    faq_app: Callable[..., Starlette], key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "RECHECK_S", 0.0)
    score = {"question": "how do I reset my password"}
    async with serving(faq_app(api_key_file=key_file)) as c:
        assert (await c.post("/score", json=score, headers={"Authorization": f"Bearer {KEY_A}"})).status_code == 200
        key_file.write_text("key-c-new-0123456789abcdef\n", encoding="utf-8")
        old = await c.post("/score", json=score, headers={"Authorization": f"Bearer {KEY_A}"})
        new = await c.post("/score", json=score, headers={"Authorization": "Bearer key-c-new-0123456789abcdef"})
        assert (old.status_code, new.status_code) == (401, 200)
        key_file.write_text("", encoding="utf-8")  # a broken update keeps the last good keys
        kept = await c.post("/score", json=score, headers={"Authorization": "Bearer key-c-new-0123456789abcdef"})
        assert kept.status_code == 200


def test_an_empty_key_file_is_an_error_not_open_access(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# no keys yet\n\n", encoding="utf-8")
    with pytest.raises(auth.ApiKeyError, match="holds no keys"):
        auth.read_api_keys(f)
