"""Serve a plain scikit-learn estimator on numeric rows: predict (and predict_proba if it has one).

Manifest: `framework: sklearn`, `flavour.kind: sklearn-tabular` (or task tabular/classification/
regression), `flavour.file` (default `model.skops`), optional `flavour.feature_names`.

`/score`: `{"data": [[...], ...]}` (the Azure ML sample shape; `instances` and `inputs` work too)
-> `{"predictions": [...], "probabilities": [[...], ...]}` (probabilities for classifiers only).
V2: one FP32/FP64/INT input of shape [n, features] -> outputs `predict` [n] and, for classifiers,
`predict_proba` [n, classes] (FP64), with the class labels in the metadata's parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import numpy as np

from scoring_runtime.flavours.base import BadRequest, Job, ModelLoadError, Scorer, decode_json
from scoring_runtime.flavours.sklearn_io import load_estimator
from scoring_runtime.flavours.v2 import V2Request, V2Tensor
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.settings import RuntimeSettings

MAX_ROWS = 100_000
_NUMERIC = frozenset({"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                      "UINT64", "BOOL"})


class TabularScorer(Scorer):
    """Any fitted estimator with `predict` over a 2-D numeric array."""

    platform = "sklearn"
    splittable = True  # data: a [rows, features] array; predict: (predictions, probabilities or None)
    score_request_schema = {
        "type": "object",
        "properties": {"data": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
    }

    def __init__(self, manifest: ModelManifest, settings: RuntimeSettings, estimator: Any) -> None:
        super().__init__(manifest, settings)
        self.estimator = estimator
        self.n_features = int(getattr(estimator, "n_features_in_", 0)) or None
        self.has_proba = hasattr(estimator, "predict_proba")
        classes = getattr(estimator, "classes_", None)
        self.classes = [c.item() if hasattr(c, "item") else c for c in classes] if classes is not None else None
        self.feature_names = manifest.flavour.get("feature_names")
        if self.classes is None:
            self.predict_datatype = "FP64"  # a regressor
        elif all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in self.classes):
            self.predict_datatype = "INT64"
        else:
            self.predict_datatype = "BYTES"

    @classmethod
    def load(cls, model_dir: Path, manifest: ModelManifest, settings: RuntimeSettings) -> Self:
        est = load_estimator(model_dir, manifest, settings, default_file="model.skops")
        if not hasattr(est, "predict"):
            raise ModelLoadError(f"the loaded {type(est).__name__} has no predict(): not a fitted estimator")
        return cls(manifest, settings, est)

    def _rows(self, arr: Any, where: str) -> np.ndarray[Any, Any]:
        try:
            x = np.asarray(arr, dtype=np.float64)
        except (ValueError, TypeError):
            raise BadRequest(f"{where} must be a list of rows of numbers") from None
        if x.ndim == 1 and self.n_features and x.shape[0] == self.n_features:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] < 1:
            raise BadRequest(f"{where} must be a non-empty 2-D array [rows, features], got shape {list(x.shape)}")
        if self.n_features is not None and x.shape[1] != self.n_features:
            raise BadRequest(f"{where} has {x.shape[1]} features per row; the model expects {self.n_features}")
        if x.shape[0] > MAX_ROWS:
            raise BadRequest(f"at most {MAX_ROWS} rows per request, got {x.shape[0]}")
        if not np.isfinite(x).all():
            raise BadRequest(f"{where} contains NaN or infinite values")
        return x

    def parse_score(self, body: bytes, content_type: str) -> Job:
        doc = decode_json(body)
        key = next((k for k in ("data", "instances", "inputs") if isinstance(doc, dict) and k in doc), None)
        if key is None:
            raise BadRequest('send {"data": [[feature, ...], ...]} (one list of numbers per row)')
        x = self._rows(doc[key], repr(key))
        return Job(rows=x.shape[0], data=x)

    def parse_v2(self, request: V2Request) -> Job:
        if len(request.inputs) != 1:
            raise BadRequest(f"send exactly one input tensor of shape [rows, features], got {len(request.inputs)}")
        t = request.inputs[0]
        if t.datatype not in _NUMERIC:
            raise BadRequest(f"input {t.name!r} must be numeric (FP32, FP64, INT64 ...), got {t.datatype}")
        x = self._rows(t.data, f"input {t.name!r}")
        return Job(rows=x.shape[0], data=x, outputs=request.outputs)

    def predict(self, jobs: list[Job]) -> list[Any]:
        x = np.concatenate([j.data for j in jobs]) if len(jobs) > 1 else jobs[0].data
        try:
            pred = np.asarray(self.estimator.predict(x))
            proba = np.asarray(self.estimator.predict_proba(x)) if self.has_proba else None
        except (ValueError, TypeError) as e:
            # scikit-learn rejects input it cannot score with these (e.g. negative counts for
            # MultinomialNB): for one request that is the client's input; in a batch, the batcher
            # retries each request alone to find out whose
            if len(jobs) == 1:
                raise BadRequest(f"the model rejected the input: {e}") from None
            raise
        out, start = [], 0
        for j in jobs:
            sl = slice(start, start + j.rows)
            out.append((pred[sl], proba[sl] if proba is not None else None))
            start += j.rows
        return out

    def render_score(self, result: Any, job: Job) -> Any:
        pred, proba = result
        body: dict[str, Any] = {"predictions": pred.tolist()}
        if proba is not None:
            body["probabilities"] = proba.tolist()
            body["classes"] = self.classes
        return body

    def render_v2(self, result: Any, job: Job) -> list[V2Tensor]:
        pred, proba = result
        if self.predict_datatype == "BYTES":
            pred = np.array([str(v) for v in pred], dtype=object)
        tensors = [V2Tensor.of("predict", pred, self.predict_datatype)]
        if proba is not None:
            tensors.append(V2Tensor.of("predict_proba", proba.astype(np.float64), "FP64"))
        return tensors

    def v2_metadata(self) -> dict[str, Any]:
        nf = self.n_features or -1
        meta: dict[str, Any] = {
            "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, nf]}],
            "outputs": [{"name": "predict", "datatype": self.predict_datatype, "shape": [-1]}],
            "parameters": {},
        }
        if self.has_proba:
            n_classes = len(self.classes or [])
            meta["outputs"].append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, n_classes]})
            meta["parameters"]["classes"] = self.classes
        if self.feature_names:
            meta["parameters"]["feature_names"] = self.feature_names
        return meta

    def warmup(self) -> None:
        if self.n_features:
            job = Job(rows=1, data=np.zeros((1, self.n_features)))
            self.render_v2(self.predict([job])[0], job)
