"""The cluster-wide cap on rollouts (`SCORING_OPERATOR_MAX_CONCURRENT_ROLLOUTS`): at most N rollouts of a
new model version at once, the next started when one ends (or stalls), the waiting ones saying so.
"""

from __future__ import annotations

import copy
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from scoring_operator import metrics
from scoring_operator import spec as api
from scoring_operator.builders.meta import ANNOTATION_MODEL_VERSION, Owner, owner_reference
from scoring_operator.builders.status import Resolved
from scoring_operator.config import ConfigError, OperatorConfig
from scoring_operator.reconcile import ROLLOUT_STALL, EventSink, Reconciler
from scoring_operator.rollouts import RolloutSlots
from tests.kube.controlplane import KubeCluster
from tests.operator.conftest import delete_scoring_models
from tests.operator.kubehelpers import Operator, apply, chart_operator, scoring_model, wait_for
from tests.operator.test_operator_review_fixes import FakeKube


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------- the slots


def test_slots_admit_up_to_the_limit_then_queue_first_come_first_served() -> None:
    slots = RolloutSlots(2, stall_after=60, clock=Clock())
    a, b, c, d = (("ns", n) for n in "abcd")
    assert slots.acquire(a) and slots.acquire(b)
    assert not slots.acquire(c) and not slots.acquire(d)
    assert (slots.running, slots.waiting, slots.position(c), slots.position(d)) == (2, 2, 1, 2)
    assert slots.acquire(a)  # a holder asking again keeps its slot
    assert slots.release(a) == [c]  # c is first in line
    assert not slots.acquire(d)  # d may not jump the queue while c has not taken its slot
    assert slots.acquire(c) and slots.running == 2 and slots.position(d) == 1
    assert slots.release(("ns", "nobody")) == []


def test_a_stalled_rollout_hands_its_slot_on_and_progress_keeps_it() -> None:
    clock = Clock()
    slots = RolloutSlots(1, stall_after=60, clock=clock)
    a, b = ("ns", "a"), ("ns", "b")
    assert slots.acquire(a) and not slots.acquire(b)
    assert slots.next_expiry() == 60
    clock.now += 50
    slots.progressed(a)  # its Deployment moved on: the stall timer starts again
    clock.now += 50
    assert not slots.acquire(b) and slots.next_expiry() == pytest.approx(10)
    clock.now += 10
    assert slots.acquire(b) and not slots.holds(a)  # a made no progress for 60 s: b goes
    assert slots.release(a) == []  # a finishing later frees nothing more


def test_withdrawn_waiters_leave_the_line_and_no_cap_admits_everyone() -> None:
    slots = RolloutSlots(1, stall_after=60, clock=Clock())
    a, b, c = ("ns", "a"), ("ns", "b"), ("ns", "c")
    assert slots.acquire(a) and not slots.acquire(b) and not slots.acquire(c)
    slots.withdraw(b)  # b no longer wants a new version
    assert slots.release(a) == [c]
    unlimited = RolloutSlots(0, stall_after=60)
    assert all(unlimited.acquire(("ns", str(i))) for i in range(1000)) and unlimited.running == 0


def test_the_setting_is_validated() -> None:
    assert OperatorConfig.load({"SCORING_OPERATOR_MAX_CONCURRENT_ROLLOUTS": "40"}).max_concurrent_rollouts == 40
    assert OperatorConfig.load({}).max_concurrent_rollouts == OperatorConfig().max_concurrent_rollouts
    with pytest.raises(ConfigError, match="SCORING_OPERATOR_MAX_CONCURRENT_ROLLOUTS='-1'"):
        OperatorConfig.load({"SCORING_OPERATOR_MAX_CONCURRENT_ROLLOUTS": "-1"})


# ------------------------------------------------------------------------------------- the reconciler


class ManyKube(FakeKube):
    """One Deployment per name (the other kinds as in FakeKube), Ready on `version` to begin with."""

    def __init__(self, owners: list[Owner], version: int) -> None:
        super().__init__()
        self.deployments = {o.name: deployment(o, version, complete=True) for o in owners}
        self.statuses: dict[str, dict[str, Any]] = {o.name: {} for o in owners}

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if kind == "Deployment":
            self.calls.append(("get", kind))
            return copy.deepcopy(self.deployments.get(name))
        return await super().get(api_version, kind, namespace, name)

    async def apply(self, obj: dict[str, Any], *, field_manager: str = "scoring-operator") -> dict[str, Any]:
        live = await super().apply(obj, field_manager=field_manager)
        if obj["kind"] == "Deployment":  # the controller has not seen it yet
            name = obj["metadata"]["name"]
            old = self.deployments[name]
            same = old["metadata"]["annotations"] == obj["metadata"]["annotations"]  # no new pod template
            live["metadata"]["generation"] = old["metadata"]["generation"] + (0 if same else 1)
            live["metadata"]["uid"] = old["metadata"]["uid"]
            live["status"] = old["status"]
            self.deployments[name] = live
        return live

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.statuses[name].update(status)

    def applied_deployments(self) -> list[str]:
        return [c[3]["metadata"]["name"] for c in self.calls if c[0] == "apply" and c[1] == "Deployment"]


