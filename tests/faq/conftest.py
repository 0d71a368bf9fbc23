from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from scoring_runtime.flavours import Scorer, load_scorer
from scoring_runtime.server.app import create_app
from tests.runtime import support


@pytest.fixture(autouse=True)
def _no_scoring_env(monkeypatch: pytest.MonkeyPatch) -> None:
    support.clean_env(monkeypatch)


@pytest.fixture(scope="session")
def faq_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(registry root, fetched model dir) of the sample FAQ model, trained once per session."""
    return support.build_faq_model(tmp_path_factory.mktemp("faq"))


@pytest.fixture(scope="session")
def faq_dir(faq_model: tuple[Path, Path]) -> Path:
    return faq_model[1]


@pytest.fixture(scope="session")
def faq_scorer(faq_dir: Path) -> Scorer:
    """Loaded once: apps in tests reuse it through their loader, so each test does not reload it."""
    return load_scorer(support.settings(faq_dir))


@pytest.fixture
def faq_app(faq_dir: Path, faq_scorer: Scorer) -> Callable[..., Starlette]:
    """Build an app serving the FAQ model with the given settings overrides."""

    def make(**overrides: Any) -> Starlette:
        return create_app(support.settings(faq_dir, **overrides), loader=lambda _s: faq_scorer)

    return make
