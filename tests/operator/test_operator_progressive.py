"""Canary and shadow rollouts, pure parts: spec rules, metrics analysis, the state machine, the children."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError

from scoring_operator.builders import canary, desired_children
from scoring_operator.builders.analysis import Numbers, PodSample, judge, parse_metrics, quantile, window
from scoring_operator.builders.meta import Owner
from scoring_operator.builders.progress import Decision, Inputs, Track, canary_for, decide, events, split
from scoring_operator.builders.status import Observation, Resolved, Rollout, compute_status
from scoring_operator.config import OperatorConfig
from scoring_operator.spec import AnalysisSpec
from tests.operator.conftest import make_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- spec


def test_rollout_defaults_and_rules() -> None:
    spec = make_spec(rollout={"strategy": "Canary"})
    assert spec.strategy == "Canary"
    assert spec.rollout is not None
    assert [(s.weight, s.pause_seconds) for s in spec.rollout.effective_steps] == [(10, 60), (50, 60), (100, 0)]
    assert make_spec().strategy == "RollingUpdate"
    with pytest.raises(ValidationError, match="increase strictly"):
        make_spec(rollout={"strategy": "Canary", "steps": [{"weight": 50}, {"weight": 20}]})
    with pytest.raises(ValidationError, match="increase strictly"):
        make_spec(rollout={"strategy": "Canary", "steps": [{"weight": 50}, {"weight": 50}]})
    with pytest.raises(ValidationError, match="only apply to strategy Canary"):
        make_spec(rollout={"strategy": "Shadow", "steps": [{"weight": 50}]})
    with pytest.raises(ValidationError, match="only applies to strategy Shadow"):
        make_spec(rollout={"strategy": "Canary", "shadow": {"percent": 10}})
    with pytest.raises(ValidationError, match="same version"):
        make_spec(rollout={"strategy": "Canary", "promoteVersion": 3, "abortVersion": 3})
    with pytest.raises(ValidationError):
        make_spec(rollout={"strategy": "Canary", "steps": [{"weight": 0}]})
    with pytest.raises(ValidationError):
        make_spec(rollout={"strategy": "Canary", "analysis": {"maxErrorRate": 2}})
    with pytest.raises(ValidationError):
        make_spec(rollout={"strategy": "Blue"})


def test_shadow_config_env_is_the_operators() -> None:
    with pytest.raises(ValidationError, match="set by the operator"):
        make_spec(runtime={"env": [{"name": "SCORING_SHADOW_CONFIG_FILE", "value": "/x"}]})


# ------------------------------------------------------------------------------------------ analysis


def exposition(ok: int, errors: int, latencies: list[float], *, endpoint: str = "/score") -> str:
    """Real prometheus_client output shaped like the runtime's (same names and labels)."""
    reg = CollectorRegistry()
    requests = Counter("scoring_requests", "x", ["endpoint", "method", "code"], registry=reg)
    latency = Histogram("scoring_request_duration_seconds", "x", ["endpoint"], registry=reg,
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
    requests.labels(endpoint, "POST", "200").inc(ok)
    requests.labels(endpoint, "POST", "500").inc(errors)
    requests.labels("/v2/health/ready", "GET", "200").inc(1000)  # probes are never judged
    requests.labels(endpoint, "POST", "400").inc(7)  # client errors are not the model's
    for s in latencies:
        latency.labels(endpoint).observe(s)
    latency.labels("/metrics").observe(9.0)
    return generate_latest(reg).decode()


def test_parse_metrics_counts_scoring_requests_and_5xx_only() -> None:
    s = parse_metrics(exposition(90, 10, [0.002] * 99 + [0.4]))
    assert (s.requests, s.errors) == (107, 10)
    buckets = dict(s.buckets)
    assert buckets[math.inf] == 100 and buckets[0.0025] == 99
    v2 = parse_metrics(exposition(5, 0, [], endpoint="/v2/models/{name}/infer"))
    assert v2.requests == 12
    assert parse_metrics(exposition(3, 0, [], endpoint="/v2")).requests == 0


def test_window_is_restart_safe_and_counts_new_pods_from_zero() -> None:
    base = {"a": PodSample(100, 1, ((0.01, 90), (math.inf, 100))), "gone": PodSample(50, 0, ())}
    now = {"a": PodSample(130, 4, ((0.01, 110), (math.inf, 130))),
           "b": PodSample(20, 0, ((0.01, 20), (math.inf, 20)))}
    w = window(now, base)
    assert (w.requests, w.errors) == (50, 3)
    assert dict(w.buckets) == {0.01: 40, math.inf: 50}
    restarted = window({"a": PodSample(10, 0, ((0.01, 10), (math.inf, 10)))}, base)
    assert restarted.requests == 10  # the counter went down: the pod restarted, all of it is new


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.1 * (99 - 50) / 50)
    assert quantile(0.99, [(0.1, 0.0), (math.inf, 10.0)]) == 0.1  # in +Inf: the highest finite bound
    assert quantile(0.99, []) is None
    assert quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)]) is None