def deployment(owner: Owner, version: int, *, complete: bool, generation: int = 1) -> dict[str, Any]:
    observed = generation if complete else generation - 1
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": owner.name, "namespace": owner.namespace, "generation": generation, "uid": "uid-d",
                     "resourceVersion": "1", "ownerReferences": [owner_reference(owner)],
                     "annotations": {ANNOTATION_MODEL_VERSION: str(version)}},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": observed, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                   "availableReplicas": 1},
    }


class LabelResolver:
    """The label `latest` points at `version`."""

    on_change = None

    def __init__(self, version: int) -> None:
        self.version = version

    def question(self, ref: api.ModelRef) -> tuple[str, str, str]:
        return ("fake://", ref.name, "latest")

    def forget(self, question: tuple[str, str, str]) -> None:
        pass

    async def resolve(self, ref: api.ModelRef, max_age: float = 0.0) -> Resolved:
        return Resolved(name=ref.name, version=self.version, resolved_from="label:latest")


def body(owner: Owner, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid, "generation": 1},
        "spec": {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "faq", "label": "latest"},
                 "replicas": 1},
        "status": status,
    }


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def owners_of(n: int) -> list[Owner]:
    return [Owner(name=f"m{i}", namespace="ml", uid=f"uid-{i}") for i in range(n)]


def capped_at_one(config: OperatorConfig, kube: ManyKube, resolver: LabelResolver,
                  post_event: EventSink = lambda *a: None) -> Reconciler:
    """The reconciler with a cap of one rollout at a time."""
    return Reconciler(config.with_overrides(max_concurrent_rollouts=1), cast(Any, kube), cast(Any, resolver),
                      post_event)


async def test_a_label_move_rolls_at_most_the_cap_at_once_and_the_rest_say_they_wait(
    config: OperatorConfig,
) -> None:
    owners = owners_of(3)
    kube = ManyKube(owners, version=1)
    resolver = LabelResolver(version=1)
    events: list[tuple[str, str, str]] = []
    rec = capped_at_one(config, kube, resolver, lambda _body, etype, reason, message: events.append(
        (_body["metadata"]["name"], etype, reason)))
    clock = Clock()
    rec.slots = RolloutSlots(1, ROLLOUT_STALL, clock=clock)
    for o in owners:  # all serve version 1: no rollout, no slot taken
        await rec.reconcile(body(o, kube.statuses[o.name]))
        assert kube.statuses[o.name]["phase"] == "Ready"
    assert rec.slots.running == 0
    kube.calls.clear()
    events.clear()

    resolver.version = 2  # the label moves
    for o in owners:
        await rec.reconcile(body(o, kube.statuses[o.name]))
    assert kube.applied_deployments() == ["m0"]
    assert conditions(kube.statuses["m0"])["Ready"] == ("False", "RolloutInProgress")
    for name in ("m1", "m2"):
        st = kube.statuses[name]
        assert st["phase"] == "Deploying" and conditions(st)["Ready"] == ("False", "RolloutQueued")
        assert conditions(st)["Deployed"] == ("False", "RolloutQueued")
        assert "MAX_CONCURRENT_ROLLOUTS" in {c["type"]: c for c in st["conditions"]}["Ready"]["message"]
    assert not any(etype == "Warning" for _, etype, _ in events)  # waiting is no failure
    assert metrics.REGISTRY.get_sample_value("scoring_operator_rollout_slots", {"state": "running"}) == 1
    assert metrics.REGISTRY.get_sample_value("scoring_operator_rollout_slots", {"state": "queued"}) == 2
    assert rec.next_delay(("ml", "m1"), 600) == pytest.approx(ROLLOUT_STALL)  # looks again if m0 stalls

    # m0's Deployment controller makes progress: m0 keeps its slot, nobody is woken
    def m0(**counts: int) -> dict[str, Any]:  # the applied Deployment as the controller moves it on
        dep = copy.deepcopy(kube.deployments["m0"])
        dep["status"] = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1,
                         "availableReplicas": 1, **counts}
        return dep

    rec.observe_child("Deployment", m0(availableReplicas=1))
    assert not rec.state(("ml", "m1")).wake.is_set()
    # m0's new pod is available (the old one still going away): its slot goes to m1, first in line
    kube.deployments["m0"] = m0(availableReplicas=2, readyReplicas=2)
    rec.observe_child("Deployment", kube.deployments["m0"])
    assert rec.state(("ml", "m1")).wake.is_set() and not rec.state(("ml", "m2")).wake.is_set()
    for o in owners:
        await rec.reconcile(body(o, kube.statuses[o.name]))
    assert kube.applied_deployments() == ["m0", "m1"]
    assert kube.statuses["m2"]["phase"] == "Deploying"

    # m1 stalls (no Deployment event for ROLLOUT_STALL): m2 goes anyway
    clock.now += ROLLOUT_STALL
    await rec.reconcile(body(owners[2], kube.statuses["m2"]), trigger="poll")
    assert kube.applied_deployments() == ["m0", "m1", "m2"]
    assert conditions(kube.statuses["m2"])["Ready"] == ("False", "RolloutInProgress")
    kube.deployments["m0"] = m0(replicas=1, availableReplicas=1, readyReplicas=1)  # the old pod is gone
    await rec.reconcile(body(owners[0], kube.statuses["m0"]))
    assert kube.statuses["m0"]["phase"] == "Ready" and ("m0", "Normal", "Ready") in events


