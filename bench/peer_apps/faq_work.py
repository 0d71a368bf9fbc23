"""The FAQ matcher's work, framework-neutral, for the peer servers (MLServer runtime, AML score.py).

It is the same computation as `scoring_runtime.flavours.sklearn_faq.FAQScorer` (the runtime under
test): every question is paired with every FAQ original, the pipeline's `predict_proba` scores the
pairs, and the k best originals are returned with id, question, answer and score. Only numpy,
scikit-learn, skops and the pipeline's own `PairFeatures` class are needed (the peers' virtualenvs
get the repository on PYTHONPATH for that class).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class FAQModel:
    def __init__(self, model_dir: str | Path) -> None:
        import skops.io as sio

        model_dir = Path(model_dir)
        manifest = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
        flavour = manifest["flavour"]
        # The types the file was registered with (the runtime under test checks the same list).
        self.pipeline = sio.load(model_dir / flavour.get("file", "pipeline.skops"), trusted=flavour["trusted_types"])
        faq = json.loads((model_dir / flavour.get("faq", "faq.json")).read_text(encoding="utf-8"))
        self.ids = [e["id"] for e in faq]
        self.texts = np.array([e["text"] for e in faq], dtype=object)
        self.answers = np.array([e["answer"] for e in faq], dtype=object)
        self.default_top_k = int(flavour.get("default_top_k", 3))
        self.positive = list(self.pipeline.classes_).index(1)
        pairs_step = self.pipeline.named_steps.get("pairs")
        if pairs_step is not None and hasattr(pairs_step, "cache_texts"):
            pairs_step.cache_texts(list(self.texts) + list(self.answers))

    def scores(self, questions: list[str]) -> np.ndarray[Any, Any]:
        m = len(self.texts)
        pairs = np.empty((len(questions) * m, 3), dtype=object)
        pairs[:, 0] = np.repeat(np.array(questions, dtype=object), m)
        pairs[:, 1] = np.tile(self.texts, len(questions))
        pairs[:, 2] = np.tile(self.answers, len(questions))
        proba: np.ndarray[Any, Any] = self.pipeline.predict_proba(pairs)[:, self.positive]
        return proba.reshape(len(questions), m)

    def top_k(self, questions: list[str], k: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """(indices, scores), each [n, k], best first."""
        s = self.scores(questions)
        top = np.argsort(-s, axis=1, kind="stable")[:, : min(k, s.shape[1])]
        return top, np.take_along_axis(s, top, axis=1)

    def matches(self, questions: list[str], k: int) -> list[dict[str, Any]]:
        """The `/score` response body of the runtime under test, one entry per question."""
        top, scores = self.top_k(questions, k)
        return [
            {
                "question": q,
                "matches": [
                    {"id": self.ids[i], "question": self.texts[i], "answer": self.answers[i],
                     "score": round(float(sc), 6)}
                    for i, sc in zip(top[r], scores[r], strict=True)
                ],
            }
            for r, q in enumerate(questions)
        ]
