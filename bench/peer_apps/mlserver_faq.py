"""MLServer custom runtime doing the FAQ matcher's top-k work (V2 in, V2 out).

mlserver-sklearn's SKLearnModel would only return `predict_proba` of (question, original) pairs;
the work being compared is "question in, top-k FAQ matches out", so this small MLModel calls the
flavour through its public interface (faq_work.FAQModel), with MLServer's own codecs and its
adaptive batching (model-settings.json `max_batch_size` / `max_batch_time`), which merges the
requests of a batch into one InferenceRequest before `predict`.
"""

from __future__ import annotations

from typing import Any

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
        top_k, min_score = getattr(params, "top_k", None), getattr(params, "min_score", None)
        job = self.model.job(questions, int(top_k) if top_k is not None else None,
                             float(min_score) if min_score is not None else None)
        tensors = self.model.render_v2(self.model.predict([job])[0], job)
        outputs: list[ResponseOutput] = []
        for t in tensors:
            if t.datatype == "BYTES":
                out = StringCodec.encode_output(t.name, [str(x) for x in t.data.ravel()])
                out.shape = list(t.data.shape)
            else:
                out = NumpyCodec.encode_output(t.name, t.data)
            outputs.append(out)
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
