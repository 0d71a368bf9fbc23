"""What the operator remembers: applied-state records and drift, the one backoff, shared registry answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest

from scoring_operator.builders import desired_children
from scoring_operator.builders.meta import Owner
from scoring_operator.cache import Applied, States, desired_digest, retry_delay
from scoring_operator.config import OperatorConfig
from scoring_operator.handlers import IndexedChildren, LeanDiffBaseStorage, trimmed
from scoring_operator.resolver import Resolver
from scoring_runtime.registry import LocalFileRegistry, RegistryUnavailable
from tests.operator.conftest import make_spec


def test_retry_delay_doubles_from_one_second_up_to_the_poll_interval() -> None:
    assert [retry_delay(n, 30) for n in range(8)] == [30, 1, 2, 4, 8, 16, 30, 30]
    assert retry_delay(3, 2) == 2
    assert retry_delay(100, 600) == 64  # at most 6 doublings


def _live(obj: dict[str, Any], rv: str = "10", uid: str = "child-uid", **meta: Any) -> dict[str, Any]:
    live = json.loads(json.dumps(obj))
    live["metadata"] = {**live["metadata"], "uid": uid, "resourceVersion": rv, **meta}
    live["status"] = {"observedGeneration": 1}
    return live


def test_applied_record_sees_drift_but_not_status_or_foreign_annotations(owner: Owner, config: OperatorConfig) -> None:
    dep = desired_children(owner, make_spec(replicas=2), 3, config).apply[1]
    live = _live(dep)
    rec = Applied.record(dep, live)
    assert rec.digest == desired_digest(dep)
    assert not rec.drifted(live)
    status_only = _live(dep, rv="11")
    status_only["status"] = {"readyReplicas": 2}
    status_only["metadata"]["annotations"] = {**status_only["metadata"]["annotations"],
                                              "deployment.kubernetes.io/revision": "2"}
    assert not rec.drifted(status_only), "status and other controllers' annotations are not drift"
    edited = _live(dep, rv="12")
    edited["spec"]["replicas"] = 5
    assert rec.drifted(edited)
    stale = _live(dep, rv="9")
    stale["spec"]["replicas"] = 5
    assert not rec.drifted(stale), "an event older than the apply is not drift"
    assert rec.drifted(None), "deleted"
    assert rec.drifted(_live(dep, rv="13", uid="recreated"))
    autoscaled = desired_children(owner, make_spec(autoscaling={"maxReplicas": 4, "targetInFlightRequests": 3}), 3,
                                  config).apply[1]
    scaled_by_hpa = _live(autoscaled, rv="20")
    hpa_rec = Applied.record(autoscaled, scaled_by_hpa)
    scaled_by_hpa["spec"]["replicas"] = 4
    scaled_by_hpa["metadata"]["resourceVersion"] = "21"
    assert not hpa_rec.drifted(scaled_by_hpa), "replicas the HPA owns are not drift"
    relabelled = _live(dep, rv="14")
    relabelled["metadata"]["labels"]["scoring.dev/model"] = "other"
    assert rec.drifted(relabelled)


def test_states_start_afresh_for_a_new_uid_but_keep_the_pollers_events() -> None:
    states = States()
    first = states.get(("ns", "a"), "uid-1")
    first.failures, first.status = 3, {"phase": "Ready"}
    again = states.get(("ns", "a"), "uid-1")
    assert again is first
    fresh = states.get(("ns", "a"), "uid-2")
    assert fresh is not first and fresh.failures == 0 and fresh.status is None
    assert (fresh.wake, fresh.rearm, fresh.lock) == (first.wake, first.rearm, first.lock)
    assert states.pop(("ns", "a")) is fresh and states.peek(("ns", "a")) is None


def test_the_cache_keeps_what_reconciles_need_of_a_child() -> None:
    body = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "5", "generation": 2,
                     "labels": {"x": "y"}, "ownerReferences": [{"uid": "o"}],
                     "managedFields": [
                         {"manager": "scoring-operator", "operation": "Apply",
                          "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}}},
                         {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
                          "fieldsV1": {"f:status": {}}}]},
        "spec": {"replicas": 2}, "status": {"readyReplicas": 2},
    }
    kept = trimmed(body, "Deployment")
    assert kept["metadata"]["managedFields"] == [
        {"manager": "scoring-operator", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    assert (kept["spec"], kept["status"], kept["metadata"]["ownerReferences"]) == (
        {"replicas": 2}, {"readyReplicas": 2}, [{"uid": "o"}])
    big = {**body, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "x"}]}}}}
    assert trimmed(big, "Deployment")["spec"] == {"replicas": 2}, "no pod template in memory"
    assert "managedFields" not in trimmed({**body, "kind": "Service"}, "Service")["metadata"]
    indices: dict[str, Any] = {  # plain dicts stand in for kopf's Index objects
        "children_deployment": {("ns", "a"): [kept]}, "children_service": {},
        "children_horizontalpodautoscaler": {}, "children_poddisruptionbudget": {}, "children_ingress": {},
        "children_httproute": {},
    }
    cache = IndexedChildren(indices)
    assert cache.get("Deployment", "ns", "a") is kept
    assert cache.get("Deployment", "ns", "b") is None and cache.get("Service", "ns", "a") is None


def _register(root: Path, tmp: Path) -> int:
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    (src / "model.json").write_text(json.dumps({"framework": "sklearn", "task": "test"}))
    (src / "w.bin").write_bytes(b"w")
    return LocalFileRegistry(root).register("faq", src).version


async def test_one_registry_read_answers_every_model_asking_the_same_question(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    _register(root, tmp_path)
    now = [0.0]
    resolver = Resolver(root, clock=lambda: now[0])
    changed: list[tuple[str, ...]] = []
    resolver.on_change = changed.append
    ref = make_spec(model={"registry": {"type": "local", "claimName": "r"}, "name": "faq", "label": "latest"}).model
    answers = await asyncio.gather(*(resolver.resolve(ref, max_age=60) for _ in range(50)))
    assert {a.version for a in answers} == {1} and resolver.reads == 1, "concurrent askers share one read"
    now[0] = 59
    await resolver.resolve(ref, max_age=60)
    assert resolver.reads == 1, "an answer younger than the interval is reused"
    _register(root, tmp_path)
    now[0] = 61
    assert (await resolver.resolve(ref, max_age=60)).version == 2 and resolver.reads == 2
    assert changed == [resolver.question(ref)], "a moved label is announced once"
    # An outage: failures are shared for half a second only, and the return is announced.
    root.rename(tmp_path / "away")
    now[0] = 200
    with pytest.raises(RegistryUnavailable):
        await resolver.resolve(ref, max_age=60)
    now[0] = 200.4
    with pytest.raises(RegistryUnavailable):
        await resolver.resolve(ref, max_age=60)
    assert resolver.reads == 3
    (tmp_path / "away").rename(root)
    now[0] = 201.5
    assert (await resolver.resolve(ref, max_age=60)).version == 2 and resolver.reads == 4
    assert len(changed) == 3, "outage start and end are both changes of the answer"


def test_the_lean_diff_base_is_kopfs_essence_exactly() -> None:
    """The diff base is built without copying status and managedFields, and equals kopf's own."""
    import kopf

    body: dict[str, Any] = {
        "apiVersion": "scoring.dev/v1alpha1", "kind": "ScoringModel",
        "metadata": {
            "name": "faq", "namespace": "ml", "uid": "u1", "generation": 3, "resourceVersion": "77",
            "labels": {"team": "search"},
            "annotations": {"note": "keep", "kubectl.kubernetes.io/last-applied-configuration": "{}",
                            "scoring.dev/last-handled-configuration": '{"spec": {}}',
                            "scoring.dev/poll": '{"started": "x"}'},
            "finalizers": ["scoring.dev/operator"],
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:replicas": {}}}}],
        },
        "spec": {"replicas": 2, "model": {"name": "faq", "label": "latest", "registry": {"type": "local"}}},
        "status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix="scoring.dev", key="last-handled-configuration")
    lean = LeanDiffBaseStorage(prefix="scoring.dev", key="last-handled-configuration")
    expected = kopfs.build(body=kopf.Body(cast(kopf.RawBody, body)))
    built = lean.build(body=kopf.Body(cast(kopf.RawBody, body)))
    assert built == expected
    assert built["spec"]["replicas"] == 2 and "status" not in built
    built["spec"]["model"]["name"] = "changed"  # a copy, not the body's own dicts
    assert body["spec"]["model"]["name"] == "faq"
    with_status = lean.build(body=kopf.Body(cast(kopf.RawBody, body)), extra_fields=["status.phase"])
    assert with_status == kopfs.build(body=kopf.Body(cast(kopf.RawBody, body)), extra_fields=["status.phase"])
    assert with_status["status"] == {"phase": "Ready"}
