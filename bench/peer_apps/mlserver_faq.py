"""MLServer custom runtime doing the FAQ matcher's top-k work (V2 in, V2 out).

mlserver-sklearn's SKLearnModel would only return `predict_proba` of (question, original) pairs
and it loads joblib pickles; the work being compared is "question in, top-k FAQ matches out" from
a skops file, so this small MLModel does exactly that, with MLServer's own codecs and its
adaptive batching (model-settings.json `max_batch_size` / `max_batch_time`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from faq_work import FAQModel
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class FAQRuntime(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri if self.settings.parameters else None
        if not uri:
            raise ValueError("model-settings.json needs parameters.uri: the fetched FAQ model directory")
        self.model = FAQModel(uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        questions: list[str] = []
        for inp in payload.inputs:
            if inp.name == "question":
                questions = [q.decode() if isinstance(q, bytes) else str(q) for q in StringCodec.decode_input(inp)]
        if not questions:
            raise ValueError("missing BYTES input 'question'")
        params: Any = payload.parameters
        k = int(getattr(params, "top_k", None) or self.model.default_top_k)
        top, scores = self.model.top_k(questions, k)
        ids = np.array([str(i) for i in self.model.ids], dtype=object)
        outputs: list[ResponseOutput] = []
        for name, arr in (("id", ids[top]), ("question", self.model.texts[top]), ("answer", self.model.answers[top])):
            out = StringCodec.encode_output(name, [str(x) for x in arr.ravel()])
            out.shape = list(arr.shape)
            outputs.append(out)
        outputs.append(NumpyCodec.encode_output("score", scores.astype(np.float32)))
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