def numbers(requests: int, errors: int, p99_ms: float | None) -> Numbers:
    return Numbers(requests, errors, 1, errors / requests if requests else None, p99_ms)


def test_judge_thresholds() -> None:
    a = AnalysisSpec(min_requests=20, max_error_rate=0.05, max_p99_latency_ratio=2, max_p99_latency_ms=500)
    stable = numbers(200, 0, 10)
    assert judge(numbers(10, 5, 10), stable, a).verdict == "Inconclusive"
    assert judge(numbers(100, 1, 12), stable, a).verdict == "Passed"
    failed = judge(numbers(100, 20, 12), stable, a)
    assert failed.verdict == "Failed" and "error rate 20.0%" in failed.message
    slow = judge(numbers(100, 0, 30), stable, a)
    assert slow.verdict == "Failed" and "3.00x the stable" in slow.message
    assert judge(numbers(100, 0, 600), numbers(200, 0, 400), a).message.startswith("p99 latency 600 ms above")
    assert judge(numbers(0, 0, None), stable, AnalysisSpec(min_requests=0)).verdict == "Passed"


# -------------------------------------------------------------------------------------------- split


@pytest.mark.parametrize(("total", "weight", "expected"), [
    (5, 20, (4, 1)), (10, 10, (9, 1)), (10, 50, (5, 5)), (4, 90, (1, 3)), (1, 10, (1, 1)), (2, 1, (1, 1)),
    (0, 50, (0, 0)),
])
def test_replica_split(total: int, weight: int, expected: tuple[int, int]) -> None:
    assert split(total, weight) == expected


def test_canary_beside_an_hpa() -> None:
    assert canary_for(9, 10, 20) == 1
    assert canary_for(4, 50, 20) == 4
    assert canary_for(4, 50, 3) == 3


# ------------------------------------------------------------------------------------ state machine


def canary_spec(**rollout: Any) -> Any:
    return make_spec(replicas=5, rollout={
        "strategy": "Canary", "steps": [{"weight": 20, "pauseSeconds": 30}, {"weight": 60, "pauseSeconds": 30},
                                        {"weight": 100}],
        "analysis": {"intervalSeconds": 5, "minRequests": 10, "maxErrorRate": 0.05}, **rollout})


def passed() -> Any:
    return judge(numbers(50, 0, 5), numbers(200, 0, 5), AnalysisSpec(min_requests=10))


def failed() -> Any:
    return judge(numbers(50, 25, 5), numbers(200, 0, 5), AnalysisSpec(min_requests=10))


def status_of(d: Decision) -> dict[str, Any]:
    """`d.status`, which the decisions these tests index always carry."""
    assert d.status is not None
    return d.status


def candidate_of(d: Decision) -> Track:
    assert d.candidate is not None
    return d.candidate


def step(spec: Any, old: dict[str, Any] | None, now: datetime, **kw: Any) -> Decision:
    base: dict[str, Any] = {"spec": spec, "generation": 3, "target": 2, "stable": 1, "old": old, "now": now}
    base.update(kw)
    return decide(Inputs(**base))


