"""spec.exposure on the real apiserver, with and without the real Gateway API CRDs (v1.6.3, standard channel).

No gateway data plane can be built here (see docs/operator.md, Exposure), so these are API-level
checks: the generated Ingress and HTTPRoute (with weights and a request mirror) are accepted and kept
as sent by the real apiserver and CRDs; the operator applies, watches, repairs and removes them, and
shows the URL; and on a cluster without the Gateway API it says so and keeps working.

Order matters: the first test runs while the Gateway API CRDs are absent (and installs them half way);
the module fixture then installs them for the rest, and removes them at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scoring_operator.builders.exposure import RouteBackend, RouteMirror, http_route, ingress
from scoring_operator.builders.meta import Owner
from tests.kube.controlplane import KubeCluster
from tests.operator.conftest import make_spec
from tests.operator.kubehelpers import (
    REPO,
    Operator,
    apply,
    chart_operator,
    condition,
    get,
    registry_claim,
    scoring_model,
    wait_for,
)

pytestmark = [pytest.mark.cluster]

HOST = "faq.example.com"
CERT_MANAGER = {"cert-manager.io/cluster-issuer": "letsencrypt-prod"}
ROUTE = {"parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}], "hostnames": [HOST]}


def _status(cluster: KubeCluster, ns: str, name: str) -> dict[str, Any]:
    return dict(((get(cluster, "scoringmodel", ns, name) or {}).get("status")) or {})


def _dry_run(cluster: KubeCluster, obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the apiserver would store it (server-side apply, dry run): defaults in, unknown fields out."""
    body = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "ownerReferences"}}
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=exposure-test", "-o", "json",
                           "-f", "-", input=json.dumps(body))
    return dict(json.loads(proc.stdout))


@pytest.fixture
def model_ns(cluster: KubeCluster, namespace: str) -> Iterator[str]:
    pv = registry_claim(cluster, namespace)
    yield namespace
    cluster.kubectl("delete", "scoringmodels", "--all", "-n", namespace, "--ignore-not-found", "--wait=true",
                    "--timeout=60s", check=False)
    cluster.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def test_without_the_gateway_api_the_model_serves_and_says_why_then_recovers(
    cluster: KubeCluster, model_ns: str, tmp_path: Path
) -> None:
    """An httpRoute on a cluster without the Gateway API CRDs: a clear status, no crash, the Ingress path and
    the in-cluster endpoint still work; installing the CRDs later makes the route appear without a restart."""
    if cluster.gateway_api_installed():
        pytest.skip("this cluster has the Gateway API CRDs already: the absent case cannot be checked here")
    ns = model_ns
    try:
        with chart_operator(cluster, tmp_path) as op:
            op.register("faq")
            apply(cluster, scoring_model("routed", ns, {"name": "faq", "version": 1},
                                         exposure={"httpRoute": ROUTE}))
            apply(cluster, scoring_model("ingressed", ns, {"name": "faq", "version": 1},
                                         exposure={"ingress": {"host": "other.example.com"}}))
            st = wait_for("the missing Gateway API in the status", lambda: (s := _status(cluster, ns, "routed"))
                          and condition({"status": s}, "Deployed").get("reason") == "GatewayAPINotInstalled" and s,
                          operator=op)
            assert isinstance(st, dict)  # the lambda returns `s` when truthy
            deployed = condition({"status": st}, "Deployed")
            assert deployed["status"] == "False"
            assert "needs the Gateway API CRDs" in deployed["message"]
            assert "spec.exposure.ingress" in deployed["message"], "it says what else works"
            assert "url" not in st and st["endpoint"] == f"http://routed.{ns}.svc:80"
            assert get(cluster, "deployment", ns, "routed") is not None, "the model is still served in-cluster"
            wait_for("the in-cluster model Ready, but Degraded", lambda: _status(cluster, ns, "routed").get("phase")
                     == "Degraded", operator=op)
            events = cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                                     "involvedObject.name=routed,reason=GatewayAPINotInstalled", "-o", "name").stdout
            assert events.strip(), "a Warning Event says it too"
            # The Ingress path is unaffected, and the operator is alive and well.
            wait_for("the Ingress model Ready with its URL", lambda: _status(cluster, ns, "ingressed").get("url")
                     == "http://other.example.com" and _status(cluster, ns, "ingressed").get("phase") == "Ready",
                     operator=op)
            assert op.proc.poll() is None
            assert "Unresolved resources cannot be served" in op.log_path.read_text(), \
                "kopf skipped the HTTPRoute watch (its CRD is absent) and carried on"

            cluster.install_gateway_api_crds()
            st = wait_for("the HTTPRoute once the CRDs exist (retried, no restart)", lambda: (
                s := _status(cluster, ns, "routed")).get("phase") == "Ready" and s, timeout=90, operator=op)
            assert isinstance(st, dict)  # the lambda returns `s` when truthy
            assert st["url"] == f"https://{HOST}"
            route = get(cluster, "httproute", ns, "routed")
            assert route is not None and route["spec"]["hostnames"] == [HOST]
            # Applied without a watch (the CRD came after the operator started): removal still finds it.
            apply(cluster, scoring_model("routed", ns, {"name": "faq", "version": 1}))
            wait_for("the HTTPRoute removed with the exposure", lambda: get(cluster, "httproute", ns, "routed") is None,
                     operator=op)
            # While this operator still runs: its finalizer is on them.
            cluster.kubectl("delete", "scoringmodels", "--all", "-n", ns, "--wait=true", "--timeout=60s")
    finally:
        cluster.remove_gateway_api_crds()


