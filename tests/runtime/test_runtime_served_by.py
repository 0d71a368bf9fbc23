"""Every response names the pod (host name) and the model version that produced it."""

from __future__ import annotations

import socket
from collections.abc import Callable

from starlette.applications import Starlette

from tests.runtime.support import serving


async def test_responses_name_the_pod_and_model_version(faq_app: Callable[..., Starlette]) -> None:
    async with serving(faq_app(api_key_file=None)) as c:
        for method, path, body in (
            ("POST", "/score", {"question": "how do I reset my password?", "top_k": 3}),
            ("GET", "/v2/health/ready", None),
            ("GET", "/no/such/endpoint", None),  # errors too: a client can tell who refused it
        ):
            r = await c.request(method, path, json=body)
            assert r.headers["x-scoring-pod"] == socket.gethostname(), (path, r.headers)
            assert r.headers["x-model-name"] == "faq-matcher"
            assert r.headers["x-model-version"] == "1"
        assert (await c.post("/score", json={"question": "x", "top_k": 1})).status_code == 200
