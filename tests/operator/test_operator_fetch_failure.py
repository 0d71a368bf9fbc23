"""A rollout stuck because the new pods' model fetch fails says why, with the init container's message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from scoring_operator.builders.status import (
    Observation,
    Resolved,
    Rollout,
    compute_status,
    fetch_failure,
    phase_of,
    transition_events,
)

MSG = "error: faq-matcher version 3: model.skops: sha256 mismatch (expected 1a2b, got 9f8e)"


def pod(
    name: str, version: int, *, state: dict[str, Any] | None = None, last: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {"scoring.dev/model-version": str(version)}},
        "status": {"initContainerStatuses": [{"name": "fetch-model", "state": state or {}, "lastState": last or {}}]},
    }


def crashing(name: str, version: int) -> dict[str, Any]:
    return pod(name, version, state={"waiting": {"reason": "CrashLoopBackOff"}},
               last={"terminated": {"exitCode": 2, "reason": "Error", "message": f"fetching...\n{MSG}\n"}})


def test_fetch_failure_names_the_pod_and_quotes_the_init_container() -> None:
    old_ok = pod("faq-old", 2, state={}, last={})
    old_ok["status"]["initContainerStatuses"][0]["state"] = {"terminated": {"exitCode": 0}}
    failure = fetch_failure([old_ok, crashing("faq-new", 3)], 3)
    assert failure is not None and failure.reason == "ModelFetchFailed" and failure.retryable
    assert "pod faq-new" in failure.message and "exit code 2" in failure.message and MSG in failure.message


def test_fetch_failure_ignores_other_versions_successes_and_running_fetches() -> None:
    assert fetch_failure([crashing("faq-old", 2)], 3) is None  # a failing pod of another version
    done = pod("a", 3, state={"terminated": {"exitCode": 0, "reason": "Completed"}})
    running = pod("b", 3, state={"running": {"startedAt": "2026-01-01T00:00:00Z"}})
    assert fetch_failure([done, running, {"metadata": {"name": "c"}}], 3) is None
    first_try = pod("d", 3, state={"terminated": {"exitCode": 1, "reason": "Error"}})
    failure = fetch_failure([first_try], 3)
    assert failure is not None and failure.message.endswith("Error")


def test_status_while_old_pods_serve_and_when_none_do() -> None:
    resolved = Resolved("faq-matcher", 3, "label latest")
    failure = fetch_failure([crashing("faq-new", 3)], 3)
    serving = Observation(5, resolved=resolved, rollout=Rollout("Progressing", 3, 2, "2 of 3 updated ..."),
                          pod_error=failure)
    assert phase_of(serving) == "Degraded"
    status = compute_status({"phase": "Ready"}, serving, datetime(2026, 1, 1, tzinfo=UTC))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ModelFetchFailed"
    assert MSG in ready["message"] and "2 ready replicas of the previous version keep serving" in ready["message"]
    assert status["lastFailure"]["reason"] == "ModelFetchFailed"
    assert ("Warning", "ModelFetchFailed", ready["message"]) in transition_events({"phase": "Ready"}, status)
    nothing = Observation(5, resolved=resolved, rollout=Rollout("Progressing", 1, 0, ""), pod_error=failure)
    assert phase_of(nothing) == "Failed"
    # Once the rollout completes the error no longer applies.
    done = Observation(5, resolved=resolved, rollout=Rollout("Complete", 2, 2, "2 of 2 replicas ready"))
    assert phase_of(done) == "Ready"


def test_a_runtime_that_exits_at_start_up_is_reported_with_its_message() -> None:
    """E.g. spec.tls names a Secret whose key does not belong to its certificate: `scoring serve` exits
    with one line, which the rollout's status quotes."""
    why = ("error: cannot use TLS certificate /etc/scoring/tls/tls.crt with key /etc/scoring/tls/tls.key: "
           "the key does not belong to the certificate")
    fetched = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    failing = pod("faq-new", 3, state=fetched)
    failing["status"]["containerStatuses"] = [{
        "name": "runtime", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": why + "\n"}}}]
    failure = fetch_failure([failing], 3)
    assert failure is not None and failure.reason == "RuntimeFailed" and failure.retryable
    assert failure.message == f"pod faq-new: container runtime exited with code 1: {why}"
    assert fetch_failure([failing], 4) is None, "only the version being rolled out"
    running = pod("faq-ok", 3, state=fetched)
    running["status"]["containerStatuses"] = [{"name": "runtime", "state": {"running": {}}, "lastState": {}}]
    assert fetch_failure([running], 3) is None
