"""The FAQ matcher's work, framework-neutral, for the peer servers (MLServer runtime, AML score.py).

It is the same computation as `scoring_runtime.flavours.sklearn_faq.FAQScorer` (the runtime under
test): the fitted `FAQMatcher` ranks the FAQ originals for each question (sparse retrieval, then
its reranker), and the k best are returned with id, question, answer and score, dropping those
below the model's no-match threshold (`no_match` says when none is left). Only numpy,
scikit-learn, skops and the model's own `FAQMatcher` class are needed (the peers' virtualenvs get
the repository on PYTHONPATH for that class).
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
        self.model = sio.load(model_dir / flavour.get("file", "pipeline.skops"), trusted=flavour["trusted_types"])
        self.model.prepare()
        faq = json.loads((model_dir / flavour.get("faq", "faq.json")).read_text(encoding="utf-8"))
        self.ids = [e["id"] for e in faq]
        self.texts = np.array([e["text"] for e in faq], dtype=object)
        self.answers = np.array([e["answer"] for e in faq], dtype=object)
        self.default_top_k = int(flavour.get("default_top_k", 3))
        threshold = self.model.threshold
        self.min_score = float(flavour.get("min_score", threshold if threshold is not None else 0.0))

    def top_k(self, questions: list[str], k: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """(indices, scores), each [n, k], best first."""
        top, scores = self.model.rank(questions, min(k, len(self.ids)))
        return top, scores

    def matches(self, questions: list[str], k: int) -> list[dict[str, Any]]:
        """The `/score` response body of the runtime under test, one entry per question."""
        top, scores = self.top_k(questions, k)
        out = []
        for r, q in enumerate(questions):
            matches = [
                {"id": self.ids[i], "question": self.texts[i], "answer": self.answers[i], "score": round(float(sc), 6)}
                for i, sc in zip(top[r], scores[r], strict=True) if sc >= self.min_score
            ]
            out.append({"question": q, "matches": matches, "no_match": not matches})
        return out
