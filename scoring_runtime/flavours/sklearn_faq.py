"""Serve the FAQ matcher: score a question against every original FAQ entry, return the top k.

The artifact directory holds the sklearn Pipeline (skops, `flavour.file`, default
`pipeline.skops`) and the FAQ (`flavour.faq`, default `faq.json`: a list of
`{"id", "text", "answer"}`). The pipeline takes rows of (question, original question, original
answer) and its `predict_proba[:, 1]` is the probability that the question duplicates the original.

`/score`: `{"question": "...", "top_k": 3}` -> `{"question": ..., "matches": [{id, question, answer,
score}, ...]}`; `{"questions": [...]}` -> `{"results": [...]}`; `{"input": ...}` (the Azure
reference's shape) is read like `question`/`questions`; a `text/plain` body is one question.

V2: input `question` (BYTES, shape [n] or [n, 1]), parameter `top_k`; outputs `id`, `question`,
`answer` (BYTES) and `score` (FP32), each of shape [n, k], best match first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import numpy as np
import orjson

from scoring_runtime.flavours.base import BadRequest, Job, ModelLoadError, Scorer, decode_json, media_type
from scoring_runtime.flavours.errors import describe
from scoring_runtime.flavours.sklearn_io import artifact_path, load_estimator
from scoring_runtime.flavours.v2 import V2Request, V2Tensor
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.settings import RuntimeSettings

MAX_QUESTIONS = 256
MAX_QUESTION_CHARS = 4000
OUTPUTS = ("id", "score", "question", "answer")


class FAQScorer(Scorer):
    """Top-k FAQ matches for free-text questions."""

    platform = "sklearn"
    score_media_types = ("application/json", "text/plain")
    # a few short strings: cheaper on the loop than a thread hop (the server still uses its pool for
    # bodies over 64 KiB and results over 16 rows, so a big request cannot stall the loop)
    parse_in_thread = False

    def __init__(self, manifest: ModelManifest, settings: RuntimeSettings, pipeline: Any,
                 faq: list[dict[str, Any]]) -> None:
        super().__init__(manifest, settings)
        self.pipeline = pipeline
        self.faq = faq
        self.ids = [e["id"] for e in faq]
        self.texts = np.array([e["text"] for e in faq], dtype=object)
        self.answers = np.array([e["answer"] for e in faq], dtype=object)
        self.default_top_k = self._top_k(manifest.flavour.get("default_top_k", 3), "flavour.default_top_k")
        classes = list(getattr(pipeline, "classes_", []))
        if 1 not in classes:
            raise ModelLoadError(f"the FAQ pipeline must be a classifier with class 1 (duplicate); classes: {classes}")
        self._positive = classes.index(1)
        steps = getattr(pipeline, "named_steps", {})
        if "pairs" in steps and hasattr(steps["pairs"], "cache_texts"):
            # vectorise the originals and answers once, not per request
            steps["pairs"].cache_texts(list(self.texts) + list(self.answers))

    @classmethod
    def load(cls, model_dir: Path, manifest: ModelManifest, settings: RuntimeSettings) -> Self:
        pipeline = load_estimator(model_dir, manifest, settings, default_file="pipeline.skops")
        if not hasattr(pipeline, "predict_proba"):
            raise ModelLoadError("the FAQ model must have predict_proba (a classifier over question pairs)")
        faq = read_faq(artifact_path(model_dir, str(manifest.flavour.get("faq", "faq.json")), "flavour.faq"))
        return cls(manifest, settings, pipeline, faq)

    # ------------------------------------------------------------------ requests
    def _top_k(self, value: Any, where: str = "top_k") -> int:
        if isinstance(value, str) and value.isascii() and value.isdigit():  # not int("²"): a ValueError
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"{where} must be a positive integer, got {describe(value)}")
        return min(value, len(self.faq))

    @staticmethod
    def _questions(value: Any, field: str) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise BadRequest(f"{field!r} must be a question string or a non-empty list of strings")
        if len(items) > MAX_QUESTIONS:
            raise BadRequest(f"at most {MAX_QUESTIONS} questions per request, got {len(items)}; split the request")
        for q in items:
            if not isinstance(q, str) or not q.strip():
                raise BadRequest(f"every question in {field!r} must be a non-empty string, got {describe(q)}")
            if len(q) > MAX_QUESTION_CHARS:
                raise BadRequest(f"a question is {len(q)} characters long; the limit is {MAX_QUESTION_CHARS}")
        return items

    def parse_score(self, body: bytes, content_type: str) -> Job:
        if media_type(content_type) == "text/plain":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest("a text/plain body must be UTF-8 text") from None
            return Job(rows=1, data=self._questions(text, "body"), params={"top_k": self.default_top_k,
                                                                          "single": True})
        doc = decode_json(body)
        if not isinstance(doc, dict):
            raise BadRequest('send a JSON object like {"question": "How do I ...?", "top_k": 3}')
        field = next((f for f in ("question", "questions", "input") if f in doc), None)
        if field is None:
            raise BadRequest('missing field "question": send {"question": "How do I ...?", "top_k": 3}')
        questions = self._questions(doc[field], field)
        top_k = self._top_k(doc.get("top_k", self.default_top_k))
        return Job(rows=len(questions), data=questions,
                   params={"top_k": top_k, "single": isinstance(doc[field], str)})

    def parse_v2(self, request: V2Request) -> Job:
        tensor = request.input("question")
        if tensor.datatype != "BYTES":
            raise BadRequest(f"input 'question' must have datatype BYTES (strings), got {tensor.datatype}")
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
            raise BadRequest(f"input 'question' must have shape [n] or [n, 1] with n >= 1, got {shape}")
        questions = self._questions(list(tensor.data.ravel()), "question")
        raw_k = request.parameters.get("top_k", tensor.parameters.get("top_k", self.default_top_k))
        return Job(rows=len(questions), data=questions, params={"top_k": self._top_k(raw_k)}, outputs=request.outputs)

    # ------------------------------------------------------------------ model
    def predict(self, jobs: list[Job]) -> list[Any]:
        questions = [q for job in jobs for q in job.data]
        m = len(self.texts)
        pairs = np.empty((len(questions) * m, 3), dtype=object)
        pairs[:, 0] = np.repeat(np.array(questions, dtype=object), m)
        pairs[:, 1] = np.tile(self.texts, len(questions))
        pairs[:, 2] = np.tile(self.answers, len(questions))
        scores = self.pipeline.predict_proba(pairs)[:, self._positive].reshape(len(questions), m)
        out, start = [], 0
        for job in jobs:
            out.append(scores[start:start + job.rows])
            start += job.rows
        return out

    def _ranked(self, scores: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]

    def render_score(self, result: Any, job: Job) -> Any:
        top = self._ranked(result, job.params["top_k"])
        answers = [
            {
                "question": q,
                "matches": [
                    {"id": self.ids[i], "question": self.texts[i], "answer": self.answers[i],
                     "score": round(float(result[r, i]), 6)}
                    for i in top[r]
                ],
            }
            for r, q in enumerate(job.data)
        ]
        return answers[0] if job.params.get("single") else {"results": answers}

    def render_v2(self, result: Any, job: Job) -> list[V2Tensor]:
        top = self._ranked(result, job.params["top_k"])
        ids = np.array([str(i) for i in self.ids], dtype=object)
        return [
            V2Tensor.of("id", ids[top], "BYTES"),
            V2Tensor.of("score", np.take_along_axis(result, top, axis=1), "FP32"),
            V2Tensor.of("question", self.texts[top], "BYTES"),
            V2Tensor.of("answer", self.answers[top], "BYTES"),
        ]

    def v2_metadata(self) -> dict[str, Any]:
        return {
            "inputs": [{"name": "question", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "id", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "score", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "question", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "answer", "datatype": "BYTES", "shape": [-1, -1]},
            ],
            "parameters": {"top_k": self.default_top_k, "faq_entries": len(self.faq)},
        }

    def warmup(self) -> None:
        job = Job(rows=1, data=[str(self.texts[0])], params={"top_k": self.default_top_k, "single": True})
        self.render_score(self.predict([job])[0], job)


def read_faq(path: Path) -> list[dict[str, Any]]:
    """The FAQ entries the model ranks; validated so a broken file fails at load, not per request."""
    try:
        entries = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} not found: the FAQ model needs its originals (flavour.faq)") from None
    except orjson.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise ModelLoadError(f"{path} must be a non-empty JSON list of {{id, text, answer}} objects")
    for n, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("text"), str)
                and isinstance(entry.get("answer"), str)
                and isinstance(entry.get("id"), int | str)):
            raise ModelLoadError(f"{path}: entry {n} must be an object with id (int or string), text and answer")
    return list(entries)
