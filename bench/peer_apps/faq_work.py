"""The FAQ matcher for the peer servers, called through the flavour's public interface.

Every peer (MLServer, KServe, LitServe, the Azure ML inference server) loads the model with
`scoring_runtime.flavours.load_scorer` and scores with the `Scorer` methods the runtime under test
uses (`parse_score` -> `predict` -> `render_score` / `render_v2`), so all servers do exactly the
same model work on the same model file, and the peers keep working when the FAQ model changes.
Only the serving around it (HTTP, codecs, batching, workers) differs, which is what is compared.
The peers' virtualenvs get the repository on PYTHONPATH for `scoring_runtime`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from scoring_runtime.flavours import Job, load_scorer
from scoring_runtime.settings import RuntimeSettings


class FAQModel:
    def __init__(self, model_dir: str | Path) -> None:
        self.scorer = load_scorer(RuntimeSettings(model_dir=Path(model_dir), warmup=True))
        self.scorer.warmup()

    def job(self, questions: list[str], top_k: int | None = None, min_score: float | None = None) -> Job:
        """A job for `questions` (the flavour validates them as it does for /score)."""
        doc: dict[str, Any] = {"questions": questions}
        if top_k is not None:
            doc["top_k"] = top_k
        if min_score is not None:
            doc["min_score"] = min_score
        return self.scorer.parse_score(orjson.dumps(doc), "application/json")

    def score_job(self, body: bytes | str) -> Job:
        """A job for a /score body (`{"question": ..., "top_k": ...}`), exactly as the runtime parses it."""
        return self.scorer.parse_score(body.encode() if isinstance(body, str) else body, "application/json")

    def predict(self, jobs: list[Job]) -> list[Any]:
        """One model call for all jobs (the peers' batchers hand their batch here)."""
        return self.scorer.predict(jobs)

    def render_score(self, result: Any, job: Job) -> Any:
        return self.scorer.render_score(result, job)

    def render_v2(self, result: Any, job: Job) -> list[Any]:
        """The V2 output tensors (objects with name, datatype, shape and a numpy `data`)."""
        return self.scorer.render_v2(result, job)
