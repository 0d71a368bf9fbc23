"""The Helm chart: lint, rendering of its variants, and the operator watching only some namespaces."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.controlplane import KubeCluster, namespace_name_for
from tests.operator.kubehelpers import CHART, chart_operator, get, registry_claim, scoring_model, wait_for

pytestmark = [pytest.mark.cluster]


def _render(cluster: KubeCluster, *sets: str) -> list[dict[str, Any]]:
    args: list[str | os.PathLike[str]] = ["template", "so", CHART, "-n", "scoring-system"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(cluster.helm(*args).stdout) if d]


@pytest.mark.parametrize(
    "sets",
    [(), ("watchNamespaces={team-a,team-b}", "localRegistry.claimName=models", "metrics.serviceMonitor.enabled=true")],
    ids=["defaults", "namespaced"],
)
def test_helm_lint_is_clean(cluster: KubeCluster, sets: tuple[str, ...]) -> None:
    args: list[str | os.PathLike[str]] = ["lint", "--strict", CHART]
    for s in sets:
        args += ["--set", s]
    proc = cluster.helm(*args)
    assert "0 chart(s) failed" in proc.stdout


def test_default_render_is_cluster_wide_and_locked_down(cluster: KubeCluster) -> None:
    docs = _render(cluster)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--all-namespaces" in container["args"]
    assert not any(a.startswith("--local-registry-root") for a in container["args"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert "secrets" not in resources
    # Pods: list only (to report a failing model fetch), never create/delete/exec.
    assert [set(r["verbs"]) for r in role["rules"] if "pods" in r["resources"]] == [{"list"}]
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])


def test_the_rollout_cap_reaches_the_operator_as_its_setting(cluster: KubeCluster) -> None:
    from scoring_operator.config import OperatorConfig

    def env(*sets: str) -> dict[str, str]:
        (dep,) = [d for d in _render(cluster, *sets) if d["kind"] == "Deployment"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e["value"] for e in container["env"] if "value" in e}

    default = env()["SCORING_OPERATOR_MAX_CONCURRENT_ROLLOUTS"]
    assert int(default) == OperatorConfig().max_concurrent_rollouts  # one default, chart and operator alike
    rendered = env("maxConcurrentRollouts=7")
    assert OperatorConfig.load(rendered).max_concurrent_rollouts == 7


def test_namespaced_render_uses_roles_and_mounts_the_registry(cluster: KubeCluster) -> None:
    docs = _render(cluster, "watchNamespaces={team-a,team-b}", "localRegistry.claimName=models")
    roles = [(d["kind"], d["metadata"]["namespace"]) for d in docs if d["kind"] in ("Role", "RoleBinding")]
    assert sorted(roles) == [("Role", "team-a"), ("Role", "team-b"), ("RoleBinding", "team-a"),
                             ("RoleBinding", "team-b")]
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    assert "--local-registry-root=/registry" in args
    (vol,) = [v for v in pod["volumes"] if v["name"] == "registry"]
    assert vol["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_more_than_one_replica_is_refused(cluster: KubeCluster) -> None:
    proc = cluster.helm("template", "so", CHART, "--set", "replicaCount=2", check=False)
    assert proc.returncode != 0
    assert "replicaCount must be 0 or 1" in proc.stderr


def test_service_monitor_needs_the_metrics_service(cluster: KubeCluster) -> None:
    """A ServiceMonitor selecting no Service would scrape nothing, silently: refuse to render it."""
    proc = cluster.helm("template", "so", CHART, "--set", "metrics.serviceMonitor.enabled=true",
                        "--set", "metrics.service.enabled=false", check=False)
    assert proc.returncode != 0
    assert "metrics.serviceMonitor.enabled needs metrics.service.enabled=true" in proc.stderr
    docs = _render(cluster, "metrics.serviceMonitor.enabled=true")
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [p["name"] for p in svc["spec"]["ports"]] == [monitor["spec"]["endpoints"][0]["port"]]
    assert not [d for d in _render(cluster, "metrics.service.enabled=false") if d["kind"] == "Service"]


def test_operator_watches_only_its_namespaces(cluster: KubeCluster, tmp_path: Path) -> None:
    """watchNamespaces: Roles in those namespaces are enough, and other namespaces are left alone."""
    watched = cluster.create_namespace(namespace_name_for("watched"))
    other = cluster.create_namespace(namespace_name_for("unwatched"))
    try:
        with chart_operator(cluster, tmp_path, watch_namespaces=(watched,)) as op:
            for ns in (watched, other):
                registry_claim(cluster, ns)
            op.register("scoped")
            for ns in (watched, other):
                cluster.kubectl("apply", "--server-side", "-f", "-",
                                input=json.dumps(scoring_model("scoped", ns, {"name": "scoped", "version": 1})))
            wait_for("Ready in the watched namespace", lambda: (get(cluster, "scoringmodel", watched, "scoped") or {})
                     .get("status", {}).get("phase") == "Ready", operator=op)
            time.sleep(2)
            untouched = get(cluster, "scoringmodel", other, "scoped")
            assert untouched is not None and "status" not in untouched
            assert get(cluster, "deployment", other, "scoped") is None
            for ns, expected in ((watched, "yes"), (other, "no")):
                proc = cluster.kubectl("auth", "can-i", "patch", "deployments", "-n", ns, kubeconfig=op.kubeconfig,
                                       check=False)
                assert proc.stdout.strip() == expected
            cluster.kubectl("delete", "scoringmodel", "scoped", "-n", watched, "--wait=true", "--timeout=60s")
    finally:
        for ns in (watched, other):
            cluster.kubectl("delete", "pv", f"{ns}-model-registry", "--ignore-not-found", "--wait=false", check=False)
        cluster.delete_namespace(other)  # its ScoringModel has no finalizer: nothing ever watched it
        cluster.delete_namespace(watched)
