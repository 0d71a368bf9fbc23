"""Pure functions: a ScoringModel spec (+ resolved version, owner) -> the desired child objects.

No I/O here, so every variant (GPU, autoscaling, auth...) is unit-tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scoring_operator import spec as api
from scoring_operator.builders import meta
from scoring_operator.builders.exposure import HTTP_ROUTE_API_VERSION, INGRESS_API_VERSION, http_route, ingress
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
    owner: meta.Owner, spec: api.ScoringModelSpec, version: int, config: OperatorConfig
) -> Children:
    """Service first (the endpoint exists early), then Deployment, then HPA/PDB, then Ingress/HTTPRoute.

    The exposure comes last so that a cluster without the Gateway API CRDs still gets a working
    in-cluster model before the HTTPRoute fails. Optional kinds not asked for are pruned.
    """
    out = Children(apply=[service(owner, spec), deployment(owner, spec, version, config)])
    for kind, api_version, obj in (
        ("HorizontalPodAutoscaler", "autoscaling/v2", hpa(owner, spec)),
        ("PodDisruptionBudget", "policy/v1", pdb(owner, spec)),
        ("Ingress", INGRESS_API_VERSION, ingress(owner, spec)),
        ("HTTPRoute", HTTP_ROUTE_API_VERSION, http_route(owner, spec)),
    ):
        if obj is None:
            out.prune.append(ChildRef(api_version, kind, owner.name))
        else:
            out.apply.append(obj)
    return out