def test_canary_walks_its_steps_then_promotes_and_removes_the_old_deployment() -> None:
    spec = canary_spec()
    d = step(spec, None, T0)
    assert d.stable_version == 1 and d.candidate == Track("canary", 2, 1)
    assert d.stable_replicas == 5  # full capacity until the canary pods serve
    assert status_of(d)["phase"] == "Progressing" and status_of(d)["step"] == 1 and status_of(d)["weight"] == 20
    assert not d.analyse
    assert events(None, d.status)[0][1] == "CanaryStarted"

    d = step(spec, d.status, T0 + timedelta(seconds=10), candidate_available=True)
    assert (d.stable_replicas, candidate_of(d).replicas) == (4, 1) and status_of(d)["effectiveWeight"] == 20.0
    assert d.analyse
    # The pause is not over: a passed analysis is counted, the step holds.
    d = step(spec, d.status, T0 + timedelta(seconds=15), candidate_available=True, judgement=passed())
    assert status_of(d)["step"] == 1 and status_of(d)["passedAnalyses"] == 1
    assert status_of(d)["lastAnalysis"]["verdict"] == "Passed"
    assert d.recheck is not None and d.recheck <= 5
    d = step(spec, d.status, T0 + timedelta(seconds=31), candidate_available=True)
    assert status_of(d)["step"] == 2 and status_of(d)["weight"] == 60 and status_of(d)["passedAnalyses"] == 0
    assert (d.stable_replicas, candidate_of(d).replicas) == (2, 3)
    assert events({"phase": "Progressing", "candidateVersion": 2, "step": 1}, d.status)[0][1] == "CanaryStepAdvanced"
    # No verdict in this step yet: the pause alone does not advance it.
    d = step(spec, d.status, T0 + timedelta(seconds=70), candidate_available=True)
    assert status_of(d)["step"] == 2
    d = step(spec, d.status, T0 + timedelta(seconds=75), candidate_available=True, judgement=passed())
    # The next step is 100%: promotion. The stable Deployment takes version 2; the canary stays until done.
    assert status_of(d)["phase"] == "Promoting" and d.stable_version == 2 and d.candidate is not None
    assert d.stable_replicas is None
    # status.model now says 2 (stable): the next reconciles keep the canary until the stable rollout is done.
    d = step(spec, d.status, T0 + timedelta(seconds=80), stable=2, stable_done=False)
    assert status_of(d)["phase"] == "Promoting" and d.candidate == Track("canary", 2, 3)
    d = step(spec, d.status, T0 + timedelta(seconds=90), stable=2, stable_done=True)
    assert status_of(d)["phase"] == "Promoted" and d.candidate is None and d.stable_version == 2
    assert events({"phase": "Promoting", "candidateVersion": 2, "step": 2}, d.status)[0][1] == "CanaryPromoted"


def test_failed_analysis_rolls_back_and_stays_rolled_back_until_the_spec_changes() -> None:
    spec = canary_spec()
    d = step(spec, None, T0)
    d = step(spec, d.status, T0 + timedelta(seconds=10), candidate_available=True, judgement=failed())
    assert status_of(d)["phase"] == "RolledBack" and status_of(d)["reason"] == "AnalysisFailed"
    assert "error rate 50.0%" in status_of(d)["message"]
    assert d.candidate is None and d.stable_version == 1 and d.stable_replicas is None
    assert events({"phase": "Progressing", "candidateVersion": 2, "step": 1}, d.status)[0][:2] == (
        "Warning", "CanaryRolledBack")
    again = step(spec, d.status, T0 + timedelta(seconds=60))
    assert again.candidate is None and again.status == d.status
    retried = step(spec, d.status, T0 + timedelta(seconds=60), generation=4)
    assert retried.candidate is not None and status_of(retried)["phase"] == "Progressing"
    newer = step(spec, d.status, T0 + timedelta(seconds=60), target=3)
    assert newer.candidate == Track("canary", 3, 1)


def test_failure_limit_tolerates_single_failures() -> None:
    spec = canary_spec(analysis={"intervalSeconds": 5, "minRequests": 10, "failureLimit": 2})
    d = step(spec, None, T0)
    d = step(spec, d.status, T0 + timedelta(seconds=10), candidate_available=True, judgement=failed())
    assert status_of(d)["phase"] == "Progressing" and status_of(d)["failedAnalyses"] == 1
    d = step(spec, d.status, T0 + timedelta(seconds=15), candidate_available=True, judgement=failed())
    assert status_of(d)["phase"] == "RolledBack"


def test_manual_promote_and_abort_are_keyed_by_version() -> None:
    d = step(canary_spec(), None, T0)
    aborted = step(canary_spec(abortVersion=2), d.status, T0 + timedelta(seconds=1))
    assert status_of(aborted)["phase"] == "RolledBack" and status_of(aborted)["reason"] == "Aborted"
    promoted = step(canary_spec(promoteVersion=2), d.status, T0 + timedelta(seconds=1))
    assert status_of(promoted)["phase"] == "Promoting" and promoted.stable_version == 2
    stale = step(canary_spec(abortVersion=1, promoteVersion=7), d.status, T0 + timedelta(seconds=1))
    assert status_of(stale)["phase"] == "Progressing"  # left in Git for other versions: harmless


def test_no_canary_on_first_deployment_or_plain_rolling_update() -> None:
    first = step(canary_spec(), None, T0, stable=None)
    assert first.candidate is None and first.stable_version == 2 and first.status is None
    plain = step(make_spec(replicas=5), None, T0)
    assert plain.candidate is None and plain.stable_version == 2