@pytest.fixture(scope="module")
def gateway_api(cluster: KubeCluster) -> Iterator[None]:
    """The real Gateway API CRDs, installed for this module's remaining tests (removed if this module put them)."""
    already = cluster.gateway_api_installed()
    if not already:
        cluster.install_gateway_api_crds()
    yield
    if not already:
        cluster.remove_gateway_api_crds()


@pytest.fixture(scope="module")
def gw_operator(
    cluster: KubeCluster, gateway_api: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """An operator started after the Gateway API CRDs: it watches HTTPRoutes too."""
    with chart_operator(cluster, tmp_path_factory.mktemp("gw-operator")) as op:
        yield op


def test_generated_ingress_and_http_route_are_accepted_as_sent(cluster: KubeCluster, gateway_api: None,
                                                               namespace: str) -> None:
    """Weights and the RequestMirror `percent` survive the real CRD's schema (unknown fields would be pruned)."""
    owner = Owner("faq", namespace, "0b6c1c1e-5f0a-4c38-9d1f-6a2c3c6d7e8f")
    spec = make_spec(exposure={"httpRoute": {**ROUTE, "path": "/faq", "hostnames": [HOST, "*.models.example.com"]}})
    route = http_route(owner, spec, backends=[RouteBackend("faq", 80, 80), RouteBackend("faq-canary", 80, 20)],
                       mirror=RouteMirror("faq-shadow", 80, 10))
    assert route is not None
    stored = _dry_run(cluster, route)
    (rule,) = stored["spec"]["rules"]
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [("faq", 80), ("faq-canary", 20)]
    assert rule["filters"] == route["spec"]["rules"][0]["filters"]
    assert rule["filters"][-1]["requestMirror"]["percent"] == 10
    assert stored["spec"]["parentRefs"] == route["spec"]["parentRefs"]
    assert stored["spec"]["hostnames"] == [HOST, "*.models.example.com"]

    ing = ingress(owner, make_spec(exposure={"ingress": {"className": "nginx", "host": HOST, "tlsSecretName": "faq-tls",
                                                         "annotations": CERT_MANAGER}}))
    assert ing is not None
    stored = _dry_run(cluster, ing)
    assert stored["spec"] == ing["spec"] and stored["metadata"]["annotations"] == CERT_MANAGER

    # The real CRD refuses what the operator must never send (so the builders' output is really checked).
    bad = json.loads(json.dumps(route))
    bad["spec"]["rules"][0]["filters"][-1]["requestMirror"]["percent"] = 101
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=json.dumps(
        {**bad, "metadata": {"name": "faq", "namespace": namespace}}), check=False)
    assert proc.returncode != 0 and "percent" in proc.stderr


