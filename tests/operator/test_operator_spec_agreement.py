"""The spec's cross-field rules are written twice (CEL in the CRD, pydantic validators in spec.py):
one table of specs runs through both, pydantic in-process and the real apiserver (server-side
dry-run), and they must agree on every row: both admit, or both refuse with the same sentence.

A rule added to one side only, or a message that drifts apart, fails here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from scoring_operator import spec as api
from tests.kube.controlplane import KubeCluster
from tests.operator.kubehelpers import REPO

pytestmark = [pytest.mark.cluster]

REG = {"type": "local", "claimName": "r"}
LABEL = {"registry": REG, "name": "m", "label": "x"}

#: (id, spec, the sentence both must say when refusing, or None where both must admit it).
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("minimal", {"model": LABEL}, None),
    ("pinned", {"model": {"registry": REG, "name": "m", "version": 3}}, None),
    ("version-and-label", {"model": {**LABEL, "version": 1}},
     "set exactly one of spec.model.version (pin a version) or spec.model.label"),
    ("neither-version-nor-label", {"model": {"registry": REG, "name": "m"}},
     "set exactly one of spec.model.version (pin a version) or spec.model.label"),
    ("replicas-and-autoscaling", {"model": LABEL, "replicas": 2,
                                  "autoscaling": {"maxReplicas": 2, "targetInFlightRequests": 3}},
     "set spec.replicas or spec.autoscaling, not both"),
    ("autoscaling", {"model": LABEL, "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "targetInFlightRequests": 3}},
     None),
    ("min-above-max", {"model": LABEL, "autoscaling": {"minReplicas": 5, "maxReplicas": 2,
                                                      "targetInFlightRequests": 3}},
     "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
    ("cpu-target-without-requests", {"model": LABEL, "autoscaling": {"maxReplicas": 2,
                                                                     "targetCPUUtilizationPercentage": 50}},
     "autoscaling.targetCPUUtilizationPercentage needs spec.resources.requests.cpu"),
    ("cpu-target-with-requests", {"model": LABEL, "resources": {"requests": {"cpu": "100m"}},
                                  "autoscaling": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 50}}, None),
    ("gpu-placement-without-gpu", {"model": LABEL, "gpu": {"count": 0, "nodeSelector": {"a": "b"}}},
     "gpu.nodeSelector and gpu.tolerations only apply when gpu.count > 0"),
    ("gpu-placement", {"model": LABEL, "gpu": {"count": 1, "nodeSelector": {"a": "b"},
                                               "tolerations": [{"operator": "Exists"}]}}, None),
    ("exists-with-value", {"model": LABEL, "gpu": {"count": 1, "tolerations": [
        {"key": "k", "operator": "Exists", "value": "v"}]}}, "a toleration with operator Exists must not set value"),
    ("seconds-without-noexecute", {"model": LABEL, "gpu": {"count": 1, "tolerations": [
        {"key": "k", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 30}]}},
     "tolerationSeconds only applies to effect NoExecute"),
    ("seconds-with-noexecute", {"model": LABEL, "gpu": {"count": 1, "tolerations": [
        {"key": "k", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30}]}}, None),
    ("no-key-equal", {"model": LABEL, "gpu": {"count": 1, "tolerations": [{"operator": "Equal", "value": "v"}]}},
     "a toleration without key matches every taint and needs operator Exists"),
    ("request-over-limit", {"model": LABEL, "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}},
     "resources.requests must not exceed resources.limits of the same resource"),
    ("binary-vs-decimal", {"model": LABEL, "resources": {"requests": {"memory": "1.5Gi"},
                                                         "limits": {"memory": "1536M"}}},
     "resources.requests must not exceed resources.limits of the same resource"),
    ("equal-in-other-units", {"model": LABEL, "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"},
                                                            "limits": {"cpu": "500m", "memory": "1024Mi"}}}, None),
    ("negative", {"model": LABEL, "resources": {"limits": {"cpu": "-1"}}},
     "resources.requests and resources.limits must not be negative"),
    ("managed-env", {"model": LABEL, "runtime": {"env": [{"name": "SCORING_WORKERS", "value": "9"}]}},
     "env var SCORING_WORKERS is set by the operator"),
    ("batch-over-queue", {"model": LABEL, "runtime": {"batching": {"maxBatchSize": 64, "maxQueueRows": 10}}},
     "batching.maxQueueRows must be at least batching.maxBatchSize"),
    ("batch-fits", {"model": LABEL, "runtime": {"batching": {"maxBatchSize": 8, "maxQueueRows": 64}}}, None),
    # spec.exposure: one way out at most, host names and paths both layers check the same way.
    ("ingress", {"model": LABEL, "exposure": {"ingress": {
        "className": "nginx", "host": "faq.example.com", "path": "/models/faq", "tlsSecretName": "faq-tls",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}}}}, None),
    ("wildcard-ingress", {"model": LABEL, "exposure": {"ingress": {"host": "*.example.com"}}}, None),
    ("http-route", {"model": LABEL, "exposure": {"httpRoute": {
        "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}, {"name": "internal"}],
        "hostnames": ["faq.example.com", "*.models.example.com"], "path": "/faq/", "scheme": "http"}}}, None),
    ("empty-exposure", {"model": LABEL, "exposure": {}}, None),
    ("ingress-and-http-route", {"model": LABEL, "exposure": {"ingress": {"host": "a.example.com"},
                                                             "httpRoute": {"parentRefs": [{"name": "gw"}]}}},
     "set spec.exposure.ingress or spec.exposure.httpRoute, not both"),
    ("uppercase-host", {"model": LABEL, "exposure": {"ingress": {"host": "FAQ.example.com"}}},
     "spec.exposure.ingress.host"),
    ("ip-host", {"model": LABEL, "exposure": {"ingress": {"host": "10.1.2.3"}}}, "spec.exposure.ingress.host"),
    ("inner-wildcard", {"model": LABEL, "exposure": {"httpRoute": {"parentRefs": [{"name": "gw"}],
                                                                  "hostnames": ["a.*.example.com"]}}},
     "spec.exposure.httpRoute.hostnames"),
    ("relative-path", {"model": LABEL, "exposure": {"ingress": {"host": "a.example.com", "path": "models"}}},
     "spec.exposure.ingress.path"),
    ("dot-dot-path", {"model": LABEL, "exposure": {"httpRoute": {"parentRefs": [{"name": "gw"}], "path": "/a/../b"}}},
     "spec.exposure.httpRoute.path"),
    ("no-parent", {"model": LABEL, "exposure": {"httpRoute": {"parentRefs": []}}},
     "spec.exposure.httpRoute.parentRefs"),
    ("no-host", {"model": LABEL, "exposure": {"ingress": {"className": "nginx"}}}, "spec.exposure.ingress.host"),
    ("canary", {"model": LABEL, "rollout": {
        "strategy": "Canary", "steps": [{"weight": 10, "pauseSeconds": 30}, {"weight": 50}, {"weight": 100}],
        "analysis": {"intervalSeconds": 5, "minRequests": 20, "maxErrorRate": 0.05, "maxP99LatencyRatio": 2,
                     "maxP99LatencyMs": 250, "failureLimit": 2},
        "promoteVersion": 4, "abortVersion": 3}}, None),
    ("shadow", {"model": LABEL, "rollout": {"strategy": "Shadow", "shadow": {"percent": 12.5, "replicas": 2,
                                                                             "durationSeconds": 120}}}, None),
    ("steps-decreasing", {"model": LABEL, "rollout": {"strategy": "Canary", "steps": [{"weight": 50},
                                                                                      {"weight": 20}]}},
     "rollout.steps weights must increase strictly from step to step"),
    ("steps-repeated", {"model": LABEL, "rollout": {"strategy": "Canary", "steps": [{"weight": 20},
                                                                                    {"weight": 20}]}},
     "rollout.steps weights must increase strictly from step to step"),
    ("steps-empty", {"model": LABEL, "rollout": {"strategy": "Canary", "steps": []}},
     "rollout.steps needs at least one step"),
    ("steps-without-canary", {"model": LABEL, "rollout": {"steps": [{"weight": 20}]}},
     "rollout.steps only apply to strategy Canary"),
    ("shadow-without-shadow", {"model": LABEL, "rollout": {"strategy": "Canary", "shadow": {"percent": 5}}},
     "rollout.shadow only applies to strategy Shadow"),
    ("promote-and-abort-same", {"model": LABEL, "rollout": {"strategy": "Canary", "promoteVersion": 3,
                                                            "abortVersion": 3}},
     "rollout.promoteVersion and rollout.abortVersion name the same version"),
    ("tls", {"model": LABEL, "tls": {"secretName": "faq-tls"}}, None),
    ("tls-bad-secret-name", {"model": LABEL, "tls": {"secretName": "Faq_TLS"}}, "tls.secretName"),
    ("tls-without-secret", {"model": LABEL, "tls": {}}, "tls.secretName"),
    ("managed-tls-env", {"model": LABEL, "runtime": {"env": [{"name": "SCORING_TLS_CERT_FILE", "value": "/x"}]}},
     "env var SCORING_TLS_CERT_FILE is set by the operator"),
]


def _pydantic(spec: dict[str, Any]) -> str | None:
    """None when pydantic admits the spec, else its message."""
    try:
        api.parse_spec(spec)
    except ValidationError as e:
        return api.format_validation_error(e)
    return None


@pytest.fixture(scope="module")
def crd(cluster: KubeCluster) -> None:
    crds = REPO / "charts" / "scoring-operator" / "crds"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=spec-agreement", "-f", crds)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/scoringmodels.scoring.dev")


def _apiserver(cluster: KubeCluster, namespace: str, spec: dict[str, Any]) -> str | None:
    """None when the apiserver admits the spec (server-side dry run), else its error."""
    manifest = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "agree", "namespace": namespace},
                "spec": spec}
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=spec-agreement", "-f", "-",
                           input=json.dumps(manifest), check=False)
    return None if proc.returncode == 0 else proc.stderr


def test_pydantic_and_the_apiserver_agree_on_every_case(crd: None, cluster: KubeCluster, namespace: str) -> None:
    disagreements = []
    for case_id, spec, sentence in CASES:
        mine, theirs = _pydantic(spec), _apiserver(cluster, namespace, spec)
        if (mine is None) != (theirs is None):
            disagreements.append(f"{case_id}: pydantic {'admits' if mine is None else 'refuses'}, apiserver "
                                 f"{'admits' if theirs is None else 'refuses'} ({mine or theirs})")
        elif sentence is None and mine is not None:
            disagreements.append(f"{case_id}: expected to be admitted, both refuse: {mine} / {theirs}")
        elif sentence is not None and not (sentence in (mine or "") and sentence in (theirs or "")):
            disagreements.append(f"{case_id}: not both say {sentence!r}: pydantic {mine!r}, apiserver {theirs!r}")
    assert not disagreements, "\n".join(disagreements)