async def test_a_deleted_holder_frees_its_slot(config: OperatorConfig) -> None:
    owners = owners_of(2)
    kube = ManyKube(owners, version=1)
    rec = capped_at_one(config, kube, LabelResolver(version=2))
    for o in owners:
        await rec.reconcile(body(o, {}))
    assert kube.applied_deployments() == ["m0"]
    rec.forget(("ml", "m0"))
    assert rec.state(("ml", "m1")).wake.is_set()
    await rec.reconcile(body(owners[1], kube.statuses["m1"]))
    assert kube.applied_deployments() == ["m0", "m1"]


async def test_new_models_are_not_held_back(config: OperatorConfig) -> None:
    """The cap is for rollouts of an existing Deployment; creating a model's first Deployment is not one."""
    owners = owners_of(3)
    kube = ManyKube([], version=1)
    kube.deployments = {}
    original = kube.apply

    async def apply(obj: dict[str, Any], *, field_manager: str = "scoring-operator") -> dict[str, Any]:
        if obj["kind"] == "Deployment":
            kube.deployments[obj["metadata"]["name"]] = deployment(owners[0], 1, complete=False)
        return await original(obj, field_manager=field_manager)

    kube.apply = apply  # type: ignore[method-assign]
    kube.statuses = {o.name: {} for o in owners}
    rec = capped_at_one(config, kube, LabelResolver(version=1))
    for o in owners:
        await rec.reconcile(body(o, {}))
    assert kube.applied_deployments() == ["m0", "m1", "m2"] and rec.slots.running == 0


async def test_a_waiting_model_that_no_longer_wants_a_new_version_leaves_the_line(config: OperatorConfig) -> None:
    """The label moves to 2 and back to 1 before m1's turn: m1 must not keep a place that blocks m2."""
    owners = owners_of(3)
    kube = ManyKube(owners, version=1)
    resolver = LabelResolver(version=1)
    rec = capped_at_one(config, kube, resolver)
    for o in owners:
        await rec.reconcile(body(o, kube.statuses[o.name]))
    resolver.version = 2
    for o in owners:
        await rec.reconcile(body(o, kube.statuses[o.name]))
    assert kube.applied_deployments()[-1:] == ["m0"] and rec.slots.position(("ml", "m2")) == 2
    resolver.version = 1  # m1 no longer wants version 2 (m2 is not reconciled yet: it still wants it)
    await rec.reconcile(body(owners[1], kube.statuses["m1"]))
    assert not rec.slots.queued(("ml", "m1")) and kube.statuses["m1"]["phase"] == "Ready"
    assert rec.slots.position(("ml", "m2")) == 1


# ------------------------------------------------------------------------------ on the real control plane


