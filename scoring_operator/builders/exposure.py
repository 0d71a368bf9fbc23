"""The Ingress or Gateway API HTTPRoute in front of a ScoringModel's Service, and its external URL.

Pure functions of the spec, like the other builders. The HTTPRoute takes its backends (and an
optional request mirror) as arguments so a progressive rollout can split traffic by weight and copy
a share of it to a shadow version through the same route; by default it sends everything to the
ScoringModel's own Service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scoring_operator import spec as api
from scoring_operator.builders import meta

INGRESS_API_VERSION = "networking.k8s.io/v1"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
HTTP_ROUTE_API_VERSION = f"{GATEWAY_API_GROUP}/v1"
#: ingress-nginx: how it speaks to the backend Service (HTTPS when the pods serve it, spec.tls).
NGINX_BACKEND_PROTOCOL = "nginx.ingress.kubernetes.io/backend-protocol"


@dataclass(frozen=True)
class RouteBackend:
    """One backendRef of the HTTPRoute rule: a Service port and its share of the traffic (weight)."""

    service: str
    port: int
    weight: int


@dataclass(frozen=True)
class RouteMirror:
    """A RequestMirror filter: copy `percent` of the requests to a Service port, answers discarded."""

    service: str
    port: int
    percent: int


def _service_ref(name: str, port: int) -> dict[str, Any]:
    return {"group": "", "kind": "Service", "name": name, "port": port}


def ingress(owner: meta.Owner, spec: api.ScoringModelSpec) -> dict[str, Any] | None:
    """The Ingress of `spec.exposure.ingress`, or None when the model asks for none."""
    ing = spec.exposure.ingress if spec.exposure else None
    if ing is None:
        return None
    # With spec.tls the pods speak HTTPS: the Service port says so (appProtocol https) for controllers
    # that read it, and NGINX's annotation tells ingress-nginx; a user's own value wins.
    annotations = dict(ing.annotations or {})
    if spec.tls is not None:
        annotations.setdefault(NGINX_BACKEND_PROTOCOL, "HTTPS")
    backend = {"service": {"name": owner.name, "port": {"number": spec.service.port}}}
    body: dict[str, Any] = {
        "rules": [{
            "host": ing.host,
            "http": {"paths": [{"path": ing.path, "pathType": "Prefix", "backend": backend}]},
        }],
    }
    if ing.class_name is not None:
        body = {"ingressClassName": ing.class_name, **body}
    if ing.tls_secret_name is not None:
        body["tls"] = [{"hosts": [ing.host], "secretName": ing.tls_secret_name}]
    return {
        "apiVersion": INGRESS_API_VERSION,
        "kind": "Ingress",
        "metadata": meta.object_meta(owner, spec.model.name, annotations or None),
        "spec": body,
    }


def http_route(
    owner: meta.Owner,
    spec: api.ScoringModelSpec,
    backends: Sequence[RouteBackend] | None = None,
    mirror: RouteMirror | None = None,
) -> dict[str, Any] | None:
    """The HTTPRoute of `spec.exposure.httpRoute`, or None when the model asks for none.

    `backends`: the weighted Services of the one rule (None: the model's own Service, weight 1).
    `mirror`: a RequestMirror filter copying `percent` of the requests to another Service.
    """
    route = spec.exposure.http_route if spec.exposure else None
    if route is None:
        return None
    if backends is None:
        backends = [RouteBackend(owner.name, spec.service.port, 1)]
    if not backends:
        raise ValueError("an HTTPRoute rule needs at least one backend")
    # With spec.tls the backends speak HTTPS: the Service port's appProtocol (https) tells the Gateway;
    # verifying the pods' certificate needs a BackendTLSPolicy naming the CA, which is not generated
    # (docs/operator.md, Exposure).
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "PathPrefix", "value": route.path}}],
        "backendRefs": [{**_service_ref(b.service, b.port), "weight": b.weight} for b in backends],
    }
    filters: list[dict[str, Any]] = []
    if route.path != "/":  # the runtime serves /score, /v2/...: strip the route's prefix
        filters.append({"type": "URLRewrite", "urlRewrite": {"path": {
            "type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}})
    if mirror is not None:
        filters.append({"type": "RequestMirror", "requestMirror": {
            "backendRef": _service_ref(mirror.service, mirror.port), "percent": mirror.percent}})
    if filters:
        rule["filters"] = filters
    parents = []
    for p in route.parent_refs:
        ref: dict[str, Any] = {"group": GATEWAY_API_GROUP, "kind": "Gateway", "name": p.name}
        if p.namespace is not None:
            ref["namespace"] = p.namespace
        if p.section_name is not None:
            ref["sectionName"] = p.section_name
        parents.append(ref)
    body: dict[str, Any] = {"parentRefs": parents}
    if route.hostnames:
        body["hostnames"] = list(route.hostnames)
    body["rules"] = [rule]
    return {
        "apiVersion": HTTP_ROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": meta.object_meta(owner, spec.model.name),
        "spec": body,
    }


def external_url(spec: api.ScoringModelSpec) -> str | None:
    """The URL clients outside the cluster use, or None (no exposure, or only wildcard host names).

    An Ingress with a TLS Secret, or an HTTPRoute with scheme https, is reached over HTTPS.
    """
    exposure = spec.exposure
    if exposure is None:
        return None
    if exposure.ingress is not None:
        scheme = "https" if exposure.ingress.tls_secret_name else "http"
        hosts, path = [exposure.ingress.host], exposure.ingress.path
    elif exposure.http_route is not None:
        scheme, hosts, path = exposure.http_route.scheme, exposure.http_route.hostnames or [], exposure.http_route.path
    else:
        return None
    host = next((h for h in hosts if not h.startswith("*.")), None)
    if host is None:
        return None
    return f"{scheme}://{host}{path.rstrip('/')}"
