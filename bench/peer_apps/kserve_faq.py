"""KServe's Python model server (`kserve` package) doing the FAQ matcher's top-k work, V2 REST.

A `kserve.Model` whose `predict` takes the V2 `InferRequest` (BYTES input `question`, parameter
`top_k`) and answers an `InferResponse` with the flavour's V2 outputs (faq_work.FAQModel calls the
flavour through its public interface). KServe's Python server has no batching of its own: in a
KServe deployment batching is done by the Go "agent" sidecar in front of it (InferenceService
`spec.predictor.batcher`, V1 protocol only), which is not part of the Python package; so this peer
is measured without batching, one uvicorn worker, gRPC and per-request latency logging off.

    python kserve_faq.py --model_dir DIR --http_port PORT [--model_name faq-matcher]

kserve binds 0.0.0.0 unconditionally; this launcher makes it bind 127.0.0.1 (the benchmark's
traffic stays on loopback) and otherwise runs it unchanged.
"""

from __future__ import annotations

import argparse
import types
from typing import Any

import uvicorn
from faq_work import FAQModel
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.protocol.rest import server as rest_server


class FAQKServeModel(Model):
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.model: FAQModel | None = None

    def load(self) -> bool:
        self.model = FAQModel(self.model_dir)
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        assert self.model is not None
        questions: list[str] = []
        for inp in payload.inputs:
            if inp.name == "question":
                questions = [q.decode() if isinstance(q, bytes) else str(q) for q in inp.data]
        if not questions:
            raise ValueError("missing BYTES input 'question'")
        params: dict[str, Any] = payload.parameters or {}
        top_k, min_score = params.get("top_k"), params.get("min_score")
        job = self.model.job(questions, int(top_k) if top_k is not None else None,
                             float(min_score) if min_score is not None else None)
        tensors = self.model.render_v2(self.model.predict([job])[0], job)
        outputs = [
            InferOutput(name=t.name, shape=list(t.data.shape), datatype=t.datatype,
                        data=[str(x) for x in t.data.ravel()] if t.datatype == "BYTES" else t.data.ravel().tolist())
            for t in tensors
        ]
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


class _LoopbackConfig(uvicorn.Config):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = "127.0.0.1"
        super().__init__(*args, **kwargs)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", required=True)
    p.add_argument("--http_port", type=int, required=True)
    p.add_argument("--model_name", default="faq-matcher")
    a = p.parse_args()
    rest_server.uvicorn = types.SimpleNamespace(**{**vars(uvicorn), "Config": _LoopbackConfig})  # type: ignore[attr-defined]
    m = FAQKServeModel(a.model_name, a.model_dir)
    m.load()
    ModelServer(http_port=a.http_port, workers=1, enable_grpc=False, enable_latency_logging=False,
                enable_docs_url=False).start([m])
