"""Pure functions: a ScoringModel spec (+ resolved version, owner) -> the desired child objects.

No I/O here, so every variant (GPU, autoscaling, auth...) is unit-tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scoring_operator import spec as api
from scoring_operator.builders import canary, meta
from scoring_operator.builders.exposure import HTTP_ROUTE_API_VERSION, INGRESS_API_VERSION, http_route, ingress
from scoring_operator.builders.progress import CANARY, SHADOW, Decision
from scoring_operator.builders.scaling import hpa, pdb
from scoring_operator.builders.workload import deployment, service
from scoring_operator.config import OperatorConfig

__all__ = ["ChildRef", "Children", "desired_children"]


@dataclass(frozen=True)
class ChildRef:
    """An object kind the operator may own, by apiVersion/kind and name."""

    api_version: str
    kind: str
    name: str


@dataclass
class Children:
    """Objects to server-side apply (in order), and optional kinds to remove when owned."""

    apply: list[dict[str, Any]] = field(default_factory=list)
    prune: list[ChildRef] = field(default_factory=list)


def desired_children(
    owner: meta.Owner, spec: api.ScoringModelSpec, version: int, config: OperatorConfig,
    decision: Decision | None = None,
) -> Children:
    """Service first (the endpoint exists early), then Deployment, then HPA/PDB, then Ingress/HTTPRoute.

    The exposure comes last so that a cluster without the Gateway API CRDs still gets a working
    in-cluster model before the HTTPRoute fails. Optional kinds not asked for are pruned.
    With a progressive rollout (`decision`): the stable Deployment at `decision.stable_version`, the
    canary or shadow Deployment (and the shadow's Service and ConfigMap) beside it, or their removal.
    """
    stable_version = decision.stable_version if decision is not None else version
    stable_replicas = decision.stable_replicas if decision is not None else None
    out = Children(apply=[service(owner, spec)])
    shadow_cfg = spec.strategy == "Shadow" and not canary.routed(spec)
    if shadow_cfg:  # before the stable pods that mount it
        out.apply.append(canary.shadow_config(owner, spec, decision.shadow_percent if decision else 0.0))
    elif decision is not None and decision.status is not None:
        out.prune.append(ChildRef("v1", "ConfigMap", canary.shadow_name(owner)))
    out.apply.append(deployment(owner, spec, stable_version, config, replicas=stable_replicas))
    track = decision.candidate if decision is not None else None
    # Canary/shadow children can only exist after a progressive rollout (status.rollout records it).
    leftovers = canary.progressive(spec) or (decision is not None and decision.status is not None)
    for kind, name in ((CANARY, canary.canary_name(owner)), (SHADOW, canary.shadow_name(owner))):
        wants_service = kind == SHADOW or canary.routed(spec)
        if track is not None and track.kind == kind:
            if wants_service:
                out.apply.append(canary.candidate_service(owner, spec, kind))
            out.apply.append(canary.candidate_deployment(owner, spec, track.version, track.replicas, kind, config))
        elif leftovers:
            out.prune.append(ChildRef("apps/v1", "Deployment", name))
            out.prune.append(ChildRef("v1", "Service", name))
    # With an HTTPRoute the canary has its own Service and the route splits by weight (and mirrors
    # to the shadow); otherwise the one Service splits by replica ratio.
    route_plan = canary.route_plan(
        owner, spec,
        decision.canary_weight if decision is not None else 0.0,
        decision.shadow_percent if decision is not None else 0.0,
    )
    for kind, api_version, obj in (
        ("HorizontalPodAutoscaler", "autoscaling/v2", hpa(owner, spec)),
        ("PodDisruptionBudget", "policy/v1", pdb(owner, spec)),
        ("Ingress", INGRESS_API_VERSION, ingress(owner, spec)),
        ("HTTPRoute", HTTP_ROUTE_API_VERSION, http_route(owner, spec, *route_plan)),
    ):
        if obj is None:
            out.prune.append(ChildRef(api_version, kind, owner.name))
        else:
            out.apply.append(obj)
    return out
