"""Azure ML inference server entry script doing the FAQ matcher's top-k work (`/score`).

The request and response bodies are those of the runtime under test's `/score`:
`{"question": "...", "top_k": 3}` -> `{"question": ..., "matches": [{id, question, answer, score}, ...]}`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from faq_work import FAQModel

model: FAQModel | None = None


def init() -> None:
    global model
    model = FAQModel(os.environ["AZUREML_MODEL_DIR"])


def run(raw_data: str) -> Any:
    assert model is not None
    doc = json.loads(raw_data)
    single = isinstance(doc.get("question"), str)
    questions = [doc["question"]] if single else list(doc["questions"])
    answers = model.matches(questions, int(doc.get("top_k", model.default_top_k)))
    return answers[0] if single else {"results": answers}
