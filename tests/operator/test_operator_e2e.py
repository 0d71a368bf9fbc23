"""End to end on the real control plane, with the operator running as the Helm chart's ServiceAccount.

kwok plays the kubelet, so scoring pods go Running/Ready without running the image: these tests
check what the operator asks Kubernetes for and how it reacts, not the model server itself.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.controlplane import KubeCluster
from tests.operator.kubehelpers import (
    POLL,
    REPO,
    Operator,
    apply,
    condition,
    get,
    get_existing,
    pods_running,
    scoring_model,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _sm(cluster: KubeCluster, ns: str, name: str) -> dict[str, Any]:
    obj = get(cluster, "scoringmodel", ns, name)
    assert obj is not None, f"ScoringModel {ns}/{name} is gone"
    return obj


def _ready(cluster: KubeCluster, ns: str, name: str, version: int, replicas: int | None = None) -> Any:
    """The ScoringModel once it is Ready on `version` for its current generation, else None."""
    sm = _sm(cluster, ns, name)
    st = sm.get("status") or {}
    ok = (
        st.get("phase") == "Ready"
        and (st.get("model") or {}).get("version") == version
        and st.get("observedGeneration") == sm["metadata"]["generation"]
        and (replicas is None or st.get("readyReplicas") == replicas)
    )
    return sm if ok else None


def _template_version(dep: dict[str, Any] | None) -> str | None:
    return ((dep or {}).get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}).get(
        "scoring.dev/model-version")


def _events(cluster: KubeCluster, ns: str, name: str) -> list[tuple[str, str, str]]:
    events = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector",
                                  f"involvedObject.kind=ScoringModel,involvedObject.name={name}")
    return [(e["type"], e["reason"], e.get("message", "")) for e in events["items"]]


def test_lifecycle(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    """Create -> Ready; spec change; label move and rollback; autoscaling; drift repair; deletion."""
    model, name = f"life-{ns[-6:]}", "faq"
    assert operator.register(model) == 1
    apply(cluster, scoring_model(name, ns, {"name": model, "label": "latest"}, replicas=2,
                                 resources={"requests": {"cpu": "100m", "memory": "128Mi"}}))

    # -- created: children with the right specs, pods Running on kwok, status Ready --------------
    sm = wait_for("Ready on version 1", lambda: _ready(cluster, ns, name, 1, replicas=2), operator=operator)
    st = sm["status"]
    assert st["endpoint"] == f"http://{name}.{ns}.svc:80"
    assert st["model"]["resolvedFrom"] == "label:latest"
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "ModelResolved": "True", "Deployed": "True", "Ready": "True"}
    uid = sm["metadata"]["uid"]
    dep = get(cluster, "deployment", ns, name)
    assert dep is not None and dep["spec"]["replicas"] == 2
    (owner_ref,) = dep["metadata"]["ownerReferences"]
    assert (owner_ref["uid"], owner_ref["controller"], owner_ref["blockOwnerDeletion"]) == (uid, True, True)
    pod = dep["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][-5:] == ["--version", "1", "--dest", "/model", "--clean"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    svc = get(cluster, "service", ns, name)
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 80
    assert get(cluster, "poddisruptionbudget", ns, name) is not None
    assert get(cluster, "horizontalpodautoscaler", ns, name) is None
    assert len(pods_running(cluster, ns, name)) == 2
    assert ("Normal", "RolloutStarted", f"rolling out model {model} version 1 (label:latest)") in _events(
        cluster, ns, name)
    header, row = cluster.kubectl("get", "sm", name, "-n", ns).stdout.splitlines()
    assert header.split() == ["NAME", "MODEL", "VERSION", "PHASE", "READY", "REPLICAS", "ENDPOINT", "AGE"]
    assert row.split()[:7] == [name, model, "1", "Ready", "True", "2", st["endpoint"]]

    # -- a quiet world: no status writes between polls (lastTransitionTime stays, resourceVersion too)
    rv = sm["metadata"]["resourceVersion"]
    time.sleep(2 * POLL + 1)
    assert _sm(cluster, ns, name)["metadata"]["resourceVersion"] == rv

    # -- spec change -> rollout (a new ReplicaSet), status follows the new generation -------------
    cluster.kubectl("patch", "scoringmodel", name, "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"runtime": {"workers": 3}}}))

    def rolled_workers() -> Any:
        d = get_existing(cluster, "deployment", ns, name)
        env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        return env.get("SCORING_WORKERS") == "3" and _ready(cluster, ns, name, 1, replicas=2)

    wait_for("the workers change rolled out", rolled_workers, operator=operator)
    rs = cluster.kubectl_json("get", "replicasets", "-n", ns, "-l", f"app.kubernetes.io/instance={name}")
    assert len(rs["items"]) == 2

    # -- the label moves (a new version registered) -> rolled out, status updated -----------------
    assert operator.register(model) == 2
    wait_for("version 2 rolled out", lambda: _ready(cluster, ns, name, 2, replicas=2)
             and _template_version(get(cluster, "deployment", ns, name)) == "2", operator=operator)
    assert any(r == "RolloutStarted" and "version 2 (label:latest), was version 1" in m
               for _, r, m in _events(cluster, ns, name))

    # -- moving the label back with the CLI is a rollback ------------------------------------------
    subprocess.run(["scoring", "label", "--registry", operator.registry_root.as_uri(), "--name", model,
                    "--label", "latest", "--version", "1"], check=True, capture_output=True)
    wait_for("rolled back to version 1", lambda: _ready(cluster, ns, name, 1)
             and _template_version(get(cluster, "deployment", ns, name)) == "1", operator=operator)
    assert re.search(rf'scoring_operator_model_version{{model="{model}",name="{name}",namespace="{ns}"}} 1\.0',
                     operator.metrics())

    # -- fixed replicas -> autoscaling: HPA created, PDB removed ----------------------------------
    cluster.kubectl("patch", "scoringmodel", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": {
        "replicas": None, "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetInFlightRequests": 5}}}))
    hpa = wait_for("an HPA", lambda: get(cluster, "horizontalpodautoscaler", ns, name), operator=operator)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "scoring_requests_in_flight"
    wait_for("the PDB removed", lambda: get(cluster, "poddisruptionbudget", ns, name) is None, operator=operator)

    # -- drift: an edited Service is put back; deleted children are recreated ------------------------
    cluster.kubectl("patch", "service", name, "-n", ns, "--type=json", "-p",
                    json.dumps([{"op": "replace", "path": "/spec/ports/0/port", "value": 81}]))
    wait_for("the Service port restored",
             lambda: get_existing(cluster, "service", ns, name)["spec"]["ports"][0]["port"] == 80, operator=operator)
    old = {k: get_existing(cluster, k, ns, name)["metadata"]["uid"] for k in ("service", "deployment")}
    cluster.kubectl("delete", "service", name, "-n", ns)
    cluster.kubectl("delete", "deployment", name, "-n", ns)
    for kind in ("service", "deployment"):
        def recreated(k: str = kind) -> bool:
            return (get(cluster, k, ns, name) or {}).get("metadata", {}).get("uid") not in (None, old[k])

        wait_for(f"the {kind} recreated", recreated, operator=operator)
    wait_for("Ready again", lambda: _ready(cluster, ns, name, 1), operator=operator)

    # -- deletion: the finalizer is released and the children are garbage-collected ----------------
    cluster.kubectl("delete", "scoringmodel", name, "-n", ns, "--wait=true", "--timeout=60s")
    wait_for("children garbage-collected", lambda: all(
        get(cluster, k, ns, name) is None for k in ("deployment", "service", "horizontalpodautoscaler")),
        timeout=90, operator=operator)


def test_switch_to_autoscaling_keeps_the_replicas(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    """replicas 3 -> autoscaling min 3: spec.replicas never drops below 3 (the HPA takes it over)."""
    model, name = f"scale-{ns[-6:]}", "scaled"
    operator.register(model)
    apply(cluster, scoring_model(name, ns, {"name": model, "version": 1}, replicas=3))
    wait_for("Ready with 3 replicas", lambda: _ready(cluster, ns, name, 1, replicas=3), operator=operator)
    cluster.kubectl("patch", "scoringmodel", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": {
        "replicas": None, "autoscaling": {"minReplicas": 3, "maxReplicas": 5, "targetInFlightRequests": 5}}}))
    seen: list[int] = []

    def switched() -> bool:
        dep = get(cluster, "deployment", ns, name)
        assert dep is not None
        seen.append(dep["spec"]["replicas"])
        return get(cluster, "horizontalpodautoscaler", ns, name) is not None

    wait_for("the HPA", switched, interval=0.1, operator=operator)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # and a little after: the reset would show up right after the apply
        seen.append(get_existing(cluster, "deployment", ns, name)["spec"]["replicas"])
    assert min(seen) >= 3, f"spec.replicas dropped during the switch: {seen}"
    wait_for("Ready under the HPA", lambda: _ready(cluster, ns, name, 1, replicas=3), operator=operator)
    events = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector",
                                  f"involvedObject.kind=Deployment,involvedObject.name={name}")
    scaled_down = [e["message"] for e in events["items"] if "Scaled down" in e.get("message", "")]
    assert not scaled_down, scaled_down
    dep = cluster.kubectl_json("get", "deployment", name, "-n", ns, "--show-managed-fields")
    managers = {m["manager"] for m in dep["metadata"]["managedFields"] if "f:replicas" in (
        m.get("fieldsV1", {}).get("f:spec") or {})}
    assert "scoring-operator" not in managers, "the operator must not own replicas under autoscaling"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"version": 1, "label": "latest"}}, "set exactly one of spec.model.version"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetInFlightRequests": 3}},
         "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
        ({"replicas": 2, "autoscaling": {"maxReplicas": 2, "targetInFlightRequests": 3}},
         "set spec.replicas or spec.autoscaling, not both"),
        ({"service": {"type": "Ingress"}}, 'Unsupported value: "Ingress"'),
        ({"runtime": {"env": [{"name": "SCORING_WORKERS", "value": "9"}]}},
         "env var SCORING_WORKERS is set by the operator"),
        ({"autoscaling": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 50}},
         "autoscaling.targetCPUUtilizationPercentage needs spec.resources.requests.cpu"),
        ({"gpu": {"count": 1, "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
         "a toleration with operator Exists must not set value"),
        ({"gpu": {"count": 1, "tolerations": [{"key": "k", "value": "v", "effect": "NoSchedule",
                                               "tolerationSeconds": 30}]}},
         "tolerationSeconds only applies to effect NoExecute"),
        ({"gpu": {"count": 1, "tolerations": [{"operator": "Equal", "value": "v"}]}},
         "a toleration without key matches every taint and needs operator Exists"),
        ({"resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": 1, "memory": "1Gi"}}},
         "resources.requests must not exceed resources.limits of the same resource"),
        ({"resources": {"requests": {"memory": "1.5Gi"}, "limits": {"memory": "1536M"}}},
         "resources.requests must not exceed resources.limits of the same resource"),
        ({"resources": {"requests": {"cpu": "-100m"}}}, "resources.requests and resources.limits must not be negative"),
        ({"resources": {"requests": {"cpu": 0.5}}}, "must be of type integer,string"),
    ],
    ids=["version-and-label", "min-above-max", "replicas-and-autoscaling", "bad-enum", "managed-env", "cpu-requests",
         "exists-with-value", "seconds-without-noexecute", "no-key-equal", "request-over-limit", "binary-vs-decimal",
         "negative", "float-quantity"],
)
def test_invalid_specs_are_rejected_at_admission(
    cluster: KubeCluster, ns: str, change: dict[str, Any], message: str
) -> None:
    manifest = scoring_model("bad", ns, {"name": "faq", "label": "latest"})
    for key, value in change.items():
        manifest["spec"][key] = {**manifest["spec"].get(key, {}), **value} if key == "model" else value
    proc = apply(cluster, manifest, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert get(cluster, "scoringmodel", ns, "bad") is None


def test_valid_resources_and_tolerations_are_admitted(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    """Requests equal to limits (in different units), a fraction as a string, and well-formed tolerations."""
    manifest = scoring_model("fine", ns, {"name": "faq", "label": "latest"},
                             resources={"requests": {"cpu": "0.5", "memory": "1Gi"},
                                        "limits": {"cpu": "500m", "memory": "1024Mi"}},
                             gpu={"count": 1, "tolerations": [
                                 {"operator": "Exists"},
                                 {"key": "k", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30}]})
    proc = apply(cluster, manifest, check=False)
    assert proc.returncode == 0, proc.stderr
    stored = get(cluster, "scoringmodel", ns, "fine")
    assert stored is not None and stored["spec"]["resources"]["limits"] == {"cpu": "500m", "memory": "1024Mi"}
    cluster.kubectl("delete", "scoringmodel", "fine", "-n", ns, "--wait=true", "--timeout=60s")


def test_kubectl_explain_documents_the_fields(cluster: KubeCluster, operator: Operator) -> None:
    def explain() -> str:
        return cluster.kubectl("explain", "scoringmodel.spec.model").stdout

    text = wait_for("the CRD's OpenAPI published", explain, timeout=30)
    assert "The model to serve and how its version is chosen." in text
    assert "Tracked label" in text and "pollInterval" in text


def test_missing_model_is_reported_and_recovers(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    model = f"late-{ns[-6:]}"
    apply(cluster, scoring_model("late", ns, {"name": model, "version": 1}))

    def not_found() -> Any:
        sm = _sm(cluster, ns, "late")
        cond = condition(sm, "ModelResolved")
        return sm if cond.get("reason") == "ModelNotFound" and sm["status"].get("phase") == "Failed" else None

    sm = wait_for("ModelNotFound", not_found, operator=operator)
    assert f"model {model!r} version 1 not found" in condition(sm, "ModelResolved")["message"]
    assert sm["status"]["lastFailure"]["reason"] == "ModelNotFound"
    assert condition(sm, "Deployed")["reason"] == "WaitingForModel"
    assert get(cluster, "deployment", ns, "late") is None
    assert any(t == "Warning" and r == "ModelNotFound" for t, r, _ in _events(cluster, ns, "late"))
    assert 'scoring_operator_registry_errors_total{reason="ModelNotFound"}' in operator.metrics()

    operator.register(model)
    sm = wait_for("recovered", lambda: _ready(cluster, ns, "late", 1), operator=operator)
    assert condition(sm, "ModelResolved")["status"] == "True"
    assert sm["status"]["lastFailure"]["reason"] == "ModelNotFound", "the last failure is kept for troubleshooting"


def test_unreachable_registry_is_reported_and_recovers(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    model, sub = f"remote-{ns[-6:]}", f"offline-{ns[-6:]}"
    apply(cluster, scoring_model("remote", ns, {"name": model, "label": "latest",
                                                "registry": {"type": "local", "claimName": "model-registry",
                                                             "path": sub}}))

    def unavailable() -> Any:
        sm = _sm(cluster, ns, "remote")
        ok = condition(sm, "ModelResolved").get("reason") == "RegistryUnavailable"
        return sm if ok and sm["status"].get("phase") == "Resolving" else None

    sm = wait_for("RegistryUnavailable", unavailable, operator=operator)
    assert "does not exist" in condition(sm, "ModelResolved")["message"]
    operator.register(model, sub=sub)  # the registry appears (e.g. the share is mounted again)
    sm = wait_for("recovered", lambda: _ready(cluster, ns, "remote", 1), operator=operator)
    dep = get(cluster, "deployment", ns, "remote")
    assert dep is not None
    assert f"file:///registry/{sub}" in dep["spec"]["template"]["spec"]["initContainers"][0]["command"]


def test_foreign_objects_are_never_taken_over(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    """A Service that happens to have the ScoringModel's name is reported, not overwritten."""
    apply(cluster, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken", "namespace": ns},
                    "spec": {"ports": [{"port": 9999}], "selector": {"app": "someone-else"}}})
    model = f"taken-{ns[-6:]}"
    operator.register(model)
    apply(cluster, scoring_model("taken", ns, {"name": model, "version": 1}))
    sm = wait_for("ChildConflict", lambda: (lambda o: o if condition(o, "Deployed").get("reason") == "ChildConflict"
                                            else None)(_sm(cluster, ns, "taken")), operator=operator)
    assert sm["status"]["phase"] == "Failed"
    assert "Service" in condition(sm, "Deployed")["message"]
    svc = get(cluster, "service", ns, "taken")
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 9999 and "ownerReferences" not in svc["metadata"]
    cluster.kubectl("delete", "service", "taken", "-n", ns)  # the user resolves the clash
    wait_for("recovered", lambda: _ready(cluster, ns, "taken", 1), operator=operator)


