"""Smoke tests proving the test control plane is a real, secure Kubernetes.

Each test checks behaviour a fake would not have: apiserver validation (OpenAPI schema, enum,
CEL), the scheduler fitting pods to capacity, kwok running them, controller-manager garbage
collection and namespace finalization, TokenRequest + RBAC, and Helm against the live API.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.controlplane import ControlPlane, KubeCluster, current_cluster_entry, namespace_name_for, read_versions

pytestmark = pytest.mark.cluster

VERSIONS = read_versions()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0, interval: float = 0.25) -> None:
    """Poll until ``check()`` is true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def require_private(cluster: KubeCluster) -> None:
    if not cluster.private:
        pytest.skip("checks the pinned versions of the private control plane, not an existing cluster")


def api_get(cluster: KubeCluster, path: str, token: str | None = None) -> tuple[int, Any]:
    """GET with a bearer token (or anonymously), trusting the cluster's CA; (status, json body)."""
    entry = current_cluster_entry(cluster.kubeconfig)
    ctx = ssl.create_default_context()
    if entry.get("certificate-authority-data"):
        ctx.load_verify_locations(cadata=base64.b64decode(entry["certificate-authority-data"]).decode())
    elif entry.get("certificate-authority"):
        ctx.load_verify_locations(cafile=entry["certificate-authority"])
    elif entry.get("insecure-skip-tls-verify"):
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    req = urllib.request.Request(entry["server"].rstrip("/") + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(req, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def deployment(name: str, replicas: int, *, resources: dict[str, Any] | None = None) -> str:
    """A Deployment manifest; the image is never pulled (kwok plays the kubelet)."""
    container: dict[str, Any] = {"name": "main", "image": "registry.invalid/scoring/smoke:0"}
    if resources:
        container["resources"] = resources
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
            },
        }
    )


# ---------------------------------------------------------------------------------------------------


