"""The pure builders: every ScoringModel variant -> the exact child objects the operator applies."""

from __future__ import annotations

from typing import Any

from scoring_operator.builders import desired_children, meta
from scoring_operator.builders.meta import Owner
from scoring_operator.builders.pod import API_KEY_FILE, DEFAULT_GPU_TOLERATION, TLS_DIR
from scoring_operator.builders.scaling import hpa, pdb
from scoring_operator.builders.workload import deployment, service
from scoring_operator.config import OperatorConfig
from tests.operator.conftest import make_spec


def _containers(dep: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (runtime,) = pod["containers"]
    return init, runtime


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_every_child_is_labelled_and_owned(owner: Owner, config: OperatorConfig) -> None:
    spec = make_spec(autoscaling={"minReplicas": 2, "maxReplicas": 4, "targetInFlightRequests": 8})
    children = desired_children(owner, spec, 3, config)
    kinds = [c["kind"] for c in children.apply]
    assert kinds == ["Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    # No exposure asked for: an Ingress or HTTPRoute the operator once made is removed (and no canary/shadow
    # children to remove: there was no progressive rollout).
    assert [(r.kind, r.name) for r in children.prune] == [("Ingress", "faq"), ("HTTPRoute", "faq")]
    for child in children.apply:
        md = child["metadata"]
        assert (md["name"], md["namespace"]) == ("faq", "ml")
        assert md["labels"]["app.kubernetes.io/managed-by"] == "scoring-operator"
        assert md["labels"]["app.kubernetes.io/instance"] == "faq"
        assert md["labels"]["scoring.dev/model"] == "faq"
        assert md["ownerReferences"] == [{
            "apiVersion": "scoring.dev/v1alpha1", "kind": "ScoringModel", "name": "faq",
            "uid": owner.uid, "controller": True, "blockOwnerDeletion": True,
        }]
        assert meta.is_owned_by(child, owner)
        assert meta.controller_of(child) == ("ml", "faq")
    assert not meta.is_owned_by(children.apply[0], Owner("faq", "ml", "another-uid"))


def test_selector_matches_pod_labels_and_is_stable(owner: Owner, config: OperatorConfig) -> None:
    a = deployment(owner, make_spec(), 1, config)
    b = deployment(owner, make_spec(model={"registry": {"type": "local", "claimName": "r"}, "name": "other",
                                           "version": 7}), 7, config)
    selector = a["spec"]["selector"]["matchLabels"]
    assert selector == b["spec"]["selector"]["matchLabels"], "selectors are immutable: must not depend on the model"
    pod_labels = a["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert service(owner, make_spec())["spec"]["selector"] == selector


def test_init_container_fetches_the_pinned_version(owner: Owner, config: OperatorConfig) -> None:
    spec = make_spec(model={"registry": {"type": "local", "claimName": "models", "path": "team/a"},
                            "name": "faq", "label": "prod"})
    dep = deployment(owner, spec, 5, config)
    init, runtime = _containers(dep)
    assert init["command"] == [
        "scoring", "fetch", "--registry", "file:///registry/team/a", "--name", "faq", "--version", "5",
        "--dest", "/model", "--clean",
    ]
    assert {"name": "registry", "mountPath": "/registry", "readOnly": True} in init["volumeMounts"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["registry"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volumes["model"] == {"name": "model", "emptyDir": {}}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    # The runtime only reads the fetched model, never the registry.
    assert {"name": "model", "mountPath": "/model", "readOnly": True} in runtime["volumeMounts"]
    assert all(m["name"] != "registry" for m in runtime["volumeMounts"])
    root = deployment(owner, make_spec(), 1, config)
    assert _containers(root)[0]["command"][3] == "file:///registry"


def test_runtime_container_command_env_and_probes(owner: Owner, config: OperatorConfig) -> None:
    spec = make_spec(runtime={
        "workers": 3, "threads": 4, "device": "cuda:1", "halfPrecision": True, "allowPickle": False,
        "batching": {"maxBatchSize": 16, "maxBatchDelayMs": 4, "maxQueueRows": 512},
        "startupTimeoutSeconds": 301,
        "env": [{"name": "EXTRA", "value": "x"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    })
    _, rt = _containers(deployment(owner, spec, 1, config))
    assert rt["command"] == ["scoring", "serve", "--model-dir", "/model", "--port", "8080"]
    assert rt["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert _env(rt) == {
        "SCORING_HOST": "0.0.0.0", "SCORING_PORT": "8080", "SCORING_WORKERS": "3", "SCORING_THREADS": "4",
        "SCORING_MAX_BATCH_SIZE": "16", "SCORING_MAX_BATCH_DELAY_MS": "4", "SCORING_MAX_QUEUE_ROWS": "512",
        "SCORING_DEVICE": "cuda:1", "SCORING_HALF_PRECISION": "true", "SCORING_ALLOW_PICKLE": "false",
        "EXTRA": "x", "POD": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    assert rt["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert rt["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = rt["startupProbe"]
    # A hung load must hit the timeout: /live answers as soon as the server is up, /ready only once loaded.
    assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 301  # the whole load time is allowed
    assert startup["periodSeconds"] * (startup["failureThreshold"] - 1) < 301


def test_unset_settings_are_not_passed(owner: Owner, config: OperatorConfig) -> None:
    _, rt = _containers(deployment(owner, make_spec(), 1, config))
    assert _env(rt) == {"SCORING_HOST": "0.0.0.0", "SCORING_PORT": "8080"}
    assert "resources" not in rt


def test_security_context_is_locked_down(owner: Owner, config: OperatorConfig) -> None:
    dep = deployment(owner, make_spec(), 1, config)
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in _containers(dep):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_fixed_replicas_and_rolling_update(owner: Owner, config: OperatorConfig) -> None:
    assert deployment(owner, make_spec(), 1, config)["spec"]["replicas"] == 1
    dep = deployment(owner, make_spec(replicas=3), 1, config)
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert deployment(owner, make_spec(replicas=0), 1, config)["spec"]["replicas"] == 0
    assert hpa(owner, make_spec(replicas=3)) is None


def test_autoscaling_leaves_replicas_to_the_hpa(owner: Owner, config: OperatorConfig) -> None:
    spec = make_spec(
        autoscaling={"minReplicas": 2, "maxReplicas": 9, "targetCPUUtilizationPercentage": 65,
                     "targetInFlightRequests": 12},
        resources={"requests": {"cpu": "500m"}},
    )
    assert "replicas" not in deployment(owner, spec, 1, config)["spec"]
    h = hpa(owner, spec)
    assert h is not None and h["apiVersion"] == "autoscaling/v2"
    assert h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "faq"}
    assert (h["spec"]["minReplicas"], h["spec"]["maxReplicas"]) == (2, 9)
    assert h["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 65}}},
        {"type": "Pods", "pods": {"metric": {"name": "scoring_requests_in_flight"},
                                  "target": {"type": "AverageValue", "averageValue": "12"}}},
    ]
    only_in_flight = hpa(owner, make_spec(autoscaling={"maxReplicas": 3, "targetInFlightRequests": 5}))
    assert only_in_flight is not None and [m["type"] for m in only_in_flight["spec"]["metrics"]] == ["Pods"]


def test_pdb_only_with_more_than_one_replica(owner: Owner, config: OperatorConfig) -> None:
    assert pdb(owner, make_spec()) is None
    assert pdb(owner, make_spec(replicas=1)) is None
    assert pdb(owner, make_spec(autoscaling={"minReplicas": 1, "maxReplicas": 5, "targetInFlightRequests": 2})) is None
    p = pdb(owner, make_spec(replicas=2))
    assert p is not None and p["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": meta.selector_labels(owner)},
    }
    assert pdb(owner, make_spec(autoscaling={"minReplicas": 2, "maxReplicas": 5, "targetInFlightRequests": 2}))
    pruned = desired_children(owner, make_spec(), 1, config).prune
    assert [(r.kind, r.name) for r in pruned if r.name == "faq"][:2] == [("HorizontalPodAutoscaler", "faq"),
                                                                         ("PodDisruptionBudget", "faq")]


def test_gpu_limits_tolerations_and_image(owner: Owner, config: OperatorConfig) -> None:
    spec = make_spec(gpu={"count": 2}, resources={"requests": {"cpu": 2, "memory": "8Gi"}, "limits": {"memory": "8Gi"}})
    dep = deployment(owner, spec, 1, config)
    init, rt = _containers(dep)
    pod = dep["spec"]["template"]["spec"]
    assert rt["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"},
                               "limits": {"memory": "8Gi", "nvidia.com/gpu": "2"}}
    assert "nvidia.com/gpu" not in init["resources"].get("limits", {}), "the fetch needs no GPU"
    assert pod["tolerations"] == [DEFAULT_GPU_TOLERATION]
    assert "nodeSelector" not in pod
    assert rt["image"] == init["image"] == "example.com/runtime-cuda:1"


def test_gpu_custom_resource_selector_and_tolerations(owner: Owner, config: OperatorConfig) -> None:
    spec = make_spec(gpu={
        "count": 1, "resourceName": "nvidia.com/mig-1g.10gb",
        "nodeSelector": {"nvidia.com/gpu.product": "A100"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    })
    dep = deployment(owner, spec, 1, config)
    _, rt = _containers(dep)
    pod = dep["spec"]["template"]["spec"]
    assert rt["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": "1"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    no_tolerations = deployment(owner, make_spec(gpu={"count": 1, "tolerations": []}), 1, config)
    assert "tolerations" not in no_tolerations["spec"]["template"]["spec"]


def test_cpu_models_get_no_gpu_settings(owner: Owner, config: OperatorConfig) -> None:
    dep = deployment(owner, make_spec(gpu={"count": 0}), 1, config)
    pod = dep["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod
    _, rt = _containers(dep)
    assert rt["image"] == "example.com/runtime:1"
    torch = deployment(owner, make_spec(runtime={"framework": "torch"}), 1, config)
    assert _containers(torch)[1]["image"] == "example.com/runtime-cuda:1"
    mine = deployment(owner, make_spec(runtime={"image": "me/img:2", "imagePullPolicy": "Always",
                                                "imagePullSecrets": ["regcred"]}), 1, config)
    init, rt = _containers(mine)
    assert rt["image"] == init["image"] == "me/img:2"
    assert rt["imagePullPolicy"] == init["imagePullPolicy"] == "Always"
    assert mine["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_api_key_secret_is_mounted_as_a_file(owner: Owner, config: OperatorConfig) -> None:
    spec = make_spec(auth={"apiKeySecret": {"name": "faq-key", "key": "token"}})
    dep = deployment(owner, spec, 1, config)
    _, rt = _containers(dep)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-key"]["secret"] == {
        "secretName": "faq-key", "items": [{"key": "token", "path": "api-key"}], "defaultMode": 0o440,
    }
    assert {"name": "api-key", "mountPath": "/var/run/secrets/scoring", "readOnly": True} in rt["volumeMounts"]
    assert _env(rt)["SCORING_API_KEY_FILE"] == API_KEY_FILE == "/var/run/secrets/scoring/api-key"
    assert all("secretKeyRef" not in str(e) for e in rt["env"]), "the key is never an env var"
    plain = deployment(owner, make_spec(), 1, config)
    assert "api-key" not in {v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]}


def test_new_version_changes_only_the_pod_template_version(owner: Owner, config: OperatorConfig) -> None:
    spec = make_spec()
    v1, v1_again, v2 = (deployment(owner, spec, v, config) for v in (1, 1, 2))
    assert v1 == v1_again, "builders are deterministic: an unchanged spec means no rollout"
    annotations = v2["spec"]["template"]["metadata"]["annotations"]
    assert annotations["scoring.dev/model-version"] == "2"
    assert v1["spec"]["template"]["metadata"]["annotations"]["scoring.dev/model-version"] == "1"
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8080"
    assert v1["spec"]["template"] != v2["spec"]["template"]
    assert v1["spec"]["selector"] == v2["spec"]["selector"]


def test_service_type_port_and_annotations(owner: Owner) -> None:
    svc = service(owner, make_spec(service={"type": "LoadBalancer", "port": 8000,
                                            "annotations": {"service.beta.kubernetes.io/azure-load-balancer-internal":
                                                            "true"}}))
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert svc["metadata"]["annotations"] == {"service.beta.kubernetes.io/azure-load-balancer-internal": "true"}
    assert meta.endpoint(owner, 8000) == "http://faq.ml.svc:8000"


def test_tls_secret_mounted_env_probes_service_and_endpoint(owner: Owner, config: OperatorConfig) -> None:
    """spec.tls: the pods serve HTTPS themselves; everything that talks to them follows."""
    spec = make_spec(tls={"secretName": "faq-tls"}, auth={"apiKeySecret": {"name": "faq-key", "key": "token"}})
    dep = deployment(owner, spec, 1, config)
    _, rt = _containers(dep)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    # The whole Secret (no items): a renewal swaps cert and key together; 0440 + fsGroup 10001, non-root.
    assert volumes["tls"]["secret"] == {"secretName": "faq-tls", "defaultMode": 0o440}
    assert dep["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001
    assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in rt["volumeMounts"]
    env = _env(rt)
    assert (env["SCORING_TLS_CERT_FILE"], env["SCORING_TLS_KEY_FILE"]) == (
        "/etc/scoring/tls/tls.crt", "/etc/scoring/tls/tls.key")
    assert env["SCORING_PORT"] == "8080", "HTTPS on the usual container port"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert rt[probe]["httpGet"]["scheme"] == "HTTPS", probe
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    assert service(owner, spec)["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "https"}]
    assert meta.endpoint(owner, 80, tls=True) == "https://faq.ml.svc:80"
    # Without spec.tls nothing of it appears.
    plain = deployment(owner, make_spec(), 1, config)
    _, plain_rt = _containers(plain)
    assert "tls" not in {v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]}
    assert not any(k.startswith("SCORING_TLS") for k in _env(plain_rt))
    assert "scheme" not in plain_rt["readinessProbe"]["httpGet"]
    assert "appProtocol" not in service(owner, make_spec())["spec"]["ports"][0]


def test_tls_env_cannot_be_overridden_and_secret_name_is_checked() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="SCORING_TLS_KEY_FILE is set by the operator"):
        make_spec(runtime={"env": [{"name": "SCORING_TLS_KEY_FILE", "value": "/x"}]})
    with pytest.raises(ValidationError, match=r"tls\.secretName"):
        make_spec(tls={"secretName": "Not_A_Name"})
    with pytest.raises(ValidationError, match=r"tls\.secretName"):
        make_spec(tls={})