def test_examples_become_ready(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    """The shipped examples apply as they are and get Ready (the kwok node advertises 8 GPUs)."""
    for model in ("faq-matcher", "image-classifier"):
        if not (operator.registry_root / model).is_dir():
            operator.register(model)
    examples = REPO / "examples" / "scoring-models"
    for f in ("faq-matching.yaml", "image-classification-gpu.yaml"):
        cluster.kubectl("apply", "--server-side", "-n", ns, "-f", examples / f)
    gpu = wait_for("the GPU model Ready", lambda: _ready(cluster, ns, "image-classification", 1), operator=operator)
    assert gpu["status"]["readyReplicas"] == 1
    dep = get(cluster, "deployment", ns, "image-classification")
    assert dep is not None
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in dep["spec"]["template"][
        "spec"]["tolerations"]
    (pod,) = pods_running(cluster, ns, "image-classification")
    assert pod["spec"]["nodeName"]
    # The FAQ model autoscales: the HPA lifts it to minReplicas 2 (its CPU metric has no metrics server here).
    faq = wait_for("the FAQ model Ready with 2 replicas", lambda: _ready(cluster, ns, "faq-matching", 1, replicas=2),
                   timeout=90, operator=operator)
    assert faq["status"]["endpoint"] == f"http://faq-matching.{ns}.svc:80"
    volumes = {v["name"]: v for v in get_existing(cluster, "deployment", ns, "faq-matching")["spec"]["template"][
        "spec"]["volumes"]}
    assert volumes["api-key"]["secret"]["secretName"] == "faq-matching-api-key"


def test_flux_example_renders_and_applies(cluster: KubeCluster, operator: Operator) -> None:
    """`kubectl kustomize` renders both Flux layers; the app layer applies server-side with our CRD."""
    flux = REPO / "examples" / "flux"
    sync = [d for d in yaml.safe_load_all(cluster.kubectl("kustomize", flux / "flux-system").stdout) if d]
    assert sorted(d["kind"] for d in sync) == ["GitRepository", "Kustomization"]
    (kustomization,) = [d for d in sync if d["kind"] == "Kustomization"]
    assert (REPO / kustomization["spec"]["path"]).is_dir(), "the Flux Kustomization points at the app layer"
    rendered = cluster.kubectl("kustomize", flux / "apps" / "scoring-models").stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert sorted(d["kind"] for d in docs) == ["Namespace", "PersistentVolumeClaim", "ScoringModel", "ScoringModel"]
    target = "ml-serving"
    assert all(d["metadata"].get("namespace") == target for d in docs if d["kind"] != "Namespace")
    faq = next(d for d in docs if d["metadata"]["name"] == "faq-matching")
    assert faq["spec"]["model"]["label"] == "prod"
    assert faq["spec"]["rollout"]["strategy"] == "Canary"
    assert [s["weight"] for s in faq["spec"]["rollout"]["steps"]] == [10, 50, 100]
    assert faq["spec"]["autoscaling"], "the overlay adds the rollout and keeps the rest of the example"
    try:
        proc = cluster.kubectl("apply", "--server-side", "--field-manager=flux-e2e", "-f", "-", input=rendered)
        assert "scoringmodel.scoring.dev/faq-matching serverside-applied" in proc.stdout
        assert get(cluster, "scoringmodel", target, "image-classification") is not None
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=true", "--timeout=90s",
                        input=rendered, check=False)


