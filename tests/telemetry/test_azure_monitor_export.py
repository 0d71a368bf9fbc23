"""The real Azure Monitor exporters against a loopback ingestion endpoint, fed by the real runtime app."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

pytest.importorskip("azure.monitor.opentelemetry.exporter", reason="telemetry export needs the [azure] extra")
pytest.importorskip("opentelemetry.instrumentation.asgi", reason="telemetry export needs the [azure] extra")

from starlette.testclient import TestClient

from scoring_runtime import telemetry
from scoring_runtime.flavours.base import BadRequest, Job, Scorer, decode_json
from scoring_runtime.flavours.v2 import V2Request, V2Tensor
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.server.app import ScoringServer
from scoring_runtime.settings import RuntimeSettings
from scoring_runtime.telemetry.scrub import REDACTED, clear_registered_secrets, scrub
from tests.telemetry.ingestion import IKEY, Ingestion, walk

API_KEY = "rt-key-9f8e7d6c5b4a3210"
BEARER = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJvcGVyYXRvciJ9.c2lnbmF0dXJlLXZhbHVl"
ACCOUNT_KEY = "QWNjb3VudEtleVZhbHVlMTIzNDU2Nzg5MA=="
SAS_SIG = "c2FzLXNpZ25hdHVyZS12YWx1ZQ%3D%3D"


@pytest.fixture
def ingestion(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ingestion]:
    for var in ("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "APPLICATIONINSIGHTS_SDKSTATS_DISABLED",
                "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"):
        monkeypatch.setenv(var, "true")
    with Ingestion() as ing:
        yield ing
    telemetry.shutdown_telemetry()
    clear_registered_secrets()


class EchoScorer(Scorer):
    """A trivial model: the server, middleware and telemetry around it are the real ones."""

    platform = "test"

    @classmethod
    def load(cls, model_dir: Path, manifest: ModelManifest, settings: RuntimeSettings) -> Self:
        return cls(manifest, settings)

    def v2_metadata(self) -> dict[str, Any]:
        return {"inputs": [], "outputs": []}

    def parse_score(self, body: bytes, content_type: str) -> Job:
        data = decode_json(body)
        if not isinstance(data, dict) or "rows" not in data:
            raise BadRequest('send {"rows": [...]}')
        return Job(rows=len(data["rows"]), data=data["rows"])

    def parse_v2(self, request: V2Request) -> Job:
        raise BadRequest("this test model has no V2 inputs")

    def predict(self, jobs: list[Job]) -> list[Any]:
        return [job.data for job in jobs]

    def render_score(self, result: Any, job: Job) -> Any:
        return {"echo": result}

    def render_v2(self, result: Any, job: Job) -> list[V2Tensor]:
        return []


def no_secret_anywhere(ing: Ingestion, *secrets: str) -> None:
    text = ing.text()
    for secret in secrets:
        assert secret not in text, f"a secret reached Azure Monitor: {secret[:6]}..."
    # The instrumentation key is the ingestion protocol's routing id: only in the envelope's iKey field.
    for envelope in ing.envelopes:
        leaks = [path for path, value in walk(envelope) if IKEY in str(value) and path != "iKey"]
        assert leaks == []


def test_runtime_requests_reach_azure_monitor_as_metrics_requests_and_logs(
    ingestion: Ingestion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    manifest = ModelManifest(name="echo", version=3, framework="sklearn", task="tabular")
    (model_dir / "model.json").write_text(manifest.to_json())
    key_file = tmp_path / "api-keys"
    key_file.write_text(f"# rotated monthly\n{API_KEY}\n")
    monkeypatch.setenv(telemetry.CONNECTION_STRING_ENV, ingestion.connection_string)
    monkeypatch.setenv("POD_NAME", "echo-7d9f-abcde")
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    # As the runtime's log_config sets it: its records do not reach the root logger.
    monkeypatch.setattr(logging.getLogger("scoring_runtime"), "propagate", False)
    monkeypatch.setattr(logging.getLogger("scoring_runtime"), "level", logging.INFO)
    # Setting .level directly skips setLevel()'s cache reset: earlier tests may have cached "INFO off".
    logging.getLogger().manager._clear_cache()  # type: ignore[attr-defined]  # private, absent from typeshed
    settings = RuntimeSettings(model_dir=model_dir, api_key_file=key_file, warmup=False, threads=2)
    app = ScoringServer(settings, loader=lambda s: EchoScorer.load(s.model_dir, manifest, s)).build()

    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "model never became ready"
            time.sleep(0.05)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        assert client.post("/score", json={"rows": [1, 2]}, headers=auth).status_code == 200
        assert client.post("/score", json={"rows": [3]}, headers=auth).status_code == 200
        assert client.post("/score", json={"rows": [1]}).status_code == 401
        assert client.post(f"/score?api_key={API_KEY}", json={"rows": [1]}).status_code == 401
        assert client.post("/score", content=b"{not json", headers=auth).status_code == 400
        assert client.post("/v2/models/echo/infer", json={"inputs": []}, headers=auth).status_code == 400
        # Careless log lines: the scrubber must catch all of them.
        log = logging.getLogger("scoring_runtime.server")
        log.warning("client retried with %s", API_KEY)
        log.warning("upstream said Authorization: Bearer %s", BEARER)
        log.warning("storage: DefaultEndpointsProtocol=https;AccountName=a;AccountKey=%s", ACCOUNT_KEY)
        log.warning("blob https://a.blob.core.windows.net/c/m.bin?sv=2022&sig=%s", SAS_SIG)
    # leaving the client ran the app's shutdown, which flushes telemetry

    assert set(ingestion.paths) == {"/v2.1/track"}
    ok = ingestion.metrics("scoring_requests_total")
    by_code = {(p["properties"]["endpoint"], p["properties"]["code"]): p["value"] for p in ok}
    assert by_code[("/score", "200")] == 2.0
    assert by_code[("/score", "401")] == 2.0
    assert by_code[("/score", "400")] == 1.0
    assert all(p["properties"]["method"] == "POST" for p in ok if p["properties"]["endpoint"] == "/score")
    latency = [p for p in ingestion.metrics("scoring_request_duration_seconds")
               if p["properties"].get("endpoint") == "/score"]
    assert sum(p["count"] for p in latency) == 5
    assert ingestion.metrics("scoring_model_load_seconds")
    assert {p["tags"]["ai.cloud.role"] for p in ok} == {"scoring-runtime"}
    assert {p["tags"]["ai.cloud.roleInstance"] for p in ok} == {"echo-7d9f-abcde"}

    requests = [e["data"]["baseData"] for e in ingestion.of_type("RequestData")]
    scored = [r for r in requests if r["name"] == "POST /score"]
    assert sorted(r["responseCode"] for r in scored) == ["200", "200", "400", "401", "401"]
    assert {r["success"] for r in scored if r["responseCode"] == "200"} == {True}
    assert {r["success"] for r in scored if r["responseCode"] != "200"} == {False}
    assert not [r for r in requests if "/health/" in r.get("url", "")]  # probes make no spans
    (infer,) = [r for r in requests if "/infer" in r.get("url", "")]
    assert infer["name"] == "POST /v2/models/{name}/infer"  # the route template, not the path
    assert "ended span" not in caplog.text

    messages = [e["data"]["baseData"]["message"] for e in ingestion.of_type("MessageData")]
    assert len([m for m in messages if m.startswith("client retried with")]) == 1  # once, not per logger
    assert any(m.startswith("model_loaded") for m in messages)  # the runtime's own INFO events
    assert all(REDACTED in m for m in messages if m.startswith(("client retried", "upstream said", "storage:", "blob")))
    no_secret_anywhere(ingestion, API_KEY, BEARER, ACCOUNT_KEY, SAS_SIG)
    assert scrub("# rotated monthly") == "# rotated monthly"  # the key file's comment is not a secret


def test_operator_reconciles_export_metrics_and_spans(ingestion: Ingestion) -> None:
    from scoring_operator import metrics as op

    t = telemetry.configure_telemetry(
        "scoring-operator", connection_string=ingestion.connection_string, metric_interval_s=3600, set_global=False
    )
    assert t is not None and telemetry.active() is t
    with telemetry.reconcile_span("team-a", "faq", "create"):
        op.RECONCILES.labels("success", "create").inc()
        op.RECONCILE_SECONDS.labels("create").observe(0.3)
        op.MODEL_VERSION.labels("team-a", "faq", "faq").set(4)
        op.MODELS.labels("Ready").set(1)
    with pytest.raises(RuntimeError), telemetry.reconcile_span("team-a", "broken", "update"):
        op.REGISTRY_ERRORS.labels("AccessDenied").inc()
        raise RuntimeError(f"registry refused token {BEARER}")
    assert t.force_flush()

    def value(metric: str, /, **labels: str) -> float:
        points = [p for p in ingestion.metrics(metric) if all(p["properties"].get(k) == v for k, v in labels.items())]
        assert points, f"{metric} {labels} not exported"
        return float(points[-1]["value"])

    # First export: the totals so far (other tests in this process may have counted too).
    from prometheus_client import REGISTRY

    total = REGISTRY.get_sample_value("scoring_operator_reconciles_total", {"result": "success", "trigger": "create"})
    assert value("scoring_operator_reconciles_total", result="success", trigger="create") == total
    assert value("scoring_operator_model_version", namespace="team-a", name="faq", model="faq") == 4.0
    assert value("scoring_operator_models", phase="Ready") == 1.0
    assert value("scoring_operator_registry_errors_total", reason="AccessDenied") >= 1.0
    durations = [p for p in ingestion.metrics("scoring_operator_reconcile_duration_seconds")
                 if p["properties"].get("trigger") == "create"]
    assert durations and durations[-1]["count"] >= 1

    reconciles = {e["data"]["baseData"]["name"]: e["data"]["baseData"] for e in ingestion.of_type("RequestData")}
    assert reconciles["reconcile ScoringModel team-a/faq"]["success"] is True
    assert reconciles["reconcile ScoringModel team-a/broken"]["success"] is False

    # Second export: only the change since the first (Azure Monitor aggregates deltas).
    op.RECONCILES.labels("success", "create").inc()
    assert t.force_flush()
    assert value("scoring_operator_reconciles_total", result="success", trigger="create") == 1.0
    no_secret_anywhere(ingestion, BEARER)


def test_without_a_connection_string_nothing_is_imported_or_exported(tmp_path: Path) -> None:
    code = (
        "import json, logging, os, sys\n"
        "os.environ.pop('APPLICATIONINSIGHTS_CONNECTION_STRING', None)\n"
        "from scoring_runtime import telemetry\n"
        "t = telemetry.configure_telemetry('scoring-runtime')\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "logging.getLogger('x').info('Authorization: Bearer abcdefghijklmnopqrstuvwxyz')\n"
        "heavy = sorted({m.split('.')[0] + '.' + m.split('.')[1] for m in sys.modules\n"
        "                if m.startswith(('opentelemetry', 'azure.')) and '.' in m})\n"
        "print(json.dumps({'active': t is not None, 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    line, report = out.stdout.strip().splitlines()
    assert line == f"Authorization: {REDACTED}"  # scrubbing is on even without export
    assert json.loads(report) == {"active": False, "heavy": []}
