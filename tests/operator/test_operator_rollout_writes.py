"""A rollout costs few API calls: pods are listed only for a rollout that is taking a while, and mere
progress (counts, messages) is written to the status at most every `PROGRESS_EVERY` seconds.

Why: 500 ScoringModels rolling out at once listed the pods of their namespace on every Deployment
event and wrote each intermediate count; both loaded the apiserver the rollout itself needs.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

from scoring_operator import reconcile
from scoring_operator.builders.meta import Owner, owner_reference
from scoring_operator.config import OperatorConfig
from scoring_operator.reconcile import POD_CHECK_AFTER, PROGRESS_EVERY, Reconciler
from tests.operator.test_operator_fetch_failure import crashing
from tests.operator.test_operator_review_fixes import FakeKube, _body, _reconciler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(reconcile, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


class CountingKube(FakeKube):
    def __init__(self, *objects: dict[str, Any]) -> None:
        super().__init__(*objects)
        self.writes: list[dict[str, Any]] = []
        self.pods: list[dict[str, Any]] = []

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.writes.append(dict(status))
        await super().patch_status(namespace, name, status)

    async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        await super().list_pods(namespace, labels)
        return self.pods

    def lists(self) -> int:
        return sum(1 for c in self.calls if c[0] == "list_pods")


def deployment(owner: Owner, *, generation: int = 1, observed: int = 1, updated: int = 0, available: int = 0,
               replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": owner.name, "namespace": owner.namespace, "generation": generation,
                     "ownerReferences": [owner_reference(owner)], "uid": "uid-Deployment", "resourceVersion": "1"},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                   "readyReplicas": available, "availableReplicas": available},
    }


async def test_progress_is_written_at_most_every_few_seconds_but_transitions_at_once(
    owner: Owner, config: OperatorConfig, clock: Clock
) -> None:
    kube = CountingKube()
    rec = _reconciler(kube, config)
    body = _body(owner, replicas=1)
    await rec.reconcile(body)  # the first apply: Deploying, written at once
    assert [w["phase"] for w in kube.writes] == ["Deploying"]
    first = {c["type"]: c for c in kube.writes[0]["conditions"]}["Ready"]["message"]

    kube.objects["Deployment"] = deployment(owner, updated=1, available=0)  # mere progress, 1 s later
    clock.now += 1
    await rec.reconcile(body)
    assert len(kube.writes) == 1
    assert rec.state(owner.key).progress_due == pytest.approx(clock.now + PROGRESS_EVERY - 1)  # the poller writes it
    # the rollout progressed just now: its pods are looked at only if it stops for POD_CHECK_AFTER
    assert rec.next_delay(owner.key, 60) == pytest.approx(min(PROGRESS_EVERY - 1, POD_CHECK_AFTER))

    clock.now += PROGRESS_EVERY
    await rec.reconcile(body, trigger="poll")
    assert len(kube.writes) == 2
    progress = {c["type"]: c for c in kube.writes[1]["conditions"]}["Ready"]["message"]
    assert progress != first and "0 of 1 updated replicas available" in progress
    assert rec.state(owner.key).progress_due is None  # no write pending

    kube.objects["Deployment"] = deployment(owner, updated=1, available=1)  # Ready: a transition
    clock.now += 0.5
    await rec.reconcile(body)
    assert [w["phase"] for w in kube.writes] == ["Deploying", "Deploying", "Ready"]
    assert rec.next_delay(owner.key, 60) == 60


async def _rolling_out_with_a_crashing_pod(
    owner: Owner, config: OperatorConfig
) -> tuple[CountingKube, Reconciler, dict[str, Any]]:
    """A ScoringModel (pollInterval 60) reconciled once, whose new pod fails to fetch its model."""
    kube = CountingKube()
    kube.pods = [crashing("faq-new", 1)]
    rec = _reconciler(kube, config)
    body = _body(owner, replicas=1)
    body["spec"]["model"]["pollInterval"] = 60
    await rec.reconcile(body)
    return kube, rec, body


async def test_pods_are_listed_only_for_a_rollout_that_takes_a_while_and_the_answer_is_kept(
    owner: Owner, config: OperatorConfig, clock: Clock
) -> None:
    kube, rec, body = await _rolling_out_with_a_crashing_pod(owner, config)
    # The Deployment controller has not seen the new spec yet (updatedReplicas is the old rollout's).
    kube.objects["Deployment"] = deployment(owner, generation=2, observed=1, updated=1)
    clock.now += POD_CHECK_AFTER + 1
    await rec.reconcile(body)
    assert kube.lists() == 0  # no pod of the new spec can exist yet
    assert rec.state(owner.key).pods_check_due == pytest.approx(clock.now + POD_CHECK_AFTER)  # looks again later

    kube.objects["Deployment"] = deployment(owner, generation=2, observed=2, updated=1)
    clock.now += 1
    await rec.reconcile(body)
    assert kube.lists() == 0  # not due yet
    clock.now += POD_CHECK_AFTER
    await rec.reconcile(body)
    assert kube.lists() == 1
    ready = {c["type"]: c for c in kube.status["conditions"]}["Ready"]
    assert ready["reason"] == "ModelFetchFailed" and kube.status["phase"] == "Failed"

    writes = len(kube.writes)
    clock.now += 1
    await rec.reconcile(body)  # a Deployment event soon after: no new list, the failure still stands
    assert kube.lists() == 1 and len(kube.writes) == writes
    for _ in range(3):  # the failure's retries (backoff) do not list again before one poll interval
        clock.now += rec.next_delay(owner.key, 60)
        await rec.reconcile(body, trigger="poll")
    assert kube.lists() == 1 and kube.status["phase"] == "Failed"
    clock.now += 60
    await rec.reconcile(body, trigger="poll")
    assert kube.lists() == 2

    kube.objects["Deployment"] = deployment(owner, generation=2, observed=2, updated=1, available=1)
    clock.now += 1
    await rec.reconcile(body)  # the rollout completed: no list, the failure is gone
    assert kube.lists() == 2 and kube.status["phase"] == "Ready"


async def test_a_quick_rollout_lists_no_pods(owner: Owner, config: OperatorConfig, clock: Clock) -> None:
    kube = CountingKube()
    rec = _reconciler(kube, config)
    body = _body(owner, replicas=1)
    await rec.reconcile(body)
    for updated, available in ((1, 0), (1, 1)):
        kube.objects["Deployment"] = deployment(owner, updated=updated, available=available)
        clock.now += 2
        await rec.reconcile(body)
    assert kube.lists() == 0 and kube.status["phase"] == "Ready"


async def test_a_slow_but_progressing_rollout_lists_no_pods_a_stuck_one_does(
    owner: Owner, config: OperatorConfig, clock: Clock
) -> None:
    """In a mass rollout every step waits on a saturated control plane: each step is progress, so no
    list; one that stops with its new pod not available is looked at after POD_CHECK_AFTER."""
    kube, rec, body = await _rolling_out_with_a_crashing_pod(owner, config)
    steps = [dict(observed=0), dict(replicas=2, updated=1, available=1), dict(replicas=2, updated=1, available=2)]
    for step in steps:  # each step comes just before the previous one would have been looked at
        kube.objects["Deployment"] = deployment(owner, **step)
        clock.now += POD_CHECK_AFTER - 0.5
        await rec.reconcile(body, trigger="poll")
    assert kube.lists() == 0
    # the new pod is available, the old one still going away (slowly): no failure of the new version
    clock.now += 5 * POD_CHECK_AFTER
    await rec.reconcile(body, trigger="poll")
    assert kube.lists() == 0 and kube.status["phase"] == "Deploying"

    # a second rollout whose new pod never becomes available: listed once it stops progressing
    kube.objects["Deployment"] = deployment(owner, generation=2, observed=2, replicas=2, updated=1, available=1)
    clock.now += 1
    await rec.reconcile(body, trigger="poll")
    assert kube.lists() == 0
    clock.now += POD_CHECK_AFTER
    await rec.reconcile(body, trigger="poll")
    assert kube.lists() == 1
    assert {c["type"]: c for c in kube.status["conditions"]}["Ready"]["reason"] == "ModelFetchFailed"


async def test_a_deployment_event_wakes_the_owner_only_when_it_shows_something_new(
    owner: Owner, config: OperatorConfig, clock: Clock
) -> None:
    """The Deployment controller writes a rolling Deployment ~8 times; an event that changes nothing
    a reconcile reads (a condition's timestamps, say) costs no reconcile."""
    rec = _reconciler(CountingKube(), config)
    await rec.reconcile(_body(owner, replicas=1))
    state = rec.state(owner.key)
    state.applied.clear()  # drift is judged separately: here only the rollout's news count
    state.wake.clear()

    def woken(dep: dict[str, Any], *, deleted: bool = False) -> bool:
        rec.observe_child("Deployment", dep, deleted=deleted)
        was = state.wake.is_set()
        state.wake.clear()
        return was

    dep = deployment(owner, updated=1, available=0)
    dep["status"]["conditions"] = [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                                    "lastUpdateTime": "2026-01-01T00:00:00Z"}]
    assert woken(dep)
    dep["metadata"]["resourceVersion"] = "2"
    dep["status"]["conditions"][0]["lastUpdateTime"] = "2026-01-01T00:00:01Z"
    assert not woken(dep)
    dep["status"]["availableReplicas"] = dep["status"]["readyReplicas"] = 1
    assert woken(dep)
    dep["status"]["conditions"][0]["reason"] = "NewReplicaSetAvailable"
    assert woken(dep)
    dep["metadata"]["annotations"] = {"scoring.dev/model-version": "9"}
    assert woken(dep)
    assert woken(dep, deleted=True)
    other = deployment(Owner(owner.name, owner.namespace, "someone-else"))
    other["metadata"]["ownerReferences"][0]["uid"] = "another-uid"
    assert not woken(other)  # not a child of this object
