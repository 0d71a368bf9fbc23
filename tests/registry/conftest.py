from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_scoring_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SCORING_"):
            monkeypatch.delenv(key)


@pytest.fixture
def make_model(tmp_path: Path) -> Callable[..., Path]:
    """A source model directory (artifacts + source model.json) ready for `register`."""
    count = 0

    def make(size: int = 1000, task: str = "tabular", content: bytes | None = None) -> Path:
        nonlocal count
        count += 1
        d = tmp_path / f"src-{count}"
        (d / "sub").mkdir(parents=True)
        (d / "model.skops").write_bytes(content if content is not None else bytes(range(256)) * (size // 256 + 1))
        (d / "sub" / "vocab.txt").write_text(f"model {count}\n", encoding="utf-8")
        (d / "model.json").write_text(json.dumps({"framework": "sklearn", "task": task}), encoding="utf-8")
        return d

    return make