@pytest.fixture(scope="module")
def operator(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator with a cap of one rollout at a time (this module's `ns` fixture uses it)."""
    with chart_operator(cluster, tmp_path_factory.mktemp("operator"),
                        settings={"SCORING_OPERATOR_MAX_CONCURRENT_ROLLOUTS": "1"}) as op:
        try:
            yield op
        finally:
            delete_scoring_models(cluster)


def _slots(op: Operator) -> tuple[float, float]:
    found = dict(re.findall(r'^scoring_operator_rollout_slots\{state="(\w+)"\} (\S+)$', op.metrics(), re.M))
    return float(found.get("running", 0)), float(found.get("queued", 0))


@pytest.mark.cluster
def test_a_label_move_with_a_cap_of_one_rolls_the_models_one_after_another(
    cluster: KubeCluster, ns: str, operator: Operator
) -> None:
    names = [f"capped-{i}" for i in range(3)]
    assert operator.register("capped") == 1
    apply(cluster, *(scoring_model(n, ns, {"name": "capped", "label": "latest"}, replicas=1) for n in names))

    def on(version: int) -> bool:
        items = cluster.kubectl_json("get", "scoringmodels", "-n", ns)["items"]
        return len(items) == 3 and all((i.get("status") or {}).get("phase") == "Ready"
                                       and i["status"]["model"]["version"] == version for i in items)

    wait_for("all Ready on version 1", lambda: on(1), operator=operator)
    assert _slots(operator) == (0, 0)  # creating models takes no slot

    # Every status write, as a watch delivers it (polling could miss a model's seconds in the queue).
    template = '{.metadata.name} {.status.conditions[?(@.type=="Ready")].reason}{"\\n"}'
    watch = subprocess.Popen(
        [cluster.tool("kubectl"), "--kubeconfig", str(cluster.kubeconfig), "get", "scoringmodels", "-n", ns,
         "--watch", "--request-timeout=0", "-o", f"jsonpath={template}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cluster._tool_env())
    reasons: set[tuple[str, ...]] = set()
    reader = threading.Thread(target=lambda: reasons.update(
        tuple([*line.split(), "", ""][:2]) for line in watch.stdout or ()), daemon=True)
    reader.start()
    time.sleep(1)  # the watch has listed
    seen: set[tuple[float, float]] = set()
    try:
        assert operator.register("capped") == 2  # the label moves

        def rolled() -> bool:
            seen.add(_slots(operator))
            return on(2)

        wait_for("all Ready on version 2", rolled, interval=0.1, timeout=120, operator=operator)
        time.sleep(1)  # the last status writes reach the watch
    finally:
        watch.terminate()
        watch.wait(10)
        reader.join(10)
    said_queued = {name for name, reason in reasons if reason == "RolloutQueued"}
    assert max(running for running, _ in seen) <= 1, seen  # never two at once (as far as sampled)
    assert said_queued, reasons  # the others waited, and said so in their status
    assert _slots(operator) == (0, 0)
    warnings = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", "type=Warning")["items"]
    assert not [e for e in warnings if e["involvedObject"]["kind"] == "ScoringModel"]


async def test_a_waiter_woken_for_a_free_slot_reconciles_without_the_wake_debounce() -> None:
    """The poller waits WAKE_DEBOUNCE after a wake-up to coalesce a Deployment's burst of events; a model
    waiting for a rollout slot has none, and with a small cap that wait would idle every slot it is handed."""
    import asyncio
    import time
    import types

    import kopf
    from kopf._cogs.aiokits import aioenums

    from scoring_operator import handlers
    from scoring_operator.cache import ModelState

    key = ("ml", "m0")
    setter: Any = aioenums.FlagSetter()
    woken: list[float] = []

    class Rec:
        slots = RolloutSlots(1, 60)
        model = ModelState(uid="u")

        def state(self, _key: Any) -> ModelState:
            return self.model

        def next_delay(self, _key: Any, _interval: float) -> float:
            return 600

        async def reconcile(self, _body: Any, trigger: str) -> None:
            woken.append(time.monotonic())

        def forget(self, _key: Any) -> None:
            pass

    rec = Rec()
    assert rec.slots.acquire(("ml", "other")) and not rec.slots.acquire(key)  # m0 waits for a slot
    raw = {"metadata": {"name": "m0", "namespace": "ml"}, "spec": {"model": {"pollInterval": 600}}}
    # kopf.daemon types the handler it returns as its generic DaemonFn (every kwarg required), not as `poll`:
    task = asyncio.ensure_future(handlers.poll(  # type: ignore[call-overload, call-arg]
        body=kopf.Body(cast(Any, raw)), memo=cast(Any, types.SimpleNamespace(
        reconciler=rec)), stopped=cast(Any, aioenums.AsyncFlagWaiter(setter))))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    rec.model.wake.set()
    while not woken and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # the poller failed: say why
    assert woken[0] - started < handlers.WAKE_DEBOUNCE / 2
    rec.slots.withdraw(key)  # no longer waiting: a wake-up is debounced again
    started = time.monotonic()
    rec.model.wake.set()
    while len(woken) < 2 and not task.done():
        await asyncio.sleep(0.01)
    assert woken[1] - started >= handlers.WAKE_DEBOUNCE
    setter.set()
    rec.model.rearm.set()
    await asyncio.wait_for(task, 5)