def test_version_is_pinned(cluster: KubeCluster) -> None:
    require_private(cluster)
    server = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)
    assert server["gitVersion"] == VERSIONS["K8S_VERSION"]
    assert server["minor"] == VERSIONS["K8S_VERSION"].split(".")[1]
    client = json.loads(cluster.kubectl("version", "--client", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"] == VERSIONS["K8S_VERSION"]
    assert cluster.helm("version", "--template", "{{.Version}}").stdout.strip() == VERSIONS["HELM_VERSION"]
    assert cluster.bin_dir is not None
    etcd = subprocess.run([cluster.tool("etcd"), "--version"], capture_output=True, text=True, check=True).stdout
    assert f"etcd Version: {VERSIONS['ETCD_VERSION'].lstrip('v')}" in etcd


def test_apiserver_is_secure_and_local(cluster: KubeCluster) -> None:
    """Anonymous callers get nothing beyond public info; the admin identity is system:masters."""
    if cluster.private:
        assert cluster.server.startswith("https://127.0.0.1:")
        assert isinstance(cluster, ControlPlane)
        assert all(code is None for code in cluster.components.values()), cluster.components
    status, _ = api_get(cluster, "/api/v1/namespaces/kube-system/secrets")
    assert status in (401, 403)
    whoami = json.loads(cluster.kubectl("auth", "whoami", "-o", "json").stdout)
    if cluster.private:
        assert "system:masters" in whoami["status"]["userInfo"]["groups"]
    assert cluster.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"


CRD_GROUP = "smoke.scoring.test"
CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{CRD_GROUP}
spec:
  group: {CRD_GROUP}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            required: [flavour, replicas]
            properties:
              flavour: {{type: string, enum: [sklearn, pytorch]}}
              replicas: {{type: integer, minimum: 0}}
              maxReplicas: {{type: integer}}
            x-kubernetes-validations:
            - rule: "!has(self.maxReplicas) || self.replicas <= self.maxReplicas"
              message: replicas must not exceed maxReplicas
"""


def widget(name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": f"{CRD_GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})


def test_crd_schema_enum_and_cel_are_enforced(cluster: KubeCluster, namespace: str) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=CRD)
    try:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/widgets.{CRD_GROUP}", "--timeout=60s")

        def apply(name: str, spec: dict[str, Any]) -> Any:
            return cluster.kubectl(
                "apply", "--server-side", "-n", namespace, "-f", "-", input=widget(name, spec), check=False
            )

        ok = apply("good", {"flavour": "sklearn", "replicas": 2, "maxReplicas": 3})
        assert ok.returncode == 0, ok.stderr
        got = cluster.kubectl_json("get", f"widgets.{CRD_GROUP}", "good", "-n", namespace)
        assert got["spec"] == {"flavour": "sklearn", "replicas": 2, "maxReplicas": 3}

        rejected: dict[str, tuple[dict[str, Any], str]] = {
            "missing": ({"flavour": "sklearn"}, "spec.replicas: Required value"),
            "badenum": ({"flavour": "xgboost", "replicas": 1}, 'spec.flavour: Unsupported value: "xgboost"'),
            "negative": ({"flavour": "pytorch", "replicas": -1}, "spec.replicas: Invalid value"),
            "cel": ({"flavour": "pytorch", "replicas": 5, "maxReplicas": 2}, "replicas must not exceed maxReplicas"),
        }
        for name, (spec, message) in rejected.items():
            res = apply(name, spec)
            assert res.returncode != 0, f"{name} was accepted"
            assert "is invalid" in res.stderr and message in res.stderr, res.stderr
        names = cluster.kubectl(
            "get", f"widgets.{CRD_GROUP}", "-n", namespace, "-o", "jsonpath={.items[*].metadata.name}"
        ).stdout.split()
        assert names == ["good"]
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{CRD_GROUP}", "--ignore-not-found", "--wait=false")


def test_deployment_pods_run_on_kwok_node(cluster: KubeCluster, namespace: str) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=deployment("web", 2, resources={"requests": {"cpu": "100m", "memory": "64Mi"}}),
    )
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/web", "--timeout=90s")
    dep = cluster.kubectl_json("get", "deployment", "web", "-n", namespace)
    assert dep["status"]["availableReplicas"] == 2
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert {"type": "Ready", "status": "True"}.items() <= next(
            c for c in pod["status"]["conditions"] if c["type"] == "Ready"
        ).items()
        assert pod["status"].get("podIP")
        if cluster.private:
            assert pod["spec"]["nodeName"] == ControlPlane.NODE_NAME


def test_gpu_requests_are_scheduled_against_node_capacity(cluster: KubeCluster, namespace: str) -> None:
    require_private(cluster)  # an existing cluster may have no GPUs
    gpu = {"limits": {"nvidia.com/gpu": "1"}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=deployment("onegpu", 1, resources=gpu))
    too_many = {"limits": {"nvidia.com/gpu": "9"}}  # the fake node has 8
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=deployment("ninegpus", 1, resources=too_many))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/onegpu", "--timeout=90s")

    def unschedulable() -> bool:
        events = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector", "reason=FailedScheduling")
        return any("Insufficient nvidia.com/gpu" in e.get("message", "") for e in events["items"])

    wait_until(unschedulable, "a FailedScheduling event for the 9-GPU pod")
    pod = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=ninegpus")["items"][0]
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


def test_deleting_deployment_garbage_collects_replicasets_and_pods(cluster: KubeCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=deployment("gc", 2))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/gc", "--timeout=90s")
    dep = cluster.kubectl_json("get", "deployment", "gc", "-n", namespace)
    rs = cluster.kubectl_json("get", "replicasets", "-n", namespace, "-l", "app=gc")["items"]
    assert len(rs) == 1 and rs[0]["metadata"]["ownerReferences"][0]["uid"] == dep["metadata"]["uid"]
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=gc")["items"]
    assert {p["metadata"]["ownerReferences"][0]["uid"] for p in pods} == {rs[0]["metadata"]["uid"]}

    cluster.kubectl("delete", "deployment", "gc", "-n", namespace, "--cascade=background", "--wait=false")

    def collected() -> bool:
        left = cluster.kubectl("get", "replicasets,pods", "-n", namespace, "-l", "app=gc", "-o", "name").stdout
        return not left.strip()

    wait_until(collected, "the ReplicaSet and pods to be garbage-collected", timeout=90)


def test_namespace_deletion_finishes(cluster: KubeCluster) -> None:
    """The namespace controller empties and removes a namespace (it hangs without one)."""
    ns = cluster.create_namespace(namespace_name_for("namespace-deletion"))
    cluster.kubectl("create", "configmap", "leftover", "-n", ns, "--from-literal=a=b")
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=deployment("leftover", 1))
    cluster.delete_namespace(ns, wait=True)
    assert cluster.kubectl("get", "namespace", ns, check=False).returncode != 0


def test_serviceaccount_token_is_authenticated_and_rbac_limited(cluster: KubeCluster, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    cluster.kubectl("create", "role", "cm-reader", "-n", namespace, "--verb=get,list", "--resource=configmaps")
    cluster.kubectl("create", "configmap", "visible", "-n", namespace, "--from-literal=k=v")

    kc = cluster.token_kubeconfig("reader", namespace, duration="10m")
    token = yaml.safe_load(kc.read_text())["users"][0]["user"]["token"]
    user = f"system:serviceaccount:{namespace}:reader"

    whoami = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kc).stdout)
    assert whoami["status"]["userInfo"]["username"] == user
    assert "system:serviceaccounts" in whoami["status"]["userInfo"]["groups"]

    # Authenticated, but nothing granted yet.
    status, body = api_get(cluster, f"/api/v1/namespaces/{namespace}/configmaps", token)
    assert status == 403 and body["reason"] == "Forbidden" and user in body["message"]

    cluster.kubectl(
        "create", "rolebinding", "reader", "-n", namespace, "--role=cm-reader", f"--serviceaccount={namespace}:reader"
    )

    def can_list() -> bool:
        return api_get(cluster, f"/api/v1/namespaces/{namespace}/configmaps", token)[0] == 200

    wait_until(can_list, "the RoleBinding to take effect", timeout=30)
    got = cluster.kubectl("get", "configmap", "visible", "-n", namespace, "-o", "jsonpath={.data.k}", kubeconfig=kc)
    assert got.stdout == "v"

    for path in (f"/api/v1/namespaces/{namespace}/secrets", "/api/v1/namespaces/kube-system/configmaps"):
        status, body = api_get(cluster, path, token)
        assert status == 403, (path, body)
    denied = cluster.kubectl("create", "configmap", "nope", "-n", namespace, kubeconfig=kc, check=False)
    assert denied.returncode != 0 and "is forbidden" in denied.stderr
    assert (
        cluster.kubectl("auth", "can-i", "list", "secrets", "-n", namespace, kubeconfig=kc, check=False).stdout.strip()
        == "no"
    )

    assert api_get(cluster, f"/api/v1/namespaces/{namespace}/configmaps", token[:-4] + "AAAA")[0] == 401


def write_chart(root: Path) -> Path:
    chart = root / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\nappVersion: '1.0'\n")
    (chart / "values.yaml").write_text("message: hello\nreplicas: 1\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\n"
        "data:\n  message: {{ .Values.message | quote }}\n"
        "  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    (chart / "templates" / "deployment.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n"
        "spec:\n  replicas: {{ .Values.replicas }}\n"
        "  selector:\n    matchLabels: {app: {{ .Release.Name }}}\n"
        "  template:\n    metadata:\n      labels: {app: {{ .Release.Name }}}\n"
        "    spec:\n      containers:\n      - name: main\n        image: registry.invalid/scoring/smoke:0\n"
    )
    return chart


def test_helm_template_and_install(cluster: KubeCluster, namespace: str, tmp_path: Path) -> None:
    chart = write_chart(tmp_path)
    minor = VERSIONS["K8S_VERSION"].split(".")[1]

    rendered = list(yaml.safe_load_all(cluster.helm("template", "rel", chart, "--set", "message=hi").stdout))
    cm = next(d for d in rendered if d and d["kind"] == "ConfigMap")
    assert cm["metadata"]["name"] == "rel-config" and cm["data"]["message"] == "hi"
    if cluster.private:  # helm's built-in default Kubernetes version comes from the build's ldflags
        assert cm["data"]["kubeVersion"].startswith(f"v1.{minor}.")

    cluster.helm("install", "smoke", chart, "-n", namespace, "--set", "message=installed", "--wait", "--timeout", "90s")
    releases = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("smoke", "deployed")]
    live = cluster.kubectl_json("get", "configmap", "smoke-config", "-n", namespace)
    assert live["data"]["message"] == "installed"
    if cluster.private:  # against the live cluster helm reads the real server version
        assert live["data"]["kubeVersion"] == VERSIONS["K8S_VERSION"]
    assert cluster.kubectl_json("get", "deployment", "smoke", "-n", namespace)["status"]["availableReplicas"] == 1

    cluster.helm("uninstall", "smoke", "-n", namespace, "--wait", "--timeout", "60s")
    assert cluster.kubectl("get", "configmap", "smoke-config", "-n", namespace, check=False).returncode != 0
