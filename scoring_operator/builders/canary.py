"""The extra children of a canary or shadow rollout, and the HTTPRoute plan for them.

- Canary: Deployment `NAME-canary` with the new version. Its pods carry the ScoringModel's
  instance label, so the one Service spreads requests over stable and canary pods (the replica
  split). With an HTTPRoute in front (`routed`), they get instance `NAME-canary` instead and their
  own Service `NAME-canary`, and the route's weights split the traffic exactly.
- Shadow: Deployment and Service `NAME-shadow` (instance `NAME-shadow`: never selected by the main
  Service), and the ConfigMap `NAME-shadow` the stable pods read (SCORING_SHADOW_CONFIG_FILE) to
  know where to copy requests to, re-read on change, so shadowing starts and stops without a restart.
  Its pods take rollout.shadow.resources when set (e.g. a small CPU request: a low CPU weight where
  it shares nodes with the stable pods), spec.resources otherwise.

Every scoring pod carries `scoring.dev/track`: stable, canary or shadow. Stable pods get it (and
the shadow ConfigMap's volume) only when spec.rollout asks for Canary or Shadow, so turning the
operator up on existing ScoringModels changes none of their pods.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from scoring_operator import spec as api
from scoring_operator.builders import meta
from scoring_operator.builders.exposure import RouteBackend, RouteMirror
from scoring_operator.builders.pod import RUNTIME_CONTAINER, pod_template
from scoring_operator.config import OperatorConfig

LABEL_TRACK = f"{api.GROUP}/track"
SHADOW_DIR = "/etc/scoring/shadow"
SHADOW_KEY = "shadow.json"
SHADOW_CONFIG_ENV = "SCORING_SHADOW_CONFIG_FILE"
SHADOW_VOLUME = "shadow-config"
INSTANCE = "app.kubernetes.io/instance"


def canary_name(owner: meta.Owner) -> str:
    return f"{owner.name}-canary"


def shadow_name(owner: meta.Owner) -> str:
    return f"{owner.name}-shadow"


def routed(spec: api.ScoringModelSpec) -> bool:
    """Whether an HTTPRoute (spec.exposure.httpRoute, issue 14b) splits and mirrors the traffic."""
    return spec.exposure is not None and spec.exposure.http_route is not None


def progressive(spec: api.ScoringModelSpec) -> bool:
    return spec.strategy in ("Canary", "Shadow")


def stable_pod_extras(owner: meta.Owner, spec: api.ScoringModelSpec, template: dict[str, Any]) -> dict[str, Any]:
    """The stable pod template with its track label and, under Shadow, the shadow ConfigMap mounted."""
    if not progressive(spec):
        return template
    template["metadata"]["labels"][LABEL_TRACK] = "stable"
    if spec.strategy == "Shadow" and not routed(spec):
        pod = template["spec"]
        pod["volumes"].append({
            "name": SHADOW_VOLUME,
            "configMap": {"name": shadow_name(owner), "optional": True, "defaultMode": 0o444},
        })
        runtime = next(c for c in pod["containers"] if c["name"] == RUNTIME_CONTAINER)
        runtime["volumeMounts"].append({"name": SHADOW_VOLUME, "mountPath": SHADOW_DIR, "readOnly": True})
        runtime["env"].append({"name": SHADOW_CONFIG_ENV, "value": f"{SHADOW_DIR}/{SHADOW_KEY}"})
    return template


def _named(owner: meta.Owner, spec: api.ScoringModelSpec, name: str, track: str,
           annotations: dict[str, str] | None = None) -> dict[str, Any]:
    md = meta.object_meta(owner, spec.model.name, annotations)
    md["name"] = name
    md["labels"][LABEL_TRACK] = track
    return md


def _instance(owner: meta.Owner, spec: api.ScoringModelSpec, track: str) -> str:
    if track == "shadow":
        return shadow_name(owner)
    return canary_name(owner) if routed(spec) else owner.name


def candidate_selector(owner: meta.Owner, spec: api.ScoringModelSpec, track: str) -> dict[str, str]:
    """The (immutable) selector of the canary or shadow Deployment: its pods and no stable one."""
    return {**meta.selector_labels(owner), INSTANCE: _instance(owner, spec, track), LABEL_TRACK: track}


def _candidate_spec(spec: api.ScoringModelSpec, track: str) -> api.ScoringModelSpec:
    """The spec the candidate's pods are built from: a shadow's own resources (rollout.shadow.resources)."""
    shadow = spec.rollout.shadow if spec.rollout is not None else None
    if track == "shadow" and shadow is not None and shadow.resources is not None:
        return spec.model_copy(update={"resources": shadow.resources})
    return spec


def candidate_deployment(owner: meta.Owner, spec: api.ScoringModelSpec, version: int, replicas: int, track: str,
                         config: OperatorConfig) -> dict[str, Any]:
    """`NAME-canary` or `NAME-shadow`: the new version, beside the stable Deployment."""
    name = shadow_name(owner) if track == "shadow" else canary_name(owner)
    template = pod_template(owner, _candidate_spec(spec, track), version, config)
    template["metadata"]["labels"].update({INSTANCE: _instance(owner, spec, track), LABEL_TRACK: track})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _named(owner, spec, name, track, {meta.ANNOTATION_MODEL_VERSION: str(version)}),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 1,
            "progressDeadlineSeconds": max(600, spec.runtime.startup_timeout_seconds + 120),
            "selector": {"matchLabels": candidate_selector(owner, spec, track)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": template,
        },
    }


def candidate_service(owner: meta.Owner, spec: api.ScoringModelSpec, track: str) -> dict[str, Any]:
    """The ClusterIP Service of the shadow (where stable pods send copies) or of a routed canary."""
    name = shadow_name(owner) if track == "shadow" else canary_name(owner)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _named(owner, spec, name, track),
        "spec": {
            "type": "ClusterIP",
            "selector": candidate_selector(owner, spec, track),
            "ports": [{"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def shadow_url(owner: meta.Owner, spec: api.ScoringModelSpec) -> str:
    """The shadow Service as the stable pods reach it: https when the pods serve HTTPS (spec.tls)."""
    scheme = "https" if spec.tls is not None else "http"
    return f"{scheme}://{shadow_name(owner)}.{owner.namespace}.svc:{spec.service.port}"


def shadow_config(owner: meta.Owner, spec: api.ScoringModelSpec, percent: float) -> dict[str, Any]:
    """The ConfigMap the stable pods read: where to copy requests to and how many ("" = none)."""
    text = json.dumps({"url": shadow_url(owner, spec), "percent": percent}) if percent > 0 else ""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _named(owner, spec, shadow_name(owner), "shadow"),
        "data": {SHADOW_KEY: text},
    }


# ------------------------------------------------------------------------------ the HTTPRoute plan
def route_plan(owner: meta.Owner, spec: api.ScoringModelSpec, canary_weight: float = 0.0,
               shadow_percent: float = 0.0) -> tuple[list[RouteBackend], RouteMirror | None]:
    """The HTTPRoute's backends (stable and canary weights) and mirror (the shadow) for this moment."""
    port = spec.service.port
    backends: Sequence[RouteBackend]
    weight = max(0, min(100, round(canary_weight)))
    if weight <= 0:
        backends = [RouteBackend(owner.name, port, 1)]
    elif weight >= 100:
        backends = [RouteBackend(canary_name(owner), port, 1)]
    else:
        backends = [RouteBackend(owner.name, port, 100 - weight), RouteBackend(canary_name(owner), port, weight)]
    percent = max(0, min(100, round(shadow_percent)))
    mirror = RouteMirror(shadow_name(owner), port, max(1, percent)) if shadow_percent > 0 else None
    return list(backends), mirror


__all__ = [
    "LABEL_TRACK",
    "RouteBackend",
    "RouteMirror",
    "canary_name",
    "candidate_deployment",
    "candidate_service",
    "route_plan",
    "routed",
    "shadow_config",
    "shadow_name",
    "stable_pod_extras",
]
