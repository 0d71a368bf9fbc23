"""Batching is on by default where the flavour gains from it (the FAQ matcher), off elsewhere, and the
settings always win (SCORING_MAX_BATCH_SIZE=1 turns it off)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from scoring_runtime.batching import AdaptiveBatcher
from scoring_runtime.flavours import DEFAULT_BATCHING, Batching, Scorer, batching_for
from scoring_runtime.server.dispatch import DirectDispatcher, make_dispatcher
from scoring_runtime.settings import RuntimeSettings


def test_faq_matcher_batches_by_default(faq_dir: Path, faq_scorer: Scorer) -> None:
    settings = RuntimeSettings(model_dir=faq_dir)
    assert settings.max_batch_size is None and settings.batching is None
    assert batching_for(faq_scorer, settings) == DEFAULT_BATCHING["sklearn-faq"]
    d = make_dispatcher(faq_scorer, settings, None, CollectorRegistry())
    assert isinstance(d, AdaptiveBatcher)
    assert d.config.max_batch_rows == DEFAULT_BATCHING["sklearn-faq"].max_batch_size > 1
    assert d.config.max_delay_s == pytest.approx(DEFAULT_BATCHING["sklearn-faq"].max_batch_delay_ms / 1000)


@pytest.mark.parametrize(("overrides", "want"), [
    ({"max_batch_size": 1}, Batching(1, 2.0, 1)),  # explicit off wins over the flavour default
    ({"max_batch_size": 8}, Batching(8, 2.0, 1)),  # size alone: the default delay
    ({"max_batch_delay_ms": 7.5}, Batching(DEFAULT_BATCHING["sklearn-faq"].max_batch_size, 7.5, 1)),
    ({"max_batch_size": 64, "max_queue_rows": 64}, Batching(64, 2.0, 1)),
])
def test_settings_override_the_flavour_default(faq_dir: Path, faq_scorer: Scorer, overrides: dict[str, Any],
                                               want: Batching) -> None:
    assert batching_for(faq_scorer, RuntimeSettings(model_dir=faq_dir, **overrides)) == want


def test_explicit_batch_size_one_serves_without_a_batcher(faq_dir: Path, faq_scorer: Scorer) -> None:
    d = make_dispatcher(faq_scorer, RuntimeSettings(model_dir=faq_dir, max_batch_size=1), None)
    assert isinstance(d, DirectDispatcher)


def test_default_batch_never_exceeds_a_smaller_queue(faq_dir: Path, faq_scorer: Scorer) -> None:
    b = batching_for(faq_scorer, RuntimeSettings(model_dir=faq_dir, max_queue_rows=4))
    assert b.max_batch_size == 4


class _Plain:
    """A duck-typed scorer (no Scorer base, no batching_defaults): batching stays off."""

    def predict(self, jobs: list[Any]) -> list[Any]:
        return [None for _ in jobs]


class _OwnDefault(_Plain):
    def batching_defaults(self) -> Batching:
        return Batching(max_batch_size=4, max_batch_delay_ms=9.0)


def test_flavours_without_a_default_do_not_batch(faq_dir: Path) -> None:
    settings = RuntimeSettings(model_dir=faq_dir)
    assert batching_for(_Plain(), settings).max_batch_size == 1  # type: ignore[arg-type]
    assert isinstance(make_dispatcher(_Plain(), settings, None), DirectDispatcher)  # type: ignore[arg-type]


def test_a_scorer_may_choose_its_own_default(faq_dir: Path) -> None:
    assert batching_for(_OwnDefault(), RuntimeSettings(model_dir=faq_dir)) == Batching(4, 9.0)  # type: ignore[arg-type]
