"""The pydantic spec models: defaults, and bad specs refused with messages that say how to fix them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from scoring_operator.spec import LocalRegistry, ScoringModelSpec, format_validation_error, parse_spec
from tests.operator.conftest import make_spec

REGISTRY = {"type": "local", "claimName": "registry"}


def _error(body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        parse_spec(body)
    return format_validation_error(exc.value)


def _model(**kw: Any) -> dict[str, Any]:
    return {"registry": REGISTRY, "name": "faq", **kw}


def test_minimal_spec_gets_defaults() -> None:
    spec = make_spec()
    assert isinstance(spec.model.registry, LocalRegistry)
    assert spec.model.label == "latest" and spec.model.version is None
    assert spec.model.poll_interval == 60
    assert spec.replicas is None and spec.autoscaling is None
    assert spec.min_replicas == 1
    assert spec.service.type == "ClusterIP" and spec.service.port == 80
    assert spec.runtime.startup_timeout_seconds == 600
    assert spec.gpu_count == 0


def test_camel_case_round_trip() -> None:
    spec = make_spec(runtime={"batching": {"maxBatchSize": 8, "maxBatchDelayMs": 3}, "imagePullPolicy": "Always"})
    wire = spec.wire()
    assert wire["runtime"]["batching"] == {"maxBatchSize": 8, "maxBatchDelayMs": 3}
    assert wire["runtime"]["imagePullPolicy"] == "Always"
    assert ScoringModelSpec.model_validate(wire) == spec


@pytest.mark.parametrize(
    "model",
    [_model(version=1, label="latest"), _model()],
    ids=["both", "neither"],
)
def test_version_xor_label(model: dict[str, Any]) -> None:
    msg = _error({"model": model})
    assert "spec.model: set exactly one of spec.model.version (pin a version) or spec.model.label" in msg


def test_replicas_xor_autoscaling() -> None:
    msg = _error({"model": _model(label="latest"), "replicas": 2,
                  "autoscaling": {"maxReplicas": 3, "targetInFlightRequests": 4}})
    assert "set spec.replicas or spec.autoscaling, not both" in msg


def test_autoscaling_min_above_max() -> None:
    msg = _error({"model": _model(label="x"), "autoscaling": {"minReplicas": 5, "maxReplicas": 2,
                                                                 "targetInFlightRequests": 4}})
    assert "spec.autoscaling: autoscaling.minReplicas must not exceed autoscaling.maxReplicas (5 > 2)" in msg


def test_autoscaling_needs_a_target() -> None:
    msg = _error({"model": _model(label="x"), "autoscaling": {"maxReplicas": 2}})
    assert "autoscaling needs a target" in msg


def test_cpu_target_needs_cpu_requests() -> None:
    body = {"model": _model(label="x"), "autoscaling": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 60}}
    assert "needs spec.resources.requests.cpu" in _error(body)
    body["resources"] = {"requests": {"cpu": "250m"}}
    assert parse_spec(body).autoscaling is not None


@pytest.mark.parametrize("name", ["SCORING_PORT", "SCORING_WORKERS", "SCORING_API_KEY_FILE", "SCORING_ALLOW_PICKLE"])
def test_managed_env_vars_are_refused(name: str) -> None:
    msg = _error({"model": _model(label="x"), "runtime": {"env": [{"name": name, "value": "1"}]}})
    assert f"env var {name} is set by the operator" in msg


def test_env_duplicates_and_value_conflicts() -> None:
    dup = [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]
    assert "duplicate env var names: A" in _error({"model": _model(label="x"), "runtime": {"env": dup}})
    both = [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    assert "set value or valueFrom, not both" in _error({"model": _model(label="x"), "runtime": {"env": both}})
    empty = [{"name": "A", "valueFrom": {}}]
    assert "exactly one of secretKeyRef" in _error({"model": _model(label="x"), "runtime": {"env": empty}})


def test_gpu_placement_only_with_gpus() -> None:
    msg = _error({"model": _model(label="x"), "gpu": {"count": 0, "nodeSelector": {"a": "b"}}})
    assert "gpu.nodeSelector and gpu.tolerations only apply when gpu.count > 0" in msg
    assert make_spec(gpu={"count": 2, "tolerations": []}).gpu_count == 2


def test_batch_must_fit_the_queue() -> None:
    msg = _error({"model": _model(label="x"), "runtime": {"batching": {"maxBatchSize": 64, "maxQueueRows": 10}}})
    assert "batching.maxQueueRows must be at least batching.maxBatchSize" in msg
    assert "default queue holds 1024" in _error({"model": _model(label="x"),
                                                 "runtime": {"batching": {"maxBatchSize": 2048}}})


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ({"type": "local", "claimName": "r", "path": "a/../b"}, "registry.path"),
        ({"type": "local", "claimName": "r", "path": "/abs"}, "registry.path"),
        ({"type": "local", "claimName": "Bad_Claim"}, "registry.claimName"),
        ({"type": "s3", "bucket": "w"}, "Input tag 's3' found using 'type' does not match any of the expected tags"),
        ({"claimName": "r"}, "registry: Unable to extract tag using discriminator 'type'"),
    ],
)
def test_bad_registry(registry: dict[str, Any], expected: str) -> None:
    assert expected in _error({"model": {"registry": registry, "name": "faq", "label": "x"}})


def test_bad_quantity_and_unknown_field() -> None:
    assert "'lots' is not a Kubernetes quantity" in _error(
        {"model": _model(label="x"), "resources": {"requests": {"cpu": "lots"}}}
    )
    assert "spec.replica: Extra inputs are not permitted" in _error({"model": _model(label="x"), "replica": 2})


def test_quantities_accept_ints_and_strings() -> None:
    spec = make_spec(resources={"requests": {"cpu": 2, "memory": "1.5Gi"}, "limits": {"memory": "2G"}})
    assert spec.resources is not None and spec.resources.requests == {"cpu": 2, "memory": "1.5Gi"}


def test_bad_enum_and_model_name() -> None:
    assert "spec.service.type" in _error({"model": _model(label="x"), "service": {"type": "Ingress"}})
    assert "spec.model.name" in _error({"model": {"registry": REGISTRY, "name": "Has Spaces", "label": "x"}})
