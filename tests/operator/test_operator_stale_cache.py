"""A reconcile that runs before the watch has delivered this process's own apply does not report Ready.

Why: at 500 ScoringModels the Deployment watch lags seconds behind the applies. A reconcile woken in
between read the cached, pre-apply Deployment (the previous version's rollout, complete) and wrote
the ScoringModel Ready on the new version before its pods existed, then Deploying again, then Ready:
two status writes and a Ready Event too many, and a false Ready a user (or a pipeline) acts on.
"""

from __future__ import annotations

from typing import Any, cast

from scoring_operator import spec as api
from scoring_operator.builders.meta import ANNOTATION_MODEL_VERSION, Owner, owner_reference
from scoring_operator.builders.status import Resolved
from scoring_operator.config import FIELD_MANAGER, OperatorConfig
from scoring_operator.reconcile import Reconciler
from tests.operator.test_operator_review_fixes import FakeKube, FakeResolver, _body


class SpecResolver(FakeResolver):
    """Resolves a pinned reference to the version it names (FakeResolver always says version 1)."""

    async def resolve(self, ref: api.ModelRef, max_age: float = 0.0) -> Resolved:
        return Resolved(name=ref.name, version=int(ref.version or 1), resolved_from="version")


class NewerKube(FakeKube):
    """An apiserver whose applies answer with a resourceVersion newer than anything the watch has shown."""

    async def apply(self, obj: dict[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        live = await super().apply(obj, field_manager=field_manager)
        live["metadata"]["resourceVersion"] = "100"
        live["metadata"]["generation"] = 2
        return live


class Watched:
    """The watch cache (kopf's indexes in production): what the Deployment watch delivered last."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(kind)


def _deployment(owner: Owner, *, version: int, rv: str, generation: int, observed: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": "uid-Deployment",
                     "resourceVersion": rv, "generation": generation, "ownerReferences": [owner_reference(owner)],
                     "annotations": {ANNOTATION_MODEL_VERSION: str(version)}},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": observed, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                   "availableReplicas": 1},
    }


async def test_a_reconcile_before_the_watch_caught_up_with_the_apply_is_not_ready(
    owner: Owner, config: OperatorConfig
) -> None:
    kube, watched = NewerKube(), Watched()
    rec = Reconciler(config, cast(Any, kube), cast(Any, SpecResolver()), lambda *a: None, children=watched)
    # Version 1 served and complete; the watch shows it.
    watched.objects["Deployment"] = _deployment(owner, version=1, rv="50", generation=1, observed=1)
    body = _body(owner, replicas=1)
    body["spec"]["model"]["version"] = 2
    await rec.reconcile(body)  # applies version 2 (resourceVersion 100)
    assert kube.status["phase"] == "Deploying" and kube.status["model"]["version"] == 2
    assert len(kube.applies("Deployment")) == 1

    await rec.reconcile(body, trigger="wake")  # woken before the watch delivered the apply
    assert len(kube.applies("Deployment")) == 1, "unchanged: not applied again"
    assert kube.status["phase"] == "Deploying", "the cached Deployment is the previous version's rollout"

    # The watch catches up: the controller saw generation 2 and its pods are ready.
    watched.objects["Deployment"] = _deployment(owner, version=2, rv="120", generation=2, observed=2)
    await rec.reconcile(body, trigger="wake")
    assert kube.status["phase"] == "Ready" and kube.status["model"]["version"] == 2
    assert rec.state(owner.key).deployment is None, "no copy kept once the watch caught up"


async def test_a_deployment_someone_else_changed_is_read_from_the_watch(owner: Owner, config: OperatorConfig) -> None:
    kube, watched = NewerKube(), Watched()
    rec = Reconciler(config, cast(Any, kube), cast(Any, SpecResolver()), lambda *a: None, children=watched)
    body = _body(owner, replicas=1)
    await rec.reconcile(body)
    assert kube.status["phase"] == "Deploying"
    newer = _deployment(owner, version=1, rv="130", generation=2, observed=2)
    watched.objects["Deployment"] = newer
    await rec.reconcile(body, trigger="wake")
    assert kube.status["phase"] == "Ready"
