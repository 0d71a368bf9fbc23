"""HorizontalPodAutoscaler (autoscaling/v2) and PodDisruptionBudget (policy/v1)."""

from __future__ import annotations

from typing import Any

from scoring_operator import spec as api
from scoring_operator.builders import meta


def hpa(owner: meta.Owner, spec: api.ScoringModelSpec) -> dict[str, Any] | None:
    """An HPA when `spec.autoscaling` is set: CPU utilisation and/or in-flight requests per pod."""
    a = spec.autoscaling
    if a is None:
        return None
    metrics: list[dict[str, Any]] = []
    if a.target_cpu_utilization_percentage is not None:
        metrics.append({
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": a.target_cpu_utilization_percentage},
            },
        })
    if a.target_in_flight_requests is not None:
        # Served by a custom metrics adapter (e.g. prometheus-adapter) from the runtime's gauge.
        metrics.append({
            "type": "Pods",
            "pods": {
                "metric": {"name": api.IN_FLIGHT_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(a.target_in_flight_requests)},
            },
        })
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta.object_meta(owner, spec.model.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": metrics,
        },
    }


def pdb(owner: meta.Owner, spec: api.ScoringModelSpec) -> dict[str, Any] | None:
    """A PDB allowing one voluntary disruption at a time, only when more than one replica is kept."""
    if spec.min_replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta.object_meta(owner, spec.model.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": meta.selector_labels(owner)}},
    }