# -- RBAC: the chart's ServiceAccount has what the operator needs, and nothing more ------------------

EXPECTED_RULES = {
    "scoringmodels.scoring.dev": {"get", "list", "watch", "patch"},
    "scoringmodels.scoring.dev/status": {"get", "patch"},
    "scoringmodels.scoring.dev/finalizers": {"update"},
    "deployments.apps": {"get", "list", "watch", "create", "patch", "delete"},  # delete: canary/shadow
    "services": {"get", "list", "watch", "create", "patch", "delete"},
    "configmaps": {"get", "list", "watch", "create", "patch", "delete"},  # the shadow's config
    "pods": {"list"},  # read-only: why a rollout's new pods fail (the fetch init container's message)
    "pods/proxy": {"get"},  # canary/shadow analysis reads the scoring pods' /metrics
    "horizontalpodautoscalers.autoscaling": {"get", "list", "watch", "create", "patch", "delete"},
    "poddisruptionbudgets.policy": {"get", "list", "watch", "create", "patch", "delete"},
    "events": {"create", "patch"},
    "ingresses.networking.k8s.io": {"get", "list", "watch", "create", "patch", "delete"},
    "httproutes.gateway.networking.k8s.io": {"get", "list", "watch", "create", "patch", "delete"},
}
#: Granted to every authenticated identity by Kubernetes itself.
_BUILTIN = {"selfsubjectreviews.authentication.k8s.io", "selfsubjectaccessreviews.authorization.k8s.io",
            "selfsubjectrulesreviews.authorization.k8s.io"}


