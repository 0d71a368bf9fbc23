"""Azure ML inference server entry script doing the FAQ matcher's top-k work (`/score`).

The request and response bodies are those of the runtime under test's `/score`:
`{"question": "...", "top_k": 3}` -> `{"question": ..., "matches": [{id, question, answer, score}, ...]}`.
The model is called through the flavour's public interface (faq_work.FAQModel).
"""

from __future__ import annotations

import os
from typing import Any

from faq_work import FAQModel

model: FAQModel | None = None


def init() -> None:
    global model
    model = FAQModel(os.environ["AZUREML_MODEL_DIR"])


def run(raw_data: str) -> Any:
    assert model is not None
    job = model.score_job(raw_data)
    return model.render_score(model.predict([job])[0], job)
