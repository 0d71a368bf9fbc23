"""spec.exposure without a cluster: the exact Ingress and HTTPRoute built, weights and mirrors, the URL, and
what the spec refuses (the apiserver's side of the same rules is in test_operator_spec_agreement.py and
test_operator_exposure_cluster.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from scoring_operator import spec as api
from scoring_operator.builders import desired_children, meta
from scoring_operator.builders.exposure import RouteBackend, RouteMirror, external_url, http_route, ingress
from scoring_operator.builders.meta import Owner
from scoring_operator.builders.status import Observation, Resolved, Rollout, compute_status, transition_events
from scoring_operator.config import OperatorConfig
from tests.operator.conftest import make_spec

GATEWAY = {"parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}]}


def test_no_exposure_builds_nothing(owner: Owner) -> None:
    spec = make_spec()
    assert ingress(owner, spec) is None and http_route(owner, spec) is None and external_url(spec) is None
    assert external_url(make_spec(exposure={})) is None


def test_ingress_with_cert_manager(owner: Owner) -> None:
    annotations = {"cert-manager.io/cluster-issuer": "letsencrypt", "nginx.ingress.kubernetes.io/proxy-body-size": "8m"}
    spec = make_spec(service={"port": 8000}, exposure={"ingress": {
        "className": "nginx", "host": "faq.example.com", "tlsSecretName": "faq-tls", "annotations": annotations}})
    ing = ingress(owner, spec)
    assert ing is not None
    assert (ing["apiVersion"], ing["kind"]) == ("networking.k8s.io/v1", "Ingress")
    assert ing["metadata"]["annotations"] == annotations
    assert ing["metadata"]["ownerReferences"] == [meta.owner_reference(owner)]
    assert ing["metadata"]["labels"] == meta.labels(owner, "faq")
    assert ing["spec"] == {
        "ingressClassName": "nginx",
        "rules": [{"host": "faq.example.com", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "faq", "port": {"number": 8000}}}}]}}],
        "tls": [{"hosts": ["faq.example.com"], "secretName": "faq-tls"}],
    }
    assert external_url(spec) == "https://faq.example.com"


def test_plain_ingress_defaults(owner: Owner) -> None:
    spec = make_spec(exposure={"ingress": {"host": "faq.internal", "path": "/models/faq/"}})
    ing = ingress(owner, spec)
    assert ing is not None
    assert "annotations" not in ing["metadata"]
    assert "ingressClassName" not in ing["spec"] and "tls" not in ing["spec"]
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/models/faq/"
    assert external_url(spec) == "http://faq.internal/models/faq"
    assert external_url(make_spec(exposure={"ingress": {"host": "*.example.com"}})) is None


def test_http_route_defaults_to_the_models_service(owner: Owner) -> None:
    spec = make_spec(exposure={"httpRoute": {**GATEWAY, "hostnames": ["*.example.com", "faq.example.com"]}})
    route = http_route(owner, spec)
    assert route is not None
    assert (route["apiVersion"], route["kind"]) == ("gateway.networking.k8s.io/v1", "HTTPRoute")
    assert route["metadata"]["ownerReferences"] == [meta.owner_reference(owner)]
    assert route["spec"] == {
        "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public",
                        "namespace": "gateways", "sectionName": "https"}],
        "hostnames": ["*.example.com", "faq.example.com"],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [{"group": "", "kind": "Service", "name": "faq", "port": 80, "weight": 1}],
        }],
    }
    assert external_url(spec) == "https://faq.example.com", "the first host name that is not a wildcard"
    assert ingress(owner, spec) is None


def test_http_route_weights_mirror_and_prefix_rewrite(owner: Owner) -> None:
    spec = make_spec(exposure={"httpRoute": {"parentRefs": [{"name": "gw"}], "path": "/faq", "scheme": "http",
                                             "hostnames": ["models.example.com"]}})
    route = http_route(owner, spec, backends=[RouteBackend("faq", 80, 90), RouteBackend("faq-canary", 80, 10)],
                       mirror=RouteMirror("faq-shadow", 80, 25))
    assert route is not None
    (rule,) = route["spec"]["rules"]
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/faq"}}]
    assert rule["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "faq", "port": 80, "weight": 90},
        {"group": "", "kind": "Service", "name": "faq-canary", "port": 80, "weight": 10},
    ]
    assert rule["filters"] == [
        {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}},
        {"type": "RequestMirror", "requestMirror": {
            "backendRef": {"group": "", "kind": "Service", "name": "faq-shadow", "port": 80}, "percent": 25}},
    ]
    assert external_url(spec) == "http://models.example.com/faq"
    with pytest.raises(ValueError, match="at least one backend"):
        http_route(owner, spec, backends=[])
    no_hosts = make_spec(exposure={"httpRoute": GATEWAY})
    assert "hostnames" not in http_route(owner, no_hosts)["spec"]  # type: ignore[index]
    assert external_url(no_hosts) is None


def test_children_apply_the_exposure_last_and_prune_the_other_kind(owner: Owner, config: OperatorConfig) -> None:
    with_ingress = desired_children(owner, make_spec(exposure={"ingress": {"host": "a.example.com"}}), 1, config)
    assert [c["kind"] for c in with_ingress.apply] == ["Service", "Deployment", "Ingress"]
    assert [r.kind for r in with_ingress.prune] == ["HorizontalPodAutoscaler", "PodDisruptionBudget", "HTTPRoute"]
    with_route = desired_children(owner, make_spec(exposure={"httpRoute": GATEWAY}), 1, config)
    assert [c["kind"] for c in with_route.apply] == ["Service", "Deployment", "HTTPRoute"]
    assert [(r.api_version, r.kind) for r in with_route.prune][-1] == ("networking.k8s.io/v1", "Ingress")


def _error(exposure: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        make_spec(exposure=exposure)
    return api.format_validation_error(info.value)


@pytest.mark.parametrize(("exposure", "message"), [
    ({"ingress": {"host": "a.example.com"}, "httpRoute": GATEWAY},
     "spec.exposure: set spec.exposure.ingress or spec.exposure.httpRoute, not both"),
    ({"ingress": {"host": "Faq.Example.com"}}, "spec.exposure.ingress.host: 'Faq.Example.com' is not a host name"),
    ({"ingress": {"host": "10.0.0.1:80"}}, "is not a host name"),
    ({"ingress": {"host": "a.*.example.com"}}, "is not a host name"),
    ({"ingress": {"host": "a.example.com", "path": "models"}}, "is not a URL path"),
    ({"ingress": {"host": "a.example.com", "path": "/a/../b"}}, "is not a URL path"),
    ({"ingress": {"host": "a.example.com", "path": "/a//b"}}, "is not a URL path"),
    ({"ingress": {"host": "a.example.com", "tlsSecretName": "Bad_Name"}}, "is not a Kubernetes name"),
    ({"ingress": {}}, "spec.exposure.ingress.host: Field required"),
    ({"httpRoute": {"parentRefs": []}}, "spec.exposure.httpRoute.parentRefs: List should have at least 1 item"),
    ({"httpRoute": {**GATEWAY, "hostnames": ["ok.example.com", "under_score.example.com"]}},
     "spec.exposure.httpRoute.hostnames.1: 'under_score.example.com' is not a host name"),
    ({"httpRoute": {"parentRefs": [{"name": "gw", "namespace": "a.b"}]}}, "is not a DNS label"),
    ({"httpRoute": {**GATEWAY, "scheme": "ftp"}}, "spec.exposure.httpRoute.scheme"),
])
def test_bad_exposure_is_refused_with_a_clear_message(exposure: dict[str, Any], message: str) -> None:
    assert message in _error(exposure)


def test_status_shows_the_url_once_exposed(owner: Owner) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    obs = Observation(1, resolved=Resolved("faq", 1, "version"), applied=("Service", "Deployment", "Ingress"),
                      rollout=Rollout("Complete", 1, 1, "1 of 1 replicas ready"), endpoint="http://faq.ml.svc:80",
                      url="https://faq.example.com")
    status = compute_status({}, obs, now)
    assert status["url"] == "https://faq.example.com"
    ready = [e for e in transition_events({}, status) if e[1] == "Ready"]
    assert ready and "https://faq.example.com" in ready[0][2]
    without = compute_status(status, Observation(2, resolved=Resolved("faq", 1, "version"), applied=("Service",),
                                                 rollout=Rollout("Complete", 1, 1, "ok")), now)
    assert "url" not in without
    from scoring_operator.builders.status import status_patch

    assert status_patch(status, without)["url"] is None  # type: ignore[index]  # removed from the status


def test_https_pods_behind_an_ingress_and_a_shadow(owner: Owner) -> None:
    """spec.tls with exposure/shadow: ingress-nginx is told the pods speak HTTPS (a user's own value wins),
    and the stable pods copy shadow traffic over https."""
    from scoring_operator.builders import canary
    from scoring_operator.builders.exposure import NGINX_BACKEND_PROTOCOL

    spec = make_spec(tls={"secretName": "faq-tls"}, exposure={"ingress": {"host": "faq.example.com"}})
    ing = ingress(owner, spec)
    assert ing is not None and ing["metadata"]["annotations"] == {NGINX_BACKEND_PROTOCOL: "HTTPS"}
    mine = make_spec(tls={"secretName": "faq-tls"}, exposure={"ingress": {
        "host": "faq.example.com", "annotations": {NGINX_BACKEND_PROTOCOL: "GRPCS"}}})
    ing = ingress(owner, mine)
    assert ing is not None and ing["metadata"]["annotations"] == {NGINX_BACKEND_PROTOCOL: "GRPCS"}
    plain = ingress(owner, make_spec(exposure={"ingress": {"host": "faq.example.com"}}))
    assert plain is not None and "annotations" not in plain["metadata"]
    assert canary.shadow_url(owner, spec).startswith("https://faq-shadow.")
    assert canary.shadow_url(owner, make_spec()).startswith("http://faq-shadow.")