def test_operator_exposes_repairs_switches_and_removes(cluster: KubeCluster, gw_operator: Operator,
                                                       model_ns: str) -> None:
    op, ns = gw_operator, model_ns
    op.register("faq")
    apply(cluster, scoring_model("faq", ns, {"name": "faq", "version": 1}, exposure={"ingress": {
        "className": "nginx", "host": HOST, "tlsSecretName": "faq-tls", "annotations": CERT_MANAGER}}))
    st = wait_for("Ready with the Ingress URL", lambda: (s := _status(cluster, ns, "faq")).get("url") and
                  s.get("phase") == "Ready" and s, operator=op)
    assert isinstance(st, dict)  # the lambda returns `s` when truthy
    assert st["url"] == f"https://{HOST}"
    ing = get(cluster, "ingress", ns, "faq")
    assert ing is not None
    assert ing["metadata"]["annotations"] == CERT_MANAGER
    assert ing["metadata"]["ownerReferences"][0]["kind"] == "ScoringModel"
    assert ing["spec"]["tls"] == [{"hosts": [HOST], "secretName": "faq-tls"}]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    svc = get(cluster, "service", ns, "faq")
    assert svc is not None and backend == {"name": "faq", "port": {"number": svc["spec"]["ports"][0]["port"]}}
    printed = cluster.kubectl("get", "scoringmodel", "faq", "-n", ns, "-o", "wide").stdout
    assert f"https://{HOST}" in printed, "the URL printer column"

    # Switch to an HTTPRoute: the Ingress goes, the route comes, the URL follows.
    apply(cluster, scoring_model("faq", ns, {"name": "faq", "version": 1}, exposure={"httpRoute": {
        **ROUTE, "hostnames": ["*.example.com", "api.example.com"], "path": "/faq"}}))
    wait_for("the HTTPRoute URL", lambda: _status(cluster, ns, "faq").get("url") == "https://api.example.com/faq",
             operator=op)
    wait_for("the Ingress removed", lambda: get(cluster, "ingress", ns, "faq") is None, operator=op)
    route = get(cluster, "httproute", ns, "faq")
    assert route is not None
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "faq", "port": 80, "weight": 1}]
    uid = route["metadata"]["uid"]

    # Drift: a deleted route is recreated at once (the watch), an edited one put back.
    cluster.kubectl("delete", "httproute", "faq", "-n", ns, "--wait=true")
    wait_for("the HTTPRoute recreated", lambda: (r := get(cluster, "httproute", ns, "faq")) is not None
             and r["metadata"]["uid"] != uid, timeout=20, operator=op)
    cluster.kubectl("patch", "httproute", "faq", "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"hostnames": ["evil.example.com"]}}))
    wait_for("the HTTPRoute repaired", lambda: (get(cluster, "httproute", ns, "faq") or {}).get("spec", {}).get(
        "hostnames") == ["*.example.com", "api.example.com"], timeout=20, operator=op)

    # Exposure removed: the route goes, and so does the URL.
    apply(cluster, scoring_model("faq", ns, {"name": "faq", "version": 1}))
    wait_for("the HTTPRoute removed", lambda: get(cluster, "httproute", ns, "faq") is None, operator=op)
    wait_for("no URL", lambda: "url" not in _status(cluster, ns, "faq"), operator=op)
    assert _status(cluster, ns, "faq")["phase"] == "Ready"


def test_a_route_of_someone_else_is_not_taken(cluster: KubeCluster, gw_operator: Operator, model_ns: str) -> None:
    op, ns = gw_operator, model_ns
    op.register("faq")
    apply(cluster, {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "taken", "namespace": ns},
                    "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "x", "port": 80}]}]}})
    apply(cluster, scoring_model("taken", ns, {"name": "faq", "version": 1}, exposure={"httpRoute": ROUTE}))
    st = wait_for("the conflict in the status", lambda: (s := _status(cluster, ns, "taken")) and condition(
        {"status": s}, "Deployed").get("reason") == "ChildConflict" and s, operator=op)
    assert isinstance(st, dict)  # the lambda returns `s` when truthy
    assert "HTTPRoute" in condition({"status": st}, "Deployed")["message"]
    assert "url" not in st
    route = get(cluster, "httproute", ns, "taken")
    assert route is not None and route["spec"]["rules"][0]["backendRefs"][0]["name"] == "x", "left untouched"



def test_exposure_examples_get_their_urls(cluster: KubeCluster, gw_operator: Operator, model_ns: str) -> None:
    """examples/scoring-models/exposure-*.yaml apply as they are and show the URLs their comments promise."""
    if not (gw_operator.registry_root / "faq-matcher").is_dir():
        gw_operator.register("faq-matcher")
    examples = REPO / "examples" / "scoring-models"
    for f in ("exposure-ingress.yaml", "exposure-http-route.yaml"):
        cluster.kubectl("apply", "--server-side", "-n", model_ns, "-f", examples / f)
    for name, url in (("faq-public", "https://faq.example.com"), ("faq-gateway", "https://models.example.com/faq")):
        def ready_at(n: str = name, u: str = url) -> bool:
            return (s := _status(cluster, model_ns, n)).get("url") == u and s.get("phase") == "Ready"

        wait_for(f"{name} Ready at {url}", ready_at, operator=gw_operator)
        assert url in (examples / ("exposure-ingress.yaml" if name == "faq-public" else "exposure-http-route.yaml")
                       ).read_text()
    assert get(cluster, "ingress", model_ns, "faq-public") is not None
    assert get(cluster, "httproute", model_ns, "faq-gateway") is not None
