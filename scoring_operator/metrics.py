"""The operator's Prometheus metrics: every definition lives here (exporters build on this module).

Served on `--metrics-port` (default 8080) at `/metrics`, next to kopf's liveness endpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import REGISTRY as DEFAULT_REGISTRY

from scoring_operator.spec import PHASES

REGISTRY: CollectorRegistry = DEFAULT_REGISTRY

RECONCILES = Counter(
    "scoring_operator_reconciles",
    "ScoringModel reconciles by result (success, retry: a temporary failure, failed: needs a human) and trigger.",
    ["result", "trigger"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "scoring_operator_reconcile_duration_seconds",
    "Time to reconcile one ScoringModel (resolve, apply children, read rollout, write status).",
    ["trigger"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
MODELS = Gauge(
    "scoring_operator_models",
    "ScoringModels handled by this operator, by status phase.",
    ["phase"],
    registry=REGISTRY,
)
MODEL_VERSION = Gauge(
    "scoring_operator_model_version",
    "The model version each ScoringModel serves (resolved from its pinned version or tracked label).",
    ["namespace", "name", "model"],
    registry=REGISTRY,
)
REGISTRY_ERRORS = Counter(
    "scoring_operator_registry_errors",
    "Model registry failures while resolving versions, by reason (ModelNotFound, RegistryUnavailable...).",
    ["reason"],
    registry=REGISTRY,
)
KUBE_ERRORS = Counter(
    "scoring_operator_kube_errors",
    "Kubernetes API failures while applying children or writing status, by reason.",
    ["reason"],
    registry=REGISTRY,
)

ROLLOUT_SLOTS = Gauge(
    "scoring_operator_rollout_slots",
    "Rollouts of a new model version under SCORING_OPERATOR_MAX_CONCURRENT_ROLLOUTS: running (holding a slot) "
    "and queued (waiting for one).",
    ["state"],
    registry=REGISTRY,
)
ROLLOUTS = Counter(
    "scoring_operator_progressive_rollouts",
    "Canary/shadow rollouts that ended, by strategy and outcome (Promoted, AnalysisFailed, Aborted, ...).",
    ["strategy", "outcome"],
    registry=REGISTRY,
)
ANALYSES = Counter(
    "scoring_operator_analyses",
    "Canary/shadow analyses taken, by verdict (Passed, Failed, Inconclusive).",
    ["verdict"],
    registry=REGISTRY,
)


class ModelTracker:
    """Keeps the per-phase and per-model gauges consistent with what the operator last saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase: dict[tuple[str, str], str] = {}
        self._model: dict[tuple[str, str], tuple[str, int]] = {}
        for phase in PHASES:
            MODELS.labels(phase).set(0)

    def observe(self, key: tuple[str, str], phase: str | None, model: tuple[str, int] | None) -> None:
        with self._lock:
            if phase:
                self._phase[key] = phase
            old = self._model.get(key)
            if old is not None and old != model:
                MODEL_VERSION.remove(key[0], key[1], old[0])
                del self._model[key]
            if model is not None:
                self._model[key] = model
                MODEL_VERSION.labels(key[0], key[1], model[0]).set(model[1])
            self._publish()

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._phase.pop(key, None)
            old = self._model.pop(key, None)
            if old is not None:
                MODEL_VERSION.remove(key[0], key[1], old[0])
            self._publish()

    def _publish(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._phase.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            MODELS.labels(phase).set(n)

    def phases(self) -> Iterable[tuple[tuple[str, str], str]]:
        with self._lock:
            return list(self._phase.items())


_serving: set[tuple[str, int]] = set()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a daemon thread, once per address (port 0 disables it)."""
    if port and (addr, port) not in _serving:
        start_http_server(port, addr=addr, registry=REGISTRY)
        _serving.add((addr, port))
