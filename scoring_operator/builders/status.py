"""Pure status logic: what the Deployment says, which phase and conditions follow, which Events to post.

Status is computed from the previous status plus one observation, in the wire format (camelCase,
RFC 3339 strings), so an unchanged world yields an identical dict and no status write at all;
`lastTransitionTime` only moves when a condition's status changes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

RolloutState = Literal["Missing", "Progressing", "Complete", "Unavailable", "Stalled"]
EventType = Literal["Normal", "Warning"]


def timestamp(now: datetime) -> str:
    """Kubernetes-style RFC 3339 time in UTC, whole seconds."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Rollout:
    """How far the Deployment's rollout is, in the terms `kubectl rollout status` uses."""

    state: RolloutState
    replicas: int = 0
    ready_replicas: int = 0
    message: str = ""
    #: The controller has made every pod of the current spec and all pods are available: what is
    #: left (old pods going away) is no failure of the new version (`Reconciler._pod_error`).
    new_pods_available: bool = False


def evaluate_rollout(dep: Mapping[str, Any] | None) -> Rollout:
    """Read a Deployment (dict) into a Rollout."""
    if not dep:
        return Rollout("Missing", message="the Deployment does not exist yet")
    meta = dep.get("metadata") or {}
    spec = dep.get("spec") or {}
    st = dep.get("status") or {}
    want = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    replicas = int(st.get("replicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    ready = int(st.get("readyReplicas") or 0)
    available = int(st.get("availableReplicas") or 0)
    conds = {c.get("type"): c for c in st.get("conditions") or []}
    progressing = conds.get("Progressing") or {}

    seen = int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    new_available = seen and updated > 0 and updated >= want and available >= replicas

    def r(state: RolloutState, message: str) -> Rollout:
        return Rollout(state, replicas=replicas, ready_replicas=ready, message=message,
                       new_pods_available=new_available)

    if not seen:
        return r("Progressing", "waiting for the Deployment controller to see the new spec")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return r("Stalled", f"rollout exceeded its progress deadline: {progressing.get('message', '')}".strip())
    if updated < want:
        return r("Progressing", f"{updated} of {want} replicas updated")
    if replicas > updated:
        return r("Progressing", f"{replicas - updated} old replicas pending termination")
    if available < updated:
        if progressing.get("reason") == "NewReplicaSetAvailable":  # the rollout finished earlier
            return r("Unavailable", f"{available} of {want} replicas available")
        return r("Progressing", f"{available} of {updated} updated replicas available")
    return r("Complete", f"{ready} of {want} replicas ready")


@dataclass(frozen=True)
class Failure:
    """Why a step failed, and whether retrying later (without a human) may fix it."""

    reason: str
    message: str
    retryable: bool = False


#: The init container that fetches the model (scoring_operator.builders.pod.INIT_CONTAINER).
FETCH_CONTAINER = "fetch-model"
#: The serving container (scoring_operator.builders.pod.RUNTIME_CONTAINER).
RUNTIME_CONTAINER = "runtime"
VERSION_ANNOTATION = "scoring.dev/model-version"


def _exited(statuses: Any, container: str, keep: int) -> tuple[int, str] | None:
    """(exit code, its last `keep` message lines joined) of `container` when it ended with a non-zero code."""
    for cs in statuses or []:
        if cs.get("name") != container:
            continue
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            term = state.get("terminated") or {}
            code = term.get("exitCode")
            if code is not None and code != 0:
                why = (term.get("message") or term.get("reason") or "").strip()
                lines = [ln for ln in why.splitlines() if ln.strip()][-keep:]
                return int(code), " | ".join(lines) or "no message"
    return None


def fetch_failure(pods: Sequence[Mapping[str, Any]], version: int) -> Failure | None:
    """Why pods of `version` cannot start: their fetch init container failed, or their runtime container
    exits (e.g. an unusable spec.tls certificate), with the container's own message.

    Why: a rollout stuck on a bad model version (e.g. a registry file that no longer matches its
    sha256) otherwise only shows "1 of 2 updated replicas available"; the init container's last
    words say what to fix. Only pods of the version being rolled out count, old ones keep serving.
    """
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (meta.get("annotations") or {}).get(VERSION_ANNOTATION) != str(version):
            continue
        status = pod.get("status") or {}
        if (fetch := _exited(status.get("initContainerStatuses"), FETCH_CONTAINER, 5)) is not None:
            return Failure(
                "ModelFetchFailed",
                f"pod {meta.get('name')}: init container {FETCH_CONTAINER} failed with exit code {fetch[0]}: "
                + fetch[1],
                retryable=True,
            )
        # The fetch worked but `scoring serve` exits (an unusable TLS pair of spec.tls, a model that will
        # not load): its one-line error is the termination message (FallbackToLogsOnError).
        if (run := _exited(status.get("containerStatuses"), RUNTIME_CONTAINER, 3)) is not None:
            return Failure(
                "RuntimeFailed",
                f"pod {meta.get('name')}: container {RUNTIME_CONTAINER} exited with code {run[0]}: " + run[1],
                retryable=True,
            )
    return None


@dataclass(frozen=True)
class Resolved:
    """The model version to serve and how it was chosen."""

    name: str
    version: int
    resolved_from: str


@dataclass(frozen=True)
class Observation:
    """One reconcile's findings."""

    generation: int
    spec_error: Failure | None = None
    resolved: Resolved | None = None
    resolve_error: Failure | None = None
    apply_error: Failure | None = None
    applied: tuple[str, ...] = ()
    rollout: Rollout | None = None
    endpoint: str | None = None
    #: The new version's pods cannot start (see fetch_failure); only while the rollout is not complete.
    pod_error: Failure | None = None
    #: The external URL (spec.exposure), once its Ingress or HTTPRoute is applied.
    url: str | None = None
    #: status.rollout of a canary/shadow rollout (builders/progress.py), None when there is none.
    progressive: Mapping[str, Any] | None = None
    #: Why the new version's rollout has not started (all rollout slots taken: `scoring_operator.rollouts`).
    queued: str | None = None

    @property
    def failure(self) -> Failure | None:
        """The first failure, in the order a user should fix them."""
        if self.spec_error or self.resolve_error or self.apply_error:
            return self.spec_error or self.resolve_error or self.apply_error
        if self.pod_error is not None:
            return self.pod_error
        if self.rollout is not None and self.rollout.state == "Stalled":
            return Failure("ProgressDeadlineExceeded", self.rollout.message)
        return None


def phase_of(obs: Observation) -> str:
    """Pending, Resolving, Deploying, Ready, Degraded or Failed."""
    if obs.spec_error is not None:
        return "Failed"
    if obs.resolved is None:
        return "Resolving" if obs.resolve_error is not None and obs.resolve_error.retryable else "Failed"
    if obs.apply_error is not None and not obs.apply_error.retryable:
        return "Failed"
    rollout = obs.rollout
    if rollout is None or rollout.state == "Missing":
        return "Pending"
    if obs.queued is not None:
        return "Deploying"
    if rollout.state == "Complete":
        return "Degraded" if (obs.resolve_error or obs.apply_error) else "Ready"
    if obs.pod_error is not None:
        return "Degraded" if rollout.ready_replicas > 0 else "Failed"
    if rollout.state == "Progressing":
        return "Deploying"
    if rollout.state == "Stalled" and rollout.ready_replicas == 0:
        return "Failed"
    return "Degraded"


def _conditions(obs: Observation) -> list[tuple[str, str, str, str]]:
    """(type, status, reason, message) for ModelResolved, Deployed, Ready."""
    out: list[tuple[str, str, str, str]] = []
    if obs.spec_error is not None:
        e = obs.spec_error
        return [
            ("ModelResolved", "False", e.reason, e.message),
            ("Deployed", "False", e.reason, e.message),
            ("Ready", "False", e.reason, e.message),
        ]
    if obs.resolve_error is not None:
        e = obs.resolve_error
        kept = f" (still serving version {obs.resolved.version})" if obs.resolved else ""
        out.append(("ModelResolved", "False", e.reason, e.message + kept))
    elif obs.resolved is not None:
        r = obs.resolved
        out.append(("ModelResolved", "True", "Resolved", f"model {r.name} version {r.version} ({r.resolved_from})"))
    if obs.resolved is None:
        out.append(("Deployed", "False", "WaitingForModel", "nothing to deploy until the model version is resolved"))
    elif obs.apply_error is not None:
        out.append(("Deployed", "False", obs.apply_error.reason, obs.apply_error.message))
    elif obs.queued is not None:
        out.append(("Deployed", "False", "RolloutQueued", obs.queued))
    else:
        what = ", ".join(obs.applied) or "children"
        out.append(("Deployed", "True", "Applied", f"{what} applied for version {obs.resolved.version}"))
    rollout = obs.rollout
    if rollout is None or rollout.state == "Missing":
        out.append(("Ready", "False", "NotDeployed", rollout.message if rollout else "not deployed"))
    elif obs.queued is not None:
        out.append(("Ready", "False", "RolloutQueued", obs.queued))
    elif obs.pod_error is not None and rollout.state != "Complete":
        serving = (f"; {rollout.ready_replicas} ready replicas of the previous version keep serving"
                   if rollout.ready_replicas else "")
        out.append(("Ready", "False", obs.pod_error.reason, obs.pod_error.message + serving))
    else:
        status, reason = {
            "Complete": ("True", "RolloutComplete"),
            "Progressing": ("False", "RolloutInProgress"),
            "Unavailable": ("False", "ReplicasUnavailable"),
            "Stalled": ("False", "ProgressDeadlineExceeded"),
        }[rollout.state]
        out.append(("Ready", status, reason, rollout.message))
    progressive = rollout_condition(obs.progressive)
    if progressive is not None:
        out.append(progressive)
    return out


def rollout_condition(rollout: Mapping[str, Any] | None) -> tuple[str, str, str, str] | None:
    """The `Rollout` condition of a canary/shadow rollout: False once it rolled back, with why."""
    if not rollout:
        return None
    phase = rollout.get("phase")
    status = "False" if phase == "RolledBack" else "True"
    return ("Rollout", status, str(rollout.get("reason") or phase or "Unknown"), str(rollout.get("message") or ""))


def compute_status(old: Mapping[str, Any] | None, obs: Observation, now: datetime) -> dict[str, Any]:
    """The new `status` (wire format) from the old one and an observation."""
    old = copy.deepcopy(dict(old or {}))
    ts = timestamp(now)
    old_conds = {c.get("type"): c for c in old.get("conditions") or []}
    conditions = []
    for ctype, status, reason, message in _conditions(obs):
        prev = old_conds.get(ctype) or {}
        conditions.append({
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message[:32768],
            "lastTransitionTime": prev["lastTransitionTime"]
            if prev.get("status") == status and prev.get("lastTransitionTime") else ts,
            "observedGeneration": obs.generation,
        })
    new: dict[str, Any] = {"observedGeneration": obs.generation, "phase": phase_of(obs), "conditions": conditions}

    if obs.resolved is not None:
        r = obs.resolved
        prev_model = old.get("model") or {}
        same = prev_model.get("name") == r.name and prev_model.get("version") == r.version
        new["model"] = {
            "name": r.name,
            "version": r.version,
            "resolvedFrom": r.resolved_from,
            "resolvedAt": prev_model["resolvedAt"] if same and prev_model.get("resolvedAt") else ts,
        }
    elif old.get("model"):
        new["model"] = old["model"]
    if obs.endpoint and obs.resolved is not None:
        new["endpoint"] = obs.endpoint
    if obs.url and obs.resolved is not None:
        new["url"] = obs.url
    if obs.rollout is not None and obs.rollout.state != "Missing":
        new["replicas"] = obs.rollout.replicas
        new["readyReplicas"] = obs.rollout.ready_replicas

    if obs.progressive:
        new["rollout"] = copy.deepcopy(dict(obs.progressive))
    failure = obs.failure
    prev_fail = old.get("lastFailure")
    if failure is not None:
        same = (failure.reason, failure.message)
        unchanged = prev_fail and (prev_fail.get("reason"), prev_fail.get("message")) == same
        new["lastFailure"] = (
            prev_fail if unchanged else {"reason": failure.reason, "message": failure.message, "time": ts}
        )
    elif prev_fail:
        new["lastFailure"] = prev_fail
    return new


_OWNED = ("observedGeneration", "phase", "model", "endpoint", "replicas", "readyReplicas", "conditions", "lastFailure",
          "url", "rollout")


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change anything (fields the operator does not own are ignored)."""
    mine = {k: v for k, v in (old or {}).items() if k in _OWNED}
    return mine != dict(new)


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch for `status` turning `old` into `new` (None when nothing changes)."""
    if not status_changed(old, new):
        return None
    removed = {k: None for k in _OWNED if k in (old or {}) and k not in new}
    return {**new, **removed}


def condition(status: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any]:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def transition_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[tuple[EventType, str, str]]:
    """Kubernetes Events worth posting for this status change: (type, reason, message)."""
    old = old or {}
    events: list[tuple[EventType, str, str]] = []
    old_model, new_model = old.get("model") or {}, new.get("model") or {}
    moved = (old_model.get("version"), old_model.get("name")) != (new_model.get("version"), new_model.get("name"))
    if new_model and moved:
        was = f", was version {old_model['version']}" if old_model.get("version") else ""
        events.append((
            "Normal",
            "RolloutStarted",
            f"rolling out model {new_model['name']} version {new_model['version']} "
            f"({new_model['resolvedFrom']}){was}",
        ))
    for ctype in ("ModelResolved", "Deployed", "Ready"):
        before, after = condition(old, ctype), condition(new, ctype)
        previously = (before.get("status"), before.get("reason"))
        if after.get("status") == "False" and previously != ("False", after["reason"]):
            if after["reason"] in ("RolloutInProgress", "RolloutQueued", "WaitingForModel", "NotDeployed"):
                continue  # ordinary progress, not worth a Warning
            events.append(("Warning", after["reason"], after.get("message", "")))
    if new.get("phase") == "Ready" and old.get("phase") != "Ready":
        ready = condition(new, "Ready").get("message", "")
        where = f"serving version {new_model.get('version')} at {new.get('endpoint')}"
        if new.get("url"):
            where += f" and {new['url']}"
        events.append(("Normal", "Ready", f"{where}: {ready}"))
    elif old.get("phase") == "Ready" and new.get("phase") not in (None, "Ready", "Deploying"):
        why = condition(new, "Ready").get("message", "")
        events.append(("Warning", "NotReady", f"phase {new.get('phase')}: {why}"))
    return events
