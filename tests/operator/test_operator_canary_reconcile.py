"""The reconciler driving a canary end to end on a simulated API (real pods: tests/node/test_progressive.py).

The fake API keeps applied objects by (kind, name), marks a Deployment's pods available at once,
lists pods per Deployment and serves each pod's /metrics from counters the test moves, so the
glue (what is applied, deleted, read and written to status, when) is checked without a cluster.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from scoring_operator import metrics
from scoring_operator.builders.meta import Owner
from scoring_operator.builders.status import Resolved
from scoring_operator.config import OperatorConfig
from scoring_operator.reconcile import Reconciler

OWNER = Owner("faq", "ml", "uid-faq")


class SimKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.deleted: list[tuple[str, str]] = []
        #: per model version: (ok, errors) requests answered by each pod of that version
        self.traffic: dict[str, tuple[int, int]] = {}
        self.scrapes: list[str] = []

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def apply(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        live = copy.deepcopy(obj)
        live["metadata"] = {**live["metadata"], "uid": f"uid-{obj['metadata']['name']}", "resourceVersion": "1",
                            "generation": 1}
        if obj["kind"] == "Deployment":
            n = obj["spec"].get("replicas", 1)
            live["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
                              "availableReplicas": n}
        self.objects[(obj["kind"], obj["metadata"]["name"])] = live
        return copy.deepcopy(live)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.deleted.append((kind, name))
        self.objects.pop((kind, name), None)

    def _pods(self, track: str | None) -> list[dict[str, Any]]:
        out = []
        for (kind, name), dep in self.objects.items():
            if kind != "Deployment":
                continue
            labels = dep["spec"]["template"]["metadata"]["labels"]
            if (track == "canary") != (labels.get("scoring.dev/track") == "canary"):
                continue
            version = dep["spec"]["template"]["metadata"]["annotations"]["scoring.dev/model-version"]
            for i in range(dep["spec"].get("replicas", 1)):
                out.append({"metadata": {"name": f"{name}-{i}", "uid": f"{name}-{i}", "labels": labels,
                                         "annotations": {"scoring.dev/model-version": version}},
                            "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        return out

    async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return self._pods(labels.get("scoring.dev/track"))

    async def list_pods_selector(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        assert "scoring.dev/track!=canary" in selector
        return self._pods(None)

    async def pod_metrics(self, namespace: str, pod: str, scheme: str = "http") -> str:
        self.scrapes.append(pod)
        version = next(p["metadata"]["annotations"]["scoring.dev/model-version"]
                       for p in self._pods("canary") + self._pods(None) if p["metadata"]["name"] == pod)
        ok, errors = self.traffic.get(version, (0, 0))
        reg = CollectorRegistry()
        c = Counter("scoring_requests", "", ["endpoint", "method", "code"], registry=reg)
        c.labels("/score", "POST", "200").inc(ok)
        c.labels("/score", "POST", "500").inc(errors)
        h = Histogram("scoring_request_duration_seconds", "", ["endpoint"], registry=reg, buckets=(0.005, 0.01))
        for _ in range(ok + errors):
            h.labels("/score").observe(0.004)
        return generate_latest(reg).decode()

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        for k, v in status.items():
            if v is None:
                self.status.pop(k, None)
            else:
                self.status[k] = v


class Resolver:
    version = 1

    def question(self, ref: Any) -> tuple[str, str, str]:
        return ("sim://", ref.name, "x")

    def forget(self, question: Any) -> None:
        pass

    async def resolve(self, ref: Any, max_age: float = 0.0) -> Resolved:
        return Resolved(name=ref.name, version=self.version, resolved_from="label:latest")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def setup(**rollout: Any) -> tuple[SimKube, Resolver, Clock, Reconciler, list[tuple[str, str, str]], dict[str, Any]]:
    kube, resolver, clock = SimKube(), Resolver(), Clock()
    events: list[tuple[str, str, str]] = []
    rec = Reconciler(OperatorConfig(runtime_image="r:1", runtime_gpu_image="r:1"), cast(Any, kube),
                     cast(Any, resolver), lambda body, t, r, m: events.append((t, r, m)), clock=clock)
    body = {"metadata": {"name": "faq", "namespace": "ml", "uid": "uid-faq", "generation": 1},
            "spec": {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "faq", "label": "latest"},
                     "replicas": 5, "rollout": {
                         "strategy": "Canary",
                         "steps": [{"weight": 20, "pauseSeconds": 10}, {"weight": 100}],
                         "analysis": {"intervalSeconds": 5, "minRequests": 10, "maxErrorRate": 0.05}, **rollout}}}
    return kube, resolver, clock, rec, events, body


def stable(kube: SimKube) -> dict[str, Any]:
    return kube.objects[("Deployment", "faq")]


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_failing_canary_is_rolled_back_by_the_reconciler() -> None:
    rolled_back = sample("scoring_operator_progressive_rollouts_total", strategy="Canary", outcome="AnalysisFailed")
    failed = sample("scoring_operator_analyses_total", verdict="Failed")
    kube, resolver, clock, rec, events, body = setup()
    await rec.reconcile(body)
    assert kube.status["model"]["version"] == 1 and ("Deployment", "faq-canary") not in kube.objects
    resolver.version = 2
    await rec.reconcile(body)
    can = kube.objects[("Deployment", "faq-canary")]
    assert can["spec"]["replicas"] == 1 and stable(kube)["spec"]["replicas"] == 5  # full until the canary serves
    assert kube.status["rollout"]["phase"] == "Progressing" and kube.status["model"]["version"] == 1
    assert ("Normal", "CanaryStarted") in [e[:2] for e in events]
    clock.tick(1)
    await rec.reconcile(body)  # the canary is available: stable gives up its share; first read = baseline
    assert stable(kube)["spec"]["replicas"] == 4
    assert kube.status["rollout"]["lastAnalysis"]["verdict"] == "Inconclusive"
    assert kube.scrapes, "the pods' metrics were read"
    kube.traffic = {"1": (100, 0), "2": (5, 20)}
    clock.tick(2)
    await rec.reconcile(body)  # not due yet (interval 5 s)
    assert kube.status["rollout"]["phase"] == "Progressing"
    clock.tick(4)
    await rec.reconcile(body)
    ro = kube.status["rollout"]
    assert ro["phase"] == "RolledBack" and ro["reason"] == "AnalysisFailed", ro
    assert ro["lastAnalysis"]["candidate"] == {"requests": 25, "errors": 20, "errorRate": 0.8, "p99Ms": 4.95,
                                               "pods": 1}
    assert ("Deployment", "faq-canary") in kube.deleted and stable(kube)["spec"]["replicas"] == 5
    assert kube.status["model"]["version"] == 1 and kube.status["phase"] == "Ready"
    cond = next(c for c in kube.status["conditions"] if c["type"] == "Rollout")
    assert (cond["status"], cond["reason"]) == ("False", "AnalysisFailed")
    assert any(e[:2] == ("Warning", "CanaryRolledBack") and "error rate 80.0%" in e[2] for e in events), events
    assert sample("scoring_operator_analyses_total", verdict="Failed") == failed + 1
    assert sample("scoring_operator_progressive_rollouts_total", strategy="Canary",
                  outcome="AnalysisFailed") == rolled_back + 1
    # The label still names version 2: it stays rolled back, no new canary.
    clock.tick(60)
    await rec.reconcile(body)
    assert ("Deployment", "faq-canary") not in kube.objects and kube.status["rollout"]["phase"] == "RolledBack"


async def test_healthy_canary_is_promoted_and_the_canary_removed() -> None:
    kube, resolver, clock, rec, events, body = setup()
    await rec.reconcile(body)
    resolver.version = 2
    await rec.reconcile(body)
    clock.tick(1)
    await rec.reconcile(body)  # baseline
    kube.traffic = {"1": (100, 0), "2": (30, 0)}
    clock.tick(5)
    await rec.reconcile(body)  # passed, but the 10 s pause is not over
    assert kube.status["rollout"]["passedAnalyses"] == 1 and kube.status["rollout"]["phase"] == "Progressing"
    assert rec.next_delay(OWNER.key, 60) <= 5, "the poller comes back for the next analysis or the step's end"
    clock.tick(5)
    await rec.reconcile(body)  # next step is 100%: promotion
    assert kube.status["rollout"]["phase"] == "Promoting" and kube.status["model"]["version"] == 2
    assert stable(kube)["spec"]["template"]["metadata"]["annotations"]["scoring.dev/model-version"] == "2"
    assert stable(kube)["spec"]["replicas"] == 5
    clock.tick(1)
    await rec.reconcile(body)  # the (simulated) stable rollout is complete: the canary goes
    assert kube.status["rollout"]["phase"] == "Promoted"
    assert ("Deployment", "faq-canary") in kube.deleted
    assert {e[1] for e in events} >= {"CanaryStarted", "CanaryPromoting", "CanaryPromoted"}


async def test_manual_abort_by_version() -> None:
    kube, resolver, _, rec, _, body = setup()
    await rec.reconcile(body)
    resolver.version = 2
    await rec.reconcile(body)
    body = copy.deepcopy(body)
    body["spec"]["rollout"]["abortVersion"] = 2
    body["metadata"]["generation"] = 2
    await rec.reconcile(body)
    assert kube.status["rollout"]["reason"] == "Aborted" and ("Deployment", "faq-canary") in kube.deleted


async def test_canary_beside_an_hpa_leaves_the_stable_replicas_to_it() -> None:
    kube, resolver, clock, rec, _, body = setup()
    body = copy.deepcopy(body)
    del body["spec"]["replicas"]
    body["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 10, "targetInFlightRequests": 4}
    await rec.reconcile(body)
    assert "replicas" not in stable(kube)["spec"]
    stable(kube)["status"]["replicas"] = 8  # the HPA scaled it to 8
    resolver.version = 2
    await rec.reconcile(body)
    clock.tick(1)
    await rec.reconcile(body)
    assert "replicas" not in stable(kube)["spec"], "the HPA keeps the stable Deployment"
    assert kube.objects[("Deployment", "faq-canary")]["spec"]["replicas"] == 2  # 2 / (8 + 2) = 20%
    assert kube.status["rollout"]["effectiveWeight"] == 20.0
    assert ("HorizontalPodAutoscaler", "faq") in kube.objects
    assert kube.objects[("HorizontalPodAutoscaler", "faq")]["spec"]["scaleTargetRef"]["name"] == "faq"
