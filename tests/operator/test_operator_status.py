"""Status logic: rollout reading, phases, conditions (lastTransitionTime semantics) and Events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scoring_operator.builders.status import (
    Failure,
    Observation,
    Resolved,
    Rollout,
    compute_status,
    condition,
    evaluate_rollout,
    phase_of,
    status_patch,
    transition_events,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
V1 = Resolved("faq", 1, "label:latest")
V2 = Resolved("faq", 2, "label:latest")
READY = Rollout("Complete", replicas=2, ready_replicas=2, message="2 of 2 replicas ready")
ENDPOINT = "http://faq.ml.svc:80"


def _dep(generation: int = 1, observed: int = 1, want: int = 2, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": want},
        "status": {"observedGeneration": observed, **status},
    }


@pytest.mark.parametrize(
    ("dep", "state", "message"),
    [
        (None, "Missing", "does not exist"),
        (_dep(generation=2, observed=1), "Progressing", "waiting for the Deployment controller"),
        (_dep(updatedReplicas=1), "Progressing", "1 of 2 replicas updated"),
        (_dep(updatedReplicas=2, replicas=3), "Progressing", "1 old replicas pending termination"),
        (_dep(updatedReplicas=2, availableReplicas=1, readyReplicas=1), "Progressing", "1 of 2 updated replicas"),
        (_dep(updatedReplicas=2, availableReplicas=2, readyReplicas=2), "Complete", "2 of 2 replicas ready"),
        (_dep(updatedReplicas=2, availableReplicas=1, readyReplicas=1,
              conditions=[{"type": "Progressing", "reason": "NewReplicaSetAvailable"}]),
         "Unavailable", "1 of 2 replicas available"),
        (_dep(updatedReplicas=1, conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded",
                                              "message": "ReplicaSet faq-1 has timed out progressing."}]),
         "Stalled", "timed out progressing"),
    ],
    ids=["missing", "generation-lag", "updating", "old-pods", "unavailable-new", "complete", "degraded", "stalled"],
)
def test_evaluate_rollout(dep: dict[str, Any] | None, state: str, message: str) -> None:
    r = evaluate_rollout(dep)
    assert r.state == state
    assert message in r.message


def test_scaled_to_zero_is_complete() -> None:
    assert evaluate_rollout(_dep(want=0)).state == "Complete"


def test_ready_status_has_all_conditions_true() -> None:
    st = compute_status({}, Observation(3, resolved=V1, rollout=READY, endpoint=ENDPOINT,
                                        applied=("Service", "Deployment")), T0)
    assert st["phase"] == "Ready" and st["observedGeneration"] == 3
    assert st["model"] == {"name": "faq", "version": 1, "resolvedFrom": "label:latest",
                           "resolvedAt": "2026-01-02T03:04:05Z"}
    assert st["endpoint"] == ENDPOINT
    assert (st["replicas"], st["readyReplicas"]) == (2, 2)
    assert [(c["type"], c["status"], c["reason"]) for c in st["conditions"]] == [
        ("ModelResolved", "True", "Resolved"), ("Deployed", "True", "Applied"), ("Ready", "True", "RolloutComplete"),
    ]
    assert all(c["observedGeneration"] == 3 for c in st["conditions"])
    assert "lastFailure" not in st


def test_unchanged_world_means_identical_status_and_no_patch() -> None:
    obs = Observation(1, resolved=V1, rollout=READY, endpoint=ENDPOINT)
    first = compute_status({}, obs, T0)
    again = compute_status(first, obs, T1)
    assert again == first
    assert status_patch(first, again) is None
    assert status_patch({**first, "kopf": {"x": 1}}, again) is None, "fields the operator does not own are ignored"


def test_last_transition_time_moves_only_on_status_change() -> None:
    st = compute_status({}, Observation(1, resolved=V1, rollout=READY, endpoint=ENDPOINT), T0)
    # Same status (True), different message: the time stays.
    more = Rollout("Complete", replicas=3, ready_replicas=3, message="3 of 3 replicas ready")
    st2 = compute_status(st, Observation(2, resolved=V1, rollout=more, endpoint=ENDPOINT), T1)
    assert condition(st2, "Ready")["message"] == "3 of 3 replicas ready"
    assert condition(st2, "Ready")["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    # Status flips: the time moves.
    rolling = Rollout("Progressing", replicas=3, ready_replicas=2, message="2 of 3 updated replicas available")
    st3 = compute_status(st2, Observation(2, resolved=V2, rollout=rolling, endpoint=ENDPOINT), T1)
    assert condition(st3, "Ready")["status"] == "False"
    assert condition(st3, "Ready")["lastTransitionTime"] == "2026-01-02T03:09:05Z"
    assert condition(st3, "ModelResolved")["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert st3["model"]["version"] == 2 and st3["model"]["resolvedAt"] == "2026-01-02T03:09:05Z"
    assert st3["phase"] == "Deploying"


def test_model_not_found_without_anything_deployed_fails() -> None:
    err = Failure("ModelNotFound", "model 'faq' not found in registry file:///r")
    st = compute_status({}, Observation(1, resolve_error=err, endpoint=ENDPOINT), T0)
    assert st["phase"] == "Failed"
    assert dict(condition(st, "ModelResolved")) | {"lastTransitionTime": None} == {
        "type": "ModelResolved", "status": "False", "reason": "ModelNotFound",
        "message": "model 'faq' not found in registry file:///r", "lastTransitionTime": None, "observedGeneration": 1,
    }
    assert condition(st, "Deployed")["reason"] == "WaitingForModel"
    assert "endpoint" not in st and "model" not in st
    assert st["lastFailure"] == {"reason": "ModelNotFound", "message": err.message, "time": "2026-01-02T03:04:05Z"}
    # The same failure an hour later keeps its first time: no status churn while it lasts.
    later = compute_status(st, Observation(1, resolve_error=err, endpoint=ENDPOINT), T1)
    assert later == st


def test_registry_outage_keeps_serving_the_previous_version() -> None:
    ready = compute_status({}, Observation(1, resolved=V1, rollout=READY, endpoint=ENDPOINT), T0)
    outage = Failure("RegistryUnavailable", "registry root /r does not exist", retryable=True)
    st = compute_status(ready, Observation(1, resolved=V1, resolve_error=outage, rollout=READY, endpoint=ENDPOINT), T1)
    assert st["phase"] == "Degraded"
    assert st["model"] == ready["model"]
    mr = condition(st, "ModelResolved")
    assert (mr["status"], mr["reason"]) == ("False", "RegistryUnavailable")
    assert "still serving version 1" in mr["message"]
    assert condition(st, "Ready")["status"] == "True"
    assert phase_of(Observation(1, resolve_error=outage)) == "Resolving"


def test_phases() -> None:
    assert phase_of(Observation(1, spec_error=Failure("InvalidSpec", "x"))) == "Failed"
    assert phase_of(Observation(1, resolved=V1)) == "Pending"
    assert phase_of(Observation(1, resolved=V1, apply_error=Failure("ApiForbidden", "no"))) == "Failed"
    assert phase_of(Observation(1, resolved=V1, rollout=Rollout("Progressing"))) == "Deploying"
    assert phase_of(Observation(1, resolved=V1, rollout=Rollout("Unavailable", 2, 1))) == "Degraded"
    assert phase_of(Observation(1, resolved=V1, rollout=Rollout("Stalled", 1, 0))) == "Failed"
    assert phase_of(Observation(1, resolved=V1, rollout=Rollout("Stalled", 2, 1))) == "Degraded"
    assert phase_of(Observation(1, resolved=V1, rollout=READY,
                                apply_error=Failure("ApiConflict", "x", retryable=True))) == "Degraded"


def test_status_patch_removes_fields_that_no_longer_apply() -> None:
    ready = compute_status({}, Observation(1, resolved=V1, rollout=READY, endpoint=ENDPOINT), T0)
    gone = compute_status(ready, Observation(2, resolved=V1, rollout=Rollout("Missing"), endpoint=ENDPOINT), T1)
    patch = status_patch(ready, gone)
    assert patch is not None
    assert patch["replicas"] is None and patch["readyReplicas"] is None
    assert patch["phase"] == "Pending"


def test_events_on_transitions_only() -> None:
    ready = compute_status({}, Observation(1, resolved=V1, rollout=READY, endpoint=ENDPOINT), T0)
    assert transition_events({}, ready) == [
        ("Normal", "RolloutStarted", "rolling out model faq version 1 (label:latest)"),
        ("Normal", "Ready", f"serving version 1 at {ENDPOINT}: 2 of 2 replicas ready"),
    ]
    assert transition_events(ready, ready) == []
    rolling = compute_status(ready, Observation(1, resolved=V2, rollout=Rollout("Progressing", 3, 2, "..."),
                                                endpoint=ENDPOINT), T1)
    assert transition_events(ready, rolling) == [
        ("Normal", "RolloutStarted", "rolling out model faq version 2 (label:latest), was version 1"),
    ]
    err = Failure("LabelNotFound", "model 'faq' has no label 'prod'")
    failed = compute_status(rolling, Observation(1, resolved=V2, resolve_error=err, rollout=READY,
                                                 endpoint=ENDPOINT), T1)
    events = transition_events(rolling, failed)
    assert ("Warning", "LabelNotFound", "model 'faq' has no label 'prod' (still serving version 2)") in events
    assert transition_events(failed, failed) == [], "a lasting failure is reported once"