def test_version_moved_back_to_stable_ends_the_canary() -> None:
    d = step(canary_spec(), None, T0)
    back = step(canary_spec(), d.status, T0 + timedelta(seconds=5), target=1)
    assert (back.candidate is None and status_of(back)["phase"] == "RolledBack"
            and status_of(back)["reason"] == "Superseded")


def test_shadow_runs_beside_full_stable_and_promotes_after_its_duration() -> None:
    spec = make_spec(replicas=3, rollout={"strategy": "Shadow", "shadow": {"percent": 25, "durationSeconds": 60},
                                          "analysis": {"intervalSeconds": 5, "minRequests": 10}})
    d = step(spec, None, T0)
    assert d.candidate == Track("shadow", 2, 1) and d.stable_replicas is None and d.shadow_percent == 25
    d = step(spec, d.status, T0 + timedelta(seconds=30), candidate_available=True, judgement=passed())
    assert status_of(d)["phase"] == "Progressing" and d.shadow_percent == 25
    d = step(spec, d.status, T0 + timedelta(seconds=61), candidate_available=True)
    assert status_of(d)["phase"] == "Promoting" and d.stable_version == 2
    assert d.candidate is None and d.shadow_percent == 0  # stop copying; the stable pods take the version


# ------------------------------------------------------------------------------------------ children


@pytest.fixture
def cfg() -> OperatorConfig:
    return OperatorConfig(runtime_image="example.com/runtime:1", runtime_gpu_image="example.com/runtime-cuda:1")


OWNER = Owner(name="faq", namespace="ml", uid="0b6c1c1e-5f0a-4c38-9d1f-6a2c3c6d7e8f")


