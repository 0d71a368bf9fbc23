"""The Deployment and Service of a ScoringModel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scoring_operator import spec as api
from scoring_operator.builders import meta
from scoring_operator.builders.canary import stable_pod_extras
from scoring_operator.builders.pod import pod_template
from scoring_operator.config import FIELD_MANAGER, OperatorConfig

REVISION_HISTORY = 3
#: Field manager that briefly holds spec.replicas while it passes from the operator to the HPA.
HANDOFF_MANAGER = "scoring-operator-handoff"


def deployment(owner: meta.Owner, spec: api.ScoringModelSpec, version: int, config: OperatorConfig,
               replicas: int | None = None) -> dict[str, Any]:
    """The scoring (stable) Deployment; `replicas` is left out under autoscaling so the HPA owns it.

    `replicas` overrides spec.replicas while a canary takes part of the pods.
    """
    body: dict[str, Any] = {
        "revisionHistoryLimit": REVISION_HISTORY,
        # A slow model load must not count as a stuck rollout before the startupProbe gives up.
        "progressDeadlineSeconds": max(600, spec.runtime.startup_timeout_seconds + 120),
        "selector": {"matchLabels": meta.selector_labels(owner)},
        # Zero-downtime model swaps: a new pod must be ready before an old one goes.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": stable_pod_extras(owner, spec, pod_template(owner, spec, version, config)),
    }
    if spec.autoscaling is None:
        wanted = replicas if replicas is not None else (1 if spec.replicas is None else spec.replicas)
        body = {"replicas": wanted, **body}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta.object_meta(owner, spec.model.name, {meta.ANNOTATION_MODEL_VERSION: str(version)}),
        "spec": body,
    }


def owns_replicas(dep: Mapping[str, Any] | None, manager: str = FIELD_MANAGER) -> bool:
    """True when `manager` owns the Deployment's spec.replicas through server-side apply."""
    for entry in ((dep or {}).get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
            return True
    return False


def replicas_handoff(
    owner: meta.Owner, spec: api.ScoringModelSpec, live: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The apply (as HANDOFF_MANAGER) that keeps spec.replicas when autoscaling takes over, or None.

    Why: once the operator's apply stops listing replicas, a field it owned alone is reset to the
    default 1 until the HPA acts. Co-owning the live value (clamped to the HPA's range) under another
    manager first keeps it, and the HPA's first scale update then takes the field from that manager.
    """
    a = spec.autoscaling
    if a is None or live is None or not owns_replicas(live):
        return None
    current = (live.get("spec") or {}).get("replicas")
    replicas = min(max(1 if current is None else int(current), a.min_replicas), a.max_replicas)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": owner.name, "namespace": owner.namespace},
        "spec": {"replicas": replicas},
    }


def service(owner: meta.Owner, spec: api.ScoringModelSpec) -> dict[str, Any]:
    """The Service named after the ScoringModel: the endpoint in its status."""
    port: dict[str, Any] = {"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}
    if spec.tls is not None:  # the pods speak HTTPS: ingress controllers and meshes read this
        port["appProtocol"] = "https"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.object_meta(owner, spec.model.name, spec.service.annotations),
        "spec": {
            "type": spec.service.type,
            "selector": meta.selector_labels(owner),
            "ports": [port],
        },
    }


def with_node_ports(svc: dict[str, Any], live: Mapping[str, Any] | None) -> dict[str, Any]:
    """`svc` with the nodePorts the live Service allocated, per port name, kept.

    Why: repairing a Service replaces its whole ports list; without them the apiserver would pick new
    nodePorts, breaking whatever reaches the model through the old ones.
    """
    if svc.get("kind") != "Service":
        return svc
    live_ports = [p for p in ((live or {}).get("spec") or {}).get("ports") or [] if p.get("nodePort")]
    if not live_ports or svc["spec"].get("type") not in ("NodePort", "LoadBalancer"):
        return svc

    def allocated(port: Mapping[str, Any]) -> int | None:
        # Same name and port first; else the first of that name (its port was edited: what is repaired).
        same = [p for p in live_ports if p.get("name") == port.get("name")]
        exact = [p for p in same if p.get("port") == port.get("port")]
        return int((exact or same)[0]["nodePort"]) if same else None

    ports = [{**p, "nodePort": n} if (n := allocated(p)) is not None else p for p in svc["spec"]["ports"]]
    return {**svc, "spec": {**svc["spec"], "ports": ports}}
