"""Safe loading: skops with an allow-list; pickle only on explicit opt-in; the tabular flavour end to end."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from scoring_runtime.flavours import ModelLoadError, load_scorer
from scoring_runtime.flavours.sklearn_io import dump_skops, is_allowed_type
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.server.app import create_app
from tests.runtime.support import serving, settings


def iris_like() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    return x, y


def model_dir(tmp: Path, estimator: Any, fmt: str, trusted: list[str] | None = None) -> Path:
    """A served model directory (as `scoring fetch` writes it) for a tabular estimator."""
    d = tmp / f"model-{fmt}"
    d.mkdir()
    name = {"skops": "model.skops", "pickle": "model.pkl", "joblib": "model.joblib"}[fmt]
    if fmt == "skops":
        recorded = dump_skops(estimator, d / name)
        trusted = recorded if trusted is None else trusted
    elif fmt == "pickle":
        (d / name).write_bytes(pickle.dumps(estimator))
    else:
        import joblib

        joblib.dump(estimator, d / name)
    flavour: dict[str, Any] = {"kind": "sklearn-tabular", "format": fmt, "file": name}
    if trusted is not None:
        flavour["trusted_types"] = trusted
    m = ModelManifest(name="tab", version=3, framework="sklearn", task="tabular", flavour=flavour)
    (d / "model.json").write_text(m.to_json(), encoding="utf-8")
    return d


def test_pickle_is_refused_without_opt_in(tmp_path: Path) -> None:
    x, y = iris_like()
    d = model_dir(tmp_path, LogisticRegression().fit(x, y), "pickle")
    with pytest.raises(ModelLoadError, match=r"--allow-pickle \(SCORING_ALLOW_PICKLE=1\)"):
        load_scorer(settings(d))


def test_pickle_and_joblib_load_with_opt_in_and_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x, y = iris_like()
    est = LogisticRegression().fit(x, y)
    for fmt in ("pickle", "joblib"):
        d = model_dir(tmp_path, est, fmt)
        scorer = load_scorer(settings(d, allow_pickle=True))
        job = scorer.parse_score(json.dumps({"data": x[:5].tolist()}).encode(), "application/json")
        assert scorer.render_score(scorer.predict([job])[0], job)["predictions"] == est.predict(x[:5]).tolist()
    assert "UNSAFE" in caplog.text


def test_allow_pickle_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = iris_like()
    d = model_dir(tmp_path, LogisticRegression().fit(x, y), "pickle")
    monkeypatch.setenv("SCORING_ALLOW_PICKLE", "1")
    assert load_scorer(settings(d)).n_features == 4  # type: ignore[attr-defined]


def test_skops_type_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    # A pipeline that would call os.system: skops lists it as untrusted, the manifest even records it,
    # and the runtime still refuses it because it is not on its own allow-list.
    evil = make_pipeline(FunctionTransformer(os.system), LogisticRegression())
    d = tmp_path / "evil"
    d.mkdir()
    sio.dump(evil, d / "model.skops")
    needed = sio.get_untrusted_types(file=d / "model.skops")
    assert any("system" in t for t in needed)
    flavour = {"kind": "sklearn-tabular", "format": "skops", "trusted_types": needed}
    (d / "model.json").write_text(ModelManifest(name="evil", version=1, framework="sklearn", task="tabular",
                                                flavour=flavour).to_json())
    with pytest.raises(ModelLoadError, match=r"does not trust: .*system"):
        load_scorer(settings(d))
    assert not is_allowed_type("posix.system") and not is_allowed_type("builtins.eval")
    assert is_allowed_type("sklearn.linear_model._logistic.LogisticRegression")
    assert not is_allowed_type("sklearn.utils.fixes.some_function")
    assert is_allowed_type("numpy.log1p")


def test_skops_types_not_recorded_at_registration_are_refused(tmp_path: Path, faq_dir: Path) -> None:
    # The FAQ model needs types beyond skops' defaults (our FAQMatcher, a scipy matrix);
    # a manifest that does not list them does not match its artifact.
    d = tmp_path / "faq"
    shutil.copytree(faq_dir, d)
    manifest = json.loads((d / "model.json").read_text())
    assert "scoring_runtime.flavours.faq_pipeline.FAQMatcher" in manifest["flavour"]["trusted_types"]
    manifest["flavour"]["trusted_types"] = []
    (d / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"FAQMatcher.*not recorded|not recorded.*FAQMatcher"):
        load_scorer(settings(d))


def test_a_deployer_can_extend_the_allow_list(tmp_path: Path) -> None:
    evil = make_pipeline(FunctionTransformer(os.getpid), LogisticRegression())
    d = tmp_path / "m"
    d.mkdir()
    sio.dump(evil, d / "model.skops")
    needed = sio.get_untrusted_types(file=d / "model.skops")
    flavour = {"kind": "sklearn-tabular", "trusted_types": needed}
    (d / "model.json").write_text(ModelManifest(name="m", version=1, framework="sklearn", task="tabular",
                                                flavour=flavour).to_json())
    with pytest.raises(ModelLoadError):
        load_scorer(settings(d))
    getpid = [t for t in needed if t.endswith("getpid")]
    assert load_scorer(settings(d, trusted_types=tuple(getpid)))


async def test_tabular_flavour_over_http(tmp_path: Path) -> None:
    x, y = iris_like()
    est = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    d = model_dir(tmp_path, est, "skops")
    async with serving(create_app(settings(d))) as c:
        meta = (await c.get("/v2/models/tab")).json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
        assert meta["parameters"]["classes"] == [0, 1]
        r = await c.post("/v2/models/tab/versions/3/infer", json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 4], "data": x[:3].ravel().tolist()}]})
        assert r.status_code == 200, r.text
        out = {t["name"]: t for t in r.json()["outputs"]}
        assert out["predict"]["datatype"] == "INT64" and out["predict"]["data"] == est.predict(x[:3]).tolist()
        assert out["predict_proba"]["shape"] == [3, 2]
        np.testing.assert_allclose(out["predict_proba"]["data"],
                                   est.predict_proba(x[:3].astype(np.float32)).ravel(), rtol=1e-5)
        s = (await c.post("/score", json={"data": x[:2].tolist()})).json()
        assert s["predictions"] == est.predict(x[:2]).tolist() and s["classes"] == [0, 1]
        bad = await c.post("/score", json={"data": [[1, 2, 3]]})
        assert bad.status_code == 400 and "model expects 4" in bad.json()["error"]
        bad = await c.post("/v2/models/tab/infer", json={
            "inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]})
        assert bad.status_code == 400 and "must be numeric" in bad.json()["error"]