def _can_i_list(cluster: KubeCluster, kubeconfig: Path, namespace: str) -> dict[str, set[str]]:
    out = cluster.kubectl("auth", "can-i", "--list", "-n", namespace, kubeconfig=kubeconfig).stdout
    rules: dict[str, set[str]] = {}
    for line in out.splitlines()[1:]:
        if not line.strip() or line.startswith(" "):
            continue  # non-resource URLs
        resource = line.split()[0]
        verbs_match = re.search(r"\[([^\]]*)\]\s*$", line)
        assert verbs_match is not None, line
        verbs = set(verbs_match.group(1).split())
        rules.setdefault(resource, set()).update(verbs)
    return {r: v for r, v in rules.items() if r not in _BUILTIN}


def test_service_account_holds_only_what_it_needs(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    assert _can_i_list(cluster, operator.kubeconfig, ns) == EXPECTED_RULES
    denied = [
        ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("create", "pods/portforward"),
        ("create", "pods"), ("delete", "pods"), ("create", "pods/exec"), ("create", "pods/proxy"),
        ("delete", "nodes"), ("patch", "nodes"), ("create", "serviceaccounts/token"),
        ("create", "roles"), ("create", "rolebindings"), ("create", "clusterrolebindings"),
        ("escalate", "clusterroles"), ("bind", "clusterroles"), ("impersonate", "users"),
        ("delete", "scoringmodels.scoring.dev"), ("create", "customresourcedefinitions"),
        ("create", "gateways.gateway.networking.k8s.io"), ("patch", "gatewayclasses.gateway.networking.k8s.io"),
        ("patch", "httproutes.gateway.networking.k8s.io/status"), ("create", "ingressclasses.networking.k8s.io"),
    ]
    for verb, resource in denied:
        proc = cluster.kubectl("auth", "can-i", verb, resource, "-n", ns, kubeconfig=operator.kubeconfig,
                               check=False)
        assert proc.stdout.strip() == "no", f"the operator's ServiceAccount may {verb} {resource}"
    all_ns = cluster.kubectl("auth", "can-i", "list", "secrets", "--all-namespaces", kubeconfig=operator.kubeconfig,
                             check=False)
    assert all_ns.stdout.strip() == "no"


def test_metrics_and_liveness(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    from tests.operator.kubehelpers import http_get

    assert http_get(operator.url("liveness", "/healthz"))[0] == 200
    model = f"metrics-{ns[-6:]}"
    operator.register(model)
    apply(cluster, scoring_model("metered", ns, {"name": model, "version": 1}))
    wait_for("Ready", lambda: _ready(cluster, ns, "metered", 1), operator=operator)
    text = operator.metrics()
    for name in ("scoring_operator_reconciles_total", "scoring_operator_reconcile_duration_seconds_bucket",
                 "scoring_operator_models", "scoring_operator_model_version",
                 "scoring_operator_registry_errors_total"):
        assert name in text, f"{name} missing from /metrics"
    assert re.search(r'scoring_operator_models\{phase="Ready"\} [1-9][0-9]*\.0', text)
    assert f'scoring_operator_model_version{{model="{model}",name="metered",namespace="{ns}"}} 1.0' in text
    assert re.search(r'scoring_operator_reconciles_total\{result="success",trigger="create"\} [1-9]', text)
