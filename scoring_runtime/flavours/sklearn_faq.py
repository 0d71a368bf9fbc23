"""Serve the FAQ matcher: rank the FAQ's originals for free-text questions, best first, or say "no match".

The artifact directory holds the fitted `FAQMatcher` (skops, `flavour.file`, default
`pipeline.skops`) and the FAQ (`flavour.faq`, default `faq.json`: a list of `{"id", "text",
"answer"}`, in the order the model was trained on). Scores are the model's calibrated probability
that an entry is the question's original.

`/score`: `{"question": "...", "top_k": 3, "min_score": 0.4}` -> `{"question": ..., "matches": [{id,
question, answer, score}, ...], "no_match": false}`; `{"questions": [...]}` -> `{"results": [...]}`;
`{"input": ...}` (the Azure reference's shape) is read like `question`/`questions`; a `text/plain`
body is one question. Only matches with `score >= min_score` are returned; `min_score` defaults to
the model's no-match threshold (chosen at training, `flavour.min_score` overrides it); when no
entry clears it, `matches` is `[]` and `no_match` is true.

V2: input `question` (BYTES, shape [n] or [n, 1]), parameters `top_k` and `min_score`; outputs `id`,
`question`, `answer` (BYTES) and `score` (FP32), each of shape [n, k] (k = top_k), best match first,
slots below `min_score` padded with id "" and score 0; and `no_match` (BOOL, shape [n]).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Self

import numpy as np
import orjson

from scoring_runtime.flavours.base import BadRequest, Job, ModelLoadError, Scorer, decode_json, media_type
from scoring_runtime.flavours.errors import ContentTooLarge, describe
from scoring_runtime.flavours.faq_pipeline import FAQMatcher
from scoring_runtime.flavours.sklearn_io import artifact_path, load_estimator
from scoring_runtime.flavours.v2 import V2Request, V2Tensor
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.settings import RuntimeSettings

MAX_QUESTIONS = 256
MAX_QUESTION_CHARS = 4000
OUTPUTS = ("id", "score", "question", "answer", "no_match")


def parse_min_score(value: Any, where: str = "min_score") -> float:
    """A number in [0, 1] (JSON number, or a numeric string from a query-like client), else a BadRequest."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRequest(f"{where} must be a number from 0 to 1, got {describe(value)}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise BadRequest(f"{where} must be a number from 0 to 1 (a probability), got {describe(value)}")
    return float(value)


