"""The Deployment and Service of a ScoringModel."""

from __future__ import annotations

from typing import Any

from scoring_operator import spec as api
from scoring_operator.builders import meta
from scoring_operator.builders.pod import pod_template
from scoring_operator.config import OperatorConfig

REVISION_HISTORY = 3


def deployment(owner: meta.Owner, spec: api.ScoringModelSpec, version: int, config: OperatorConfig) -> dict[str, Any]:
    """The scoring Deployment; `replicas` is left out under autoscaling so the HPA owns it."""
    body: dict[str, Any] = {
        "revisionHistoryLimit": REVISION_HISTORY,
        # A slow model load must not count as a stuck rollout before the startupProbe gives up.
        "progressDeadlineSeconds": max(600, spec.runtime.startup_timeout_seconds + 120),
        "selector": {"matchLabels": meta.selector_labels(owner)},
        # Zero-downtime model swaps: a new pod must be ready before an old one goes.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": pod_template(owner, spec, version, config),
    }
    if spec.autoscaling is None:
        body = {"replicas": 1 if spec.replicas is None else spec.replicas, **body}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta.object_meta(owner, spec.model.name, {meta.ANNOTATION_MODEL_VERSION: str(version)}),
        "spec": body,
    }


def service(owner: meta.Owner, spec: api.ScoringModelSpec) -> dict[str, Any]:
    """The Service named after the ScoringModel: the endpoint in its status."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.object_meta(owner, spec.model.name, spec.service.annotations),
        "spec": {
            "type": spec.service.type,
            "selector": meta.selector_labels(owner),
            "ports": [{"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