def by_name(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_plain_specs_keep_their_pod_template(cfg: OperatorConfig) -> None:
    """No spec.rollout: the same Deployment as before (no pod of an existing ScoringModel restarts)."""
    children = desired_children(OWNER, make_spec(replicas=2), 1, cfg)
    dep = by_name(children.apply)[("Deployment", "faq")]
    assert canary.LABEL_TRACK not in dep["spec"]["template"]["metadata"]["labels"]
    # Nothing of a canary can exist: nothing to look up for removal (no API call for plain specs).
    assert all(r.name == "faq" for r in children.prune)
    # After a rollout (status.rollout recorded), its leftovers are removed.
    after = desired_children(OWNER, make_spec(replicas=2), 1, cfg, Decision(1, status={"phase": "Promoted"}))
    assert {("Deployment", "faq-canary"), ("Deployment", "faq-shadow"), ("Service", "faq-shadow"),
            ("ConfigMap", "faq-shadow")} <= {(r.kind, r.name) for r in after.prune}


def test_canary_children(cfg: OperatorConfig) -> None:
    spec = canary_spec()
    d = Decision(stable_version=1, stable_replicas=4, candidate=Track("canary", 2, 1), status={"weight": 20})
    objs = by_name(desired_children(OWNER, spec, 2, cfg, d).apply)
    stable, can = objs[("Deployment", "faq")], objs[("Deployment", "faq-canary")]
    assert stable["spec"]["replicas"] == 4 and can["spec"]["replicas"] == 1
    assert stable["metadata"]["annotations"]["scoring.dev/model-version"] == "1"
    assert can["spec"]["template"]["metadata"]["annotations"]["scoring.dev/model-version"] == "2"
    assert stable["spec"]["template"]["metadata"]["labels"][canary.LABEL_TRACK] == "stable"
    labels = can["spec"]["template"]["metadata"]["labels"]
    assert labels[canary.LABEL_TRACK] == "canary"
    # The one Service selects canary pods too (the replica split); the stable selector is unchanged.
    svc = objs[("Service", "faq")]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert stable["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "scoring-model",
                                                         "app.kubernetes.io/instance": "faq"}
    assert all(labels[k] == v for k, v in can["spec"]["selector"]["matchLabels"].items())
    assert can["spec"]["selector"]["matchLabels"][canary.LABEL_TRACK] == "canary"
    assert can["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert ("Service", "faq-canary") not in objs


def test_shadow_children(cfg: OperatorConfig) -> None:
    spec = make_spec(replicas=2, rollout={"strategy": "Shadow", "shadow": {"percent": 30}})
    d = Decision(stable_version=1, candidate=Track("shadow", 2, 1), shadow_percent=30)
    children = desired_children(OWNER, spec, 2, cfg, d)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in children.apply]
    assert kinds.index(("ConfigMap", "faq-shadow")) < kinds.index(("Deployment", "faq"))  # mounted by stable pods
    objs = by_name(children.apply)
    stable, shadow, svc = objs[("Deployment", "faq")], objs[("Deployment", "faq-shadow")], objs[("Service", "faq")]
    shadow_labels = shadow["spec"]["template"]["metadata"]["labels"]
    # Never selected by the main Service: it receives copies only.
    assert any(shadow_labels.get(k) != v for k, v in svc["spec"]["selector"].items())
    assert objs[("Service", "faq-shadow")]["spec"]["selector"] == shadow["spec"]["selector"]["matchLabels"]
    config = json.loads(objs[("ConfigMap", "faq-shadow")]["data"]["shadow.json"])
    assert config == {"url": "http://faq-shadow.ml.svc:80", "percent": 30}
    runtime = stable["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "SCORING_SHADOW_CONFIG_FILE", "value": "/etc/scoring/shadow/shadow.json"} in runtime["env"]
    assert any(v.get("configMap", {}).get("name") == "faq-shadow" and v["configMap"]["optional"]
               for v in stable["spec"]["template"]["spec"]["volumes"])
    # Shadowing stops by emptying the ConfigMap, not by changing the stable pods.
    idle = by_name(desired_children(OWNER, spec, 2, cfg, Decision(stable_version=1)).apply)
    assert idle[("ConfigMap", "faq-shadow")]["data"]["shadow.json"] == ""
    assert idle[("Deployment", "faq")]["spec"]["template"] == stable["spec"]["template"]


def test_shadow_resources_apply_to_the_shadow_pods_only(cfg: OperatorConfig) -> None:
    resources = {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    small = {"requests": {"cpu": "10m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    spec = make_spec(replicas=2, resources=resources,
                     rollout={"strategy": "Shadow", "shadow": {"percent": 30, "resources": small}})
    d = Decision(stable_version=1, candidate=Track("shadow", 2, 1), shadow_percent=30)
    objs = by_name(desired_children(OWNER, spec, 2, cfg, d).apply)

    def pod(name: str) -> dict[str, Any]:
        return dict(objs[("Deployment", name)]["spec"]["template"]["spec"])

    assert pod("faq")["containers"][0]["resources"] == resources
    assert pod("faq")["initContainers"][0]["resources"] == resources
    assert pod("faq-shadow")["containers"][0]["resources"] == small
    assert pod("faq-shadow")["initContainers"][0]["resources"] == small
    # Unset: the shadow's pods are sized like the stable ones.
    same = make_spec(replicas=2, resources=resources, rollout={"strategy": "Shadow"})
    objs = by_name(desired_children(OWNER, same, 2, cfg, d).apply)
    assert pod("faq-shadow")["containers"][0]["resources"] == resources
    # Checked like spec.resources.
    with pytest.raises(ValidationError, match="must not exceed"):
        make_spec(rollout={"strategy": "Shadow", "shadow": {"resources": {
            "requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}})


def test_route_plan() -> None:
    spec = make_spec()
    backends, mirror = canary.route_plan(OWNER, spec)
    assert [(b.service, b.weight) for b in backends] == [("faq", 1)] and mirror is None
    backends, _ = canary.route_plan(OWNER, spec, canary_weight=20)
    assert [(b.service, b.port, b.weight) for b in backends] == [("faq", 80, 80), ("faq-canary", 80, 20)]
    _, mirror = canary.route_plan(OWNER, spec, shadow_percent=12.4)
    assert mirror == canary.RouteMirror("faq-shadow", 80, 12)


def test_status_carries_the_rollout_and_its_condition() -> None:
    rollout = {"strategy": "Canary", "phase": "RolledBack", "stableVersion": 1, "candidateVersion": 2,
               "reason": "AnalysisFailed", "message": "error rate 50%"}
    obs = Observation(3, resolved=Resolved("faq", 1, "label:latest"), rollout=Rollout("Complete", 5, 5, "ok"),
                      progressive=rollout)
    st = compute_status(None, obs, T0)
    assert st["rollout"] == rollout and st["model"]["version"] == 1 and st["phase"] == "Ready"
    cond = next(c for c in st["conditions"] if c["type"] == "Rollout")
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "AnalysisFailed", "error rate 50%")


def test_a_candidate_that_never_starts_is_rolled_back_after_its_progress_deadline() -> None:
    spec = canary_spec()
    d = step(spec, None, T0)
    waiting = step(spec, d.status, T0 + timedelta(seconds=30), candidate_problem=(False, "fetch failed: sha256"))
    assert waiting.candidate is not None and "fetch failed: sha256" in status_of(waiting)["message"]
    stalled = step(spec, d.status, T0 + timedelta(seconds=700), candidate_problem=(True, "deadline exceeded"))
    assert status_of(stalled)["phase"] == "RolledBack" and status_of(stalled)["reason"] == "CandidateUnavailable"
    assert stalled.candidate is None
