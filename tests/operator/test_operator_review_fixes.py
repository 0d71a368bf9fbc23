"""Defects found in review, each pinned by a test: replicas handoff to the HPA, rollout of foreign
Deployments, Service repair keeping nodePorts, init container resources, toleration and resource rules."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest
from pydantic import ValidationError

from scoring_operator import spec as api
from scoring_operator.builders.meta import Owner, owner_reference
from scoring_operator.builders.status import Resolved
from scoring_operator.builders.workload import (
    HANDOFF_MANAGER,
    deployment,
    owns_replicas,
    replicas_handoff,
    with_node_ports,
)
from scoring_operator.config import FIELD_MANAGER, OperatorConfig
from scoring_operator.kube import KubeError
from scoring_operator.reconcile import Reconciler
from tests.operator.conftest import make_spec

AUTOSCALING = {"minReplicas": 3, "maxReplicas": 5, "targetInFlightRequests": 5}


def _managed(manager: str, *, replicas: bool, operation: str = "Apply") -> dict[str, Any]:
    spec: dict[str, Any] = {"f:template": {}, **({"f:replicas": {}} if replicas else {})}
    return {"manager": manager, "operation": operation, "fieldsV1": {"f:spec": spec}}


def _live_deployment(owner: Owner, replicas: int, *managed: dict[str, Any], ready: int | None = None) -> dict[str, Any]:
    ready = replicas if ready is None else ready
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": owner.name, "namespace": owner.namespace, "generation": 1,
                     "ownerReferences": [owner_reference(owner)], "managedFields": list(managed)},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 1, "replicas": ready, "updatedReplicas": ready, "readyReplicas": ready,
                   "availableReplicas": ready},
    }


# ------------------------------------------------------------------ 1. replicas -> autoscaling (pure part)


def test_owns_replicas_reads_the_managed_fields() -> None:
    owner = Owner("faq", "ml", "u1")
    assert owns_replicas(_live_deployment(owner, 3, _managed(FIELD_MANAGER, replicas=True)))
    assert not owns_replicas(_live_deployment(owner, 3, _managed(FIELD_MANAGER, replicas=False),
                                              _managed("kube-controller-manager", replicas=True, operation="Update")))
    # An Update by a manager of the same name is not the apply that will drop the field.
    assert not owns_replicas(_live_deployment(owner, 3, _managed(FIELD_MANAGER, replicas=True, operation="Update")))
    assert not owns_replicas(None)


@pytest.mark.parametrize(("live", "expected"), [(3, 3), (1, 3), (4, 4), (9, 5), (0, 3)])
def test_handoff_carries_the_live_replicas_clamped_to_the_hpa_range(owner: Owner, live: int, expected: int) -> None:
    spec = make_spec(autoscaling=AUTOSCALING)
    handoff = replicas_handoff(owner, spec, _live_deployment(owner, live, _managed(FIELD_MANAGER, replicas=True)))
    assert handoff == {"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "faq", "namespace": "ml"}, "spec": {"replicas": expected}}


def test_no_handoff_when_there_is_nothing_to_hand_over(owner: Owner, config: OperatorConfig) -> None:
    owned = _live_deployment(owner, 3, _managed(FIELD_MANAGER, replicas=True))
    assert replicas_handoff(owner, make_spec(replicas=3), owned) is None  # fixed replicas: we keep them
    autoscaled = make_spec(autoscaling=AUTOSCALING)
    assert replicas_handoff(owner, autoscaled, None) is None  # a new Deployment
    hpa_owned = _live_deployment(owner, 4, _managed(FIELD_MANAGER, replicas=False),
                                 _managed("kube-controller-manager", replicas=True, operation="Update"))
    assert replicas_handoff(owner, autoscaled, hpa_owned) is None  # already the HPA's
    assert "replicas" not in deployment(owner, autoscaled, 1, config)["spec"]


# ------------------------------------------------------------------ a reconciler on a fake API


class FakeKube:
    """Records calls; `objects` by kind; `reject` kinds answer one apply with HTTP 422."""

    def __init__(self, *objects: dict[str, Any], reject: tuple[str, ...] = ()) -> None:
        self.objects = {o["kind"]: o for o in objects}
        self.reject = set(reject)
        self.calls: list[tuple[Any, ...]] = []
        self.status: dict[str, Any] = {}

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind))
        obj = self.objects.get(kind)
        return copy.deepcopy(obj) if obj is not None else None

    async def apply(self, obj: dict[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        self.calls.append(("apply", obj["kind"], field_manager, copy.deepcopy(obj)))
        if obj["kind"] in self.reject:
            self.reject.discard(obj["kind"])
            raise KubeError("duplicate port name", reason="ApiInvalid", retryable=False, code=422)
        live = copy.deepcopy(obj)
        live["metadata"] = {**live["metadata"], "uid": f"uid-{obj['kind']}", "resourceVersion": "1"}
        return live

    async def replace_fields(self, obj: dict[str, Any], paths: tuple[str, ...]) -> None:
        self.calls.append(("replace", obj["kind"], paths, copy.deepcopy(obj)))

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind))

    async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        self.calls.append(("list_pods", namespace))
        return []

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status.update(status)

    def applies(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [(c[2], c[3]) for c in self.calls if c[0] == "apply" and c[1] == kind]


class FakeResolver:
    on_change = None

    def question(self, ref: api.ModelRef) -> tuple[str, str, str]:
        return ("fake://", ref.name, str(ref.version))

    def forget(self, question: tuple[str, str, str]) -> None:
        pass

    async def resolve(self, ref: api.ModelRef, max_age: float = 0.0) -> Resolved:
        return Resolved(name=ref.name, version=1, resolved_from="version")


def _reconciler(kube: FakeKube, config: OperatorConfig) -> Reconciler:
    return Reconciler(config, cast(Any, kube), cast(Any, FakeResolver()), lambda *a: None)


def _body(owner: Owner, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid, "generation": 2},
        "spec": {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "faq", "version": 1}, **spec},
    }


async def test_switch_to_autoscaling_hands_replicas_over_before_dropping_them(
    owner: Owner, config: OperatorConfig
) -> None:
    kube = FakeKube(_live_deployment(owner, 3, _managed(FIELD_MANAGER, replicas=True)))
    rec = _reconciler(kube, config)
    await rec.reconcile(_body(owner, autoscaling=AUTOSCALING))
    (handoff_manager, handoff), (manager, applied) = kube.applies("Deployment")
    assert (handoff_manager, handoff["spec"]) == (HANDOFF_MANAGER, {"replicas": 3})
    assert manager == FIELD_MANAGER and "replicas" not in applied["spec"]
    # Later reconciles neither hand over again nor pay another GET for it, and an unchanged desired
    # Deployment is not applied again at all.
    kube.calls.clear()
    await rec.reconcile(_body(owner, autoscaling=AUTOSCALING))
    assert kube.applies("Deployment") == []
    assert kube.calls.count(("get", "Deployment")) == 1  # only the rollout observation


async def test_back_to_fixed_replicas_and_again_hands_over_again(owner: Owner, config: OperatorConfig) -> None:
    kube = FakeKube(_live_deployment(owner, 4, _managed(FIELD_MANAGER, replicas=True)))
    rec = _reconciler(kube, config)
    await rec.reconcile(_body(owner, autoscaling=AUTOSCALING))
    await rec.reconcile(_body(owner, replicas=4))
    assert kube.applies("Deployment")[-1][1]["spec"]["replicas"] == 4
    kube.calls.clear()
    await rec.reconcile(_body(owner, autoscaling=AUTOSCALING))
    assert [(m, o["spec"].get("replicas")) for m, o in kube.applies("Deployment")] == [
        (HANDOFF_MANAGER, 4), (FIELD_MANAGER, None)]


async def test_no_handoff_when_the_hpa_already_owns_replicas(owner: Owner, config: OperatorConfig) -> None:
    kube = FakeKube(_live_deployment(owner, 5, _managed(FIELD_MANAGER, replicas=False),
                                     _managed("kube-controller-manager", replicas=True, operation="Update")))
    await _reconciler(kube, config).reconcile(_body(owner, autoscaling=AUTOSCALING))
    assert [m for m, _ in kube.applies("Deployment")] == [FIELD_MANAGER]


# ------------------------------------------------------------------ 5. a foreign Deployment's rollout


async def test_a_foreign_deployment_is_not_reported_as_our_rollout(owner: Owner, config: OperatorConfig) -> None:
    foreign = _live_deployment(Owner(owner.name, owner.namespace, "someone-else"), 3)
    kube = FakeKube(foreign)
    result = await _reconciler(kube, config).reconcile(_body(owner, replicas=1))
    assert result.failure is not None and result.failure.reason == "ChildConflict"
    assert kube.applies("Deployment") == []
    assert "readyReplicas" not in kube.status and "replicas" not in kube.status
    ready = {c["type"]: c for c in kube.status["conditions"]}["Ready"]
    assert ready["status"] == "False"
    assert kube.status["phase"] == "Failed"


# ------------------------------------------------------------------ Service repair keeps nodePorts


async def test_service_repair_keeps_allocated_node_ports(owner: Owner, config: OperatorConfig) -> None:
    live_svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": owner.name, "namespace": owner.namespace, "ownerReferences": [owner_reference(owner)]},
        "spec": {"type": "NodePort", "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080},
            {"name": "http", "port": 81, "targetPort": "http", "protocol": "TCP", "nodePort": 30081}]},
    }
    kube = FakeKube(live_svc, reject=("Service",))
    await _reconciler(kube, config).reconcile(_body(owner, service={"type": "NodePort"}))
    (replace,) = [c for c in kube.calls if c[0] == "replace"]
    assert replace[2] == ("ports",)
    assert replace[3]["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080}]
    assert len(kube.applies("Service")) == 2, "applied again after the repair"


def test_with_node_ports_leaves_cluster_ip_services_alone() -> None:
    svc: dict[str, Any] = {"kind": "Service", "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80}]}}
    live = {"spec": {"ports": [{"name": "http", "port": 81, "nodePort": 30080}]}}
    assert with_node_ports(svc, live) == svc
    assert with_node_ports({**svc, "spec": {**svc["spec"], "type": "LoadBalancer"}}, live)["spec"]["ports"] == [
        {"name": "http", "port": 80, "nodePort": 30080}]


# ------------------------------------------------------------------ init container resources


def test_init_container_gets_only_cpu_and_memory(owner: Owner, config: OperatorConfig) -> None:
    spec = make_spec(resources={"requests": {"cpu": "1", "memory": "1Gi", "example.com/fpga": 1},
                                "limits": {"memory": "2Gi", "example.com/fpga": 1}}, gpu={"count": 1})
    pod = deployment(owner, spec, 1, config)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    (runtime,) = pod["containers"]
    assert runtime["resources"]["limits"] == {"memory": "2Gi", "example.com/fpga": "1", "nvidia.com/gpu": "1"}
    only_gpu = make_spec(resources={"limits": {"example.com/fpga": 1}})
    assert "resources" not in deployment(owner, only_gpu, 1, config)["spec"]["template"]["spec"]["initContainers"][0]


# ------------------------------------------------------------------ 4. tolerations and resources


def _gpu(*tolerations: dict[str, Any]) -> dict[str, Any]:
    return {"count": 1, "tolerations": list(tolerations)}


@pytest.mark.parametrize(
    ("toleration", "message"),
    [
        ({"key": "k", "operator": "Exists", "value": "v"}, "a toleration with operator Exists must not set value"),
        ({"key": "k", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 30},
         "tolerationSeconds only applies to effect NoExecute"),
        ({"key": "k", "value": "v", "tolerationSeconds": 30}, "tolerationSeconds only applies to effect NoExecute"),
        ({"operator": "Equal", "value": "v"}, "a toleration without key matches every taint and needs operator Exists"),
        ({"key": "", "effect": "NoSchedule"}, "a toleration without key matches every taint and needs operator Exists"),
    ],
    ids=["exists-with-value", "seconds-without-noexecute", "seconds-without-effect", "no-key-equal", "empty-key"],
)
def test_tolerations_the_apiserver_would_refuse_are_refused(toleration: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        make_spec(gpu=_gpu(toleration))
    assert message in api.format_validation_error(exc.value)


def test_valid_tolerations_pass() -> None:
    spec = make_spec(gpu=_gpu(
        {"operator": "Exists"},
        {"key": "k", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "k", "operator": "Exists", "value": ""},
        {"key": "k", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30},
    ))
    assert spec.gpu is not None and len(spec.gpu.tolerations or []) == 4


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}},
         "resources.requests must not exceed resources.limits of the same resource (cpu: request 2 > limit 1500m)"),
        ({"requests": {"memory": "1.5Gi"}, "limits": {"memory": "1536M"}},
         "resources.requests must not exceed resources.limits"),
        ({"requests": {"cpu": 2}, "limits": {"cpu": 1}}, "resources.requests must not exceed resources.limits"),
        ({"requests": {"cpu": "-1"}}, "resources.requests and resources.limits must not be negative"),
        ({"limits": {"memory": "-1e3"}}, "resources.requests and resources.limits must not be negative"),
        ({"requests": {"cpu": 0.5}}, 'write the fractional quantity 0.5 as a string, e.g. "0.5" or "500m"'),
    ],
    ids=["cpu-over-limit", "binary-vs-decimal", "ints", "negative-request", "negative-limit", "float"],
)
def test_resources_the_apiserver_would_refuse_are_refused(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        make_spec(resources=resources)
    assert message in api.format_validation_error(exc.value)


def test_valid_resources_pass() -> None:
    spec = make_spec(resources={"requests": {"cpu": "500m", "memory": "1Gi", "example.com/fpga": 1},
                                "limits": {"cpu": "0.5", "memory": "1024Mi", "example.com/fpga": 1}})
    assert spec.resources is not None and spec.resources.limits == {"cpu": "0.5", "memory": "1024Mi",
                                                                     "example.com/fpga": 1}
    assert make_spec(resources={"requests": {"cpu": 2.0}}).resources.requests == {"cpu": 2}  # type: ignore[union-attr]
    assert make_spec(resources={"requests": {"cpu": "1e3"}, "limits": {"cpu": "1k"}}).resources is not None


@pytest.mark.parametrize(
    ("quantity", "value"),
    [(4, "4"), ("500m", "0.5"), ("2Gi", "2147483648"), ("1.5k", "1500"), ("1e-3", "0.001"), ("+.5", "0.5"),
     ("100n", "1E-7"), ("3E2", "300")],
)
def test_quantity_value(quantity: int | str, value: str) -> None:
    from decimal import Decimal

    assert api.quantity_value(quantity) == Decimal(value)
