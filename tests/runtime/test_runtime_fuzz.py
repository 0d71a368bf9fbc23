"""Property-based fuzzing of a real `scoring serve` from its own OpenAPI document (schemathesis).

Every operation of `/openapi.json` gets schema-driven requests (valid ones and, through
schemathesis' negative mode, invalid ones); none may get a 5xx, and the server must still answer
afterwards. Bounded: a fixed number of examples per operation, no example database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.runtime.support import ServeProcess, scoring_serve

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the [dev] extra")
hypothesis = pytest.importorskip("hypothesis")

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def server(faq_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with scoring_serve(faq_dir, "--max-batch-size", "8", log=tmp_path_factory.mktemp("fuzz") / "serve.log") as s:
        yield s


def test_openapi_document_describes_the_served_model(server: ServeProcess) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    infer = doc["paths"]["/v2/models/{name}/infer"]
    assert infer["parameters"][0]["schema"]["enum"] == ["faq-matcher"]
    tensor = infer["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]["items"]
    assert tensor["properties"]["name"]["enum"] == ["question"]
    assert "text/plain" in doc["paths"]["/score"]["post"]["requestBody"]["content"]


def _fuzz(client: httpx.Client, base_url: str, strategy: Any, failures: list[str]) -> int:
    """Send EXAMPLES_PER_OPERATION requests drawn from `strategy`; record any 5xx but 503; how many were sent."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    sent = 0

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: Any) -> None:
        nonlocal sent
        case = data.draw(strategy)
        kwargs = case.as_transport_kwargs(base_url=base_url)
        r = client.request(kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
                           params=kwargs.get("params"), content=_content(kwargs))
        sent += 1
        if r.status_code >= 500 and r.status_code != 503:
            failures.append(f"{case.method} {case.path} -> {r.status_code}: {r.text[:200]}")

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # e.g. no invalid GET without parameters
        run()
    return sent


def test_fuzzing_from_the_openapi_document_never_gets_a_5xx(server: ServeProcess) -> None:
    from schemathesis.generation import GenerationMode

    doc = httpx.get(f"{server.url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    calls = 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):  # valid and invalid requests
                calls += _fuzz(client, server.url, operation.as_strategy(generation_mode=mode), failures)
    assert calls >= 10 * EXAMPLES_PER_OPERATION, calls
    assert not failures, failures[:5]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    ok = httpx.post(f"{server.url}/score", json={"question": "reset my password"})
    assert ok.status_code == 200 and ok.json()["matches"]


def _content(kwargs: dict[str, Any]) -> bytes | None:
    import json

    if "json" in kwargs and kwargs["json"] is not None:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data") or kwargs.get("content")
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    return data
