"""With batching on, one client's bad input fails only that client's request (400), not its batch.

A real scikit-learn pipeline (OneHotEncoder + LogisticRegression) served by the tabular flavour:
the encoder raises ValueError for a category it never saw, which is the client's fault.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from scoring_runtime.flavours import BadRequest, Job, load_scorer
from scoring_runtime.flavours.sklearn_io import dump_skops
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.server.app import create_app
from scoring_runtime.settings import RuntimeSettings
from tests.runtime.support import serving

pytestmark = pytest.mark.timeout(60)


def categorical_model(tmp: Path) -> tuple[Path, Any]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(90, 2)).astype(np.float64)  # categories 0, 1, 2 in both columns
    y = (x[:, 0] == 1).astype(int)
    est = make_pipeline(OneHotEncoder(handle_unknown="error"), LogisticRegression()).fit(x, y)
    trusted = dump_skops(est, tmp / "model.skops")
    flavour = {"kind": "sklearn-tabular", "format": "skops", "file": "model.skops", "trusted_types": trusted}
    m = ModelManifest(name="cat", version=1, framework="sklearn", task="tabular", flavour=flavour)
    (tmp / "model.json").write_text(m.to_json(), encoding="utf-8")
    return tmp, est


def test_estimator_value_error_for_one_request_is_a_bad_request(tmp_path: Path) -> None:
    d, _ = categorical_model(tmp_path)
    scorer = load_scorer(RuntimeSettings(model_dir=d))
    with pytest.raises(BadRequest, match=r"the model rejected the input: .*unknown categor"):
        scorer.predict([Job(rows=1, data=np.array([[7.0, 0.0]]))])
    # in a batch it stays a plain error: the batcher retries each request alone to find whose it is
    with pytest.raises(ValueError, match="unknown categor") as e:
        scorer.predict([Job(rows=1, data=np.array([[0.0, 0.0]])), Job(rows=1, data=np.array([[7.0, 0.0]]))])
    assert not isinstance(e.value, BadRequest)


async def test_bad_input_in_a_batch_fails_only_its_own_request(tmp_path: Path) -> None:
    d, est = categorical_model(tmp_path)
    settings = RuntimeSettings(model_dir=d, max_batch_size=8, max_batch_delay_ms=50, warmup=False, log_format="text")
    scorer = load_scorer(settings)
    gate, entered = threading.Event(), threading.Event()
    batches: list[list[int]] = []
    real_predict = scorer.predict

    def gated_predict(jobs: list[Job]) -> list[Any]:
        batches.append([int(j.data[0, 0]) for j in jobs])
        entered.set()
        gate.wait(10)
        return real_predict(jobs)

    scorer.predict = gated_predict  # type: ignore[method-assign]
    app = create_app(settings, loader=lambda _s: scorer)
    async with serving(app) as c:
        # hold the model busy with one request so the next ones queue up and form one batch
        first = asyncio.ensure_future(c.post("/score", json={"data": [[2, 2]]}))
        while not entered.is_set():
            await asyncio.sleep(0.005)
        rows = [[0, 1], [7, 0], [1, 2], [2, 0]]  # [7, 0]: a category the model never saw
        pending = [asyncio.ensure_future(c.post("/score", json={"data": [r]})) for r in rows]
        for _ in range(200):  # until all four are parsed and queued
            if app.state.server.dispatcher.queued_rows >= 4:
                break
            await asyncio.sleep(0.01)
        gate.set()
        responses = await asyncio.gather(first, *pending)
    assert sorted(batches[1]) == [0, 1, 2, 7], batches  # the bad row shared a batch with three good ones
    for r, row in zip(responses[1:], rows, strict=True):
        if row[0] == 7:
            assert r.status_code == 400, r.text
            assert "unknown categor" in r.json()["error"], r.json()
        else:
            assert r.status_code == 200, r.text
            assert r.json()["predictions"] == est.predict(np.array([row], dtype=np.float64)).tolist()
    assert responses[0].status_code == 200
