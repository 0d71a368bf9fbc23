"""LitServe doing the FAQ matcher's top-k work, with LitServe's own dynamic batching.

`POST /predict` takes the runtime's /score body (`{"question": "...", "top_k": 3}`) and answers its
/score response, both through the flavour's public interface (faq_work.FAQModel). Settings, as
LitServe documents them for a CPU model at hundreds of requests/s: `LitAPI(max_batch_size,
batch_timeout)` batching, one inference worker on the CPU (`accelerator="cpu"`, one device, one
worker per device), one API server, `fast_queue=True` (ZeroMQ between the API server and the
worker, "for >100 RPS").

    python litserve_faq.py --model_dir DIR --port PORT [--max_batch_size 16 --batch_timeout 0.002]
"""

from __future__ import annotations

import argparse
from typing import Any

import litserve as ls
import orjson
from faq_work import FAQModel


class FAQLitAPI(ls.LitAPI):
    def __init__(self, model_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.model = FAQModel(self.model_dir)

    # no annotations on decode_request/encode_response: LitServe reads them as the request and
    # response types of the endpoint; without them it passes the parsed JSON body
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return self.model.score_job(orjson.dumps(request))

    def predict(self, x: Any) -> Any:
        jobs = x if isinstance(x, list) else [x]
        results = self.model.predict(jobs)
        return [(r, j) for r, j in zip(results, jobs, strict=True)] if isinstance(x, list) else (results[0], x)

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        result, job = output
        return self.model.render_score(result, job)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max_batch_size", type=int, default=16)
    p.add_argument("--batch_timeout", type=float, default=0.002)
    a = p.parse_args()
    api = FAQLitAPI(a.model_dir, max_batch_size=a.max_batch_size, batch_timeout=a.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, fast_queue=True, timeout=30)
    server.run(host="127.0.0.1", port=a.port, num_api_servers=1, log_level="warning", generate_client_file=False)
