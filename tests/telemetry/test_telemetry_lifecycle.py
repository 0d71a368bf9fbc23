"""configure_telemetry/shutdown_telemetry against bad configuration and a dead ingestion endpoint."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("azure.monitor.opentelemetry.exporter", reason="telemetry export needs the [azure] extra")

from prometheus_client import CollectorRegistry, Counter

from scoring_runtime import telemetry
from scoring_runtime.telemetry.scrub import clear_registered_secrets
from tests.telemetry.ingestion import IKEY


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "APPLICATIONINSIGHTS_SDKSTATS_DISABLED",
                "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"):
        monkeypatch.setenv(var, "true")
    yield
    telemetry.shutdown_telemetry()
    clear_registered_secrets()


@pytest.mark.parametrize(
    "connection_string",
    [
        "not a connection string",
        "InstrumentationKey=;IngestionEndpoint=https://127.0.0.1:9/",
        "InstrumentationKey=not-a-uuid-s3cret;IngestionEndpoint=https://127.0.0.1:9/",
    ],
)
def test_malformed_connection_string_warns_and_the_service_runs_on(
    connection_string: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(telemetry.CONNECTION_STRING_ENV, connection_string)
    with caplog.at_level(logging.WARNING, logger="scoring_runtime.telemetry"):
        assert telemetry.configure_telemetry("scoring-runtime") is None
    assert telemetry.active() is None
    with telemetry.span("still works") as current:
        assert current is None
    warning = next(r.getMessage() for r in caplog.records if "malformed" in r.getMessage())
    assert telemetry.CONNECTION_STRING_ENV in warning
    assert "not-a-uuid-s3cret" not in warning


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (an ingestion endpoint gone dark)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    server.close()


def test_shutdown_is_bounded_when_ingestion_never_answers(
    black_hole: int, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    Counter("requests", "requests", registry=registry).inc()
    configured = telemetry.configure_telemetry(
        "scoring-runtime",
        connection_string=f"InstrumentationKey={IKEY};IngestionEndpoint=http://127.0.0.1:{black_hole}/",
        prometheus_registry=registry,
        metric_interval_s=0,
    )
    assert configured is not None
    with telemetry.span("request"):
        logging.getLogger("scoring_runtime.test").warning("queued for export")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="scoring_runtime.telemetry"):
        telemetry.shutdown_telemetry(timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"shutdown took {elapsed:.1f} s against a dead endpoint"
    assert telemetry.active() is None
    assert any("did not take the last" in r.getMessage() for r in caplog.records)