class FAQScorer(Scorer):
    """Top-k FAQ matches for free-text questions, with an explicit "no match"."""

    platform = "sklearn"
    score_media_types = ("application/json", "text/plain")
    # a few short strings: cheaper on the loop than a thread hop (the server still uses its pool for
    # bodies over 64 KiB and results over 16 rows, so a big request cannot stall the loop)
    parse_in_thread = False
    splittable = True  # data: a list of questions; predict: an array with a row per question
    score_request_schema = {
        "type": "object",
        "properties": {
            "question": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "questions": {"type": "array", "items": {"type": "string"}},
            "top_k": {"type": "integer", "minimum": 1},
            "min_score": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }

    def __init__(self, manifest: ModelManifest, settings: RuntimeSettings, model: FAQMatcher,
                 faq: list[dict[str, Any]]) -> None:
        super().__init__(manifest, settings)
        if not isinstance(model, FAQMatcher):
            raise ModelLoadError(
                f"the FAQ model must be a {FAQMatcher.__module__}.FAQMatcher, got {type(model).__name__}; "
                "models from before the retrieval + reranker matcher cannot be served: retrain with "
                "examples/faq-matching/train.py"
            )
        if model.n_originals_ != len(faq):
            raise ModelLoadError(f"the model was trained on {model.n_originals_} FAQ entries but the FAQ file has "
                                 f"{len(faq)}; the two files do not belong together: re-register the model")
        self.model = model
        self.faq = faq
        self.ids = [e["id"] for e in faq]
        self.id_strings = np.array([str(i) for i in self.ids], dtype=object)
        self.texts = np.array([e["text"] for e in faq], dtype=object)
        self.answers = np.array([e["answer"] for e in faq], dtype=object)
        # the same columns with an empty entry appended: what V2 puts in slots below min_score
        self._padded_ids, self._padded_texts, self._padded_answers = (
            np.append(col, np.array([""], dtype=object)) for col in (self.id_strings, self.texts, self.answers))
        self.default_top_k = self._top_k(manifest.flavour.get("default_top_k", 3), "flavour.default_top_k")
        configured = manifest.flavour.get("min_score")
        if configured is not None:
            try:
                self.default_min_score = parse_min_score(configured, "flavour.min_score")
            except BadRequest as e:
                raise ModelLoadError(str(e)) from None
        else:
            self.default_min_score = model.threshold if model.threshold is not None else 0.0
        model.prepare()  # transposed matrices and profiles, once, not per request

    @classmethod
    def load(cls, model_dir: Path, manifest: ModelManifest, settings: RuntimeSettings) -> Self:
        model = load_estimator(model_dir, manifest, settings, default_file="pipeline.skops")
        faq = read_faq(artifact_path(model_dir, str(manifest.flavour.get("faq", "faq.json")), "flavour.faq"))
        return cls(manifest, settings, model, faq)

    # ------------------------------------------------------------------ requests
    def _top_k(self, value: Any, where: str = "top_k") -> int:
        if isinstance(value, str) and value.isascii() and value.isdigit():  # not int("²"): a ValueError
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"{where} must be a positive integer, got {describe(value)}")
        return min(value, len(self.faq))

    def _min_score(self, value: Any) -> float:
        return self.default_min_score if value is None else parse_min_score(value)

    @staticmethod
    def _questions(value: Any, field: str) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise BadRequest(f"{field!r} must be a question string or a non-empty list of strings")
        if len(items) > MAX_QUESTIONS:
            raise ContentTooLarge(f"at most {MAX_QUESTIONS} questions per request, got {len(items)}; split the request")
        for n, q in enumerate(items):
            if not isinstance(q, str) or not q.strip():
                raise BadRequest(f"every question in {field!r} must be a non-empty string, got {describe(q)}")
            if len(q) > MAX_QUESTION_CHARS:
                raise ContentTooLarge(f"question {n} is {len(q)} characters long; the limit is {MAX_QUESTION_CHARS} "
                                      "characters per question: shorten it")
        return items

    def parse_score(self, body: bytes, content_type: str) -> Job:
        if media_type(content_type) == "text/plain":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest("a text/plain body must be UTF-8 text") from None
            return Job(rows=1, data=self._questions(text, "body"),
                       params={"top_k": self.default_top_k, "single": True, "min_score": self.default_min_score})
        doc = decode_json(body)
        if not isinstance(doc, dict):
            raise BadRequest('send a JSON object like {"question": "How do I ...?", "top_k": 3}')
        field = next((f for f in ("question", "questions", "input") if f in doc), None)
        if field is None:
            raise BadRequest('missing field "question": send {"question": "How do I ...?", "top_k": 3}')
        questions = self._questions(doc[field], field)
        top_k = self._top_k(doc.get("top_k", self.default_top_k))
        min_score = self._min_score(doc.get("min_score"))
        return Job(rows=len(questions), data=questions,
                   params={"top_k": top_k, "single": isinstance(doc[field], str), "min_score": min_score})

    def parse_v2(self, request: V2Request) -> Job:
        tensor = request.input("question")
        if tensor.datatype != "BYTES":
            raise BadRequest(f"input 'question' must have datatype BYTES (strings), got {tensor.datatype}")
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
            raise BadRequest(f"input 'question' must have shape [n] or [n, 1] with n >= 1, got {shape}")
        questions = self._questions(list(tensor.data.ravel()), "question")
        raw_k = request.parameters.get("top_k", tensor.parameters.get("top_k", self.default_top_k))
        raw_min = request.parameters.get("min_score", tensor.parameters.get("min_score"))
        return Job(rows=len(questions), data=questions,
                   params={"top_k": self._top_k(raw_k), "min_score": self._min_score(raw_min)},
                   outputs=request.outputs)

    # ------------------------------------------------------------------ model
    def predict(self, jobs: list[Job]) -> list[Any]:
        """Per job: (original indices, scores), each (questions, top_k), best first."""
        questions = [q for job in jobs for q in job.data]
        k = max(job.params["top_k"] for job in jobs)
        top, scores = self.model.rank(questions, k)
        out, start = [], 0
        for job in jobs:
            kk = job.params["top_k"]
            out.append((top[start:start + job.rows, :kk], scores[start:start + job.rows, :kk]))
            start += job.rows
        return out

    def render_score(self, result: Any, job: Job) -> Any:
        top, scores = result
        floor = job.params.get("min_score", self.default_min_score)
        answers = []
        for r, q in enumerate(job.data):
            matches = [
                {"id": self.ids[i], "question": self.texts[i], "answer": self.answers[i], "score": round(float(s), 6)}
                for i, s in zip(top[r], scores[r], strict=True) if s >= floor
            ]
            answers.append({"question": q, "matches": matches, "no_match": not matches})
        return answers[0] if job.params.get("single") else {"results": answers}

    def render_v2(self, result: Any, job: Job) -> list[V2Tensor]:
        top, scores = result
        kept = scores >= job.params.get("min_score", self.default_min_score)
        # slots below min_score index the padding entry ("") at the end of each column: one integer
        # np.where and three gathers instead of three object-array np.where (the per-request hot path)
        slots = np.where(kept, top, len(self.ids))
        shape = list(top.shape)
        return [
            V2Tensor("id", "BYTES", shape, self._padded_ids[slots]),
            V2Tensor("score", "FP32", shape, np.where(kept, scores, 0.0).astype(np.float32)),
            V2Tensor("question", "BYTES", shape, self._padded_texts[slots]),
            V2Tensor("answer", "BYTES", shape, self._padded_answers[slots]),
            V2Tensor("no_match", "BOOL", [shape[0]], ~kept[:, 0]),
        ]

    def v2_metadata(self) -> dict[str, Any]:
        return {
            "inputs": [{"name": "question", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "id", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "score", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "question", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "answer", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "no_match", "datatype": "BOOL", "shape": [-1]},
            ],
            "parameters": {"top_k": self.default_top_k, "min_score": self.default_min_score,
                           "faq_entries": len(self.faq)},
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
