"""What the operator remembers between reconciles, in one place: per ScoringModel, and per child.

- `ModelState`: everything kept per ScoringModel (its lock, poller wake-ups, the status last
  written, what was last applied for each child, retry count). `forget` drops it in one step.
- `Applied`: a digest of the child as last applied and a fingerprint of the object the apiserver
  answered with, so an unchanged desired object is not applied again, while any change by someone
  else (seen on the watch) clears the record and brings the apply back.
- `ChildCache`: read access to the watched children (kopf indexes in production); the reconciler
  reads children from it instead of GETting them.
- `retry_delay`: the one backoff used by the create/update handler and the poller.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

#: First retry after a temporary failure; doubled per consecutive failure, capped by the poll interval.
MIN_RETRY = 1.0
MAX_DOUBLINGS = 6


def retry_delay(failures: int, interval: float) -> float:
    """Seconds before the next attempt: `interval` when healthy, else 1, 2, 4... capped at `interval`."""
    if failures <= 0:
        return interval
    return float(min(interval, MIN_RETRY * 2 ** min(failures - 1, MAX_DOUBLINGS)))


def _digest(value: Any) -> str:
    # orjson: every reconcile digests every desired child; the stdlib's sorted dumps was ~2% of the CPU.
    raw = orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def desired_digest(obj: Mapping[str, Any]) -> str:
    """A digest of a desired object (what an apply would send)."""
    return _digest(obj)


def fingerprint(
    obj: Mapping[str, Any] | None, spec_keys: tuple[str, ...], label_keys: tuple[str, ...],
    annotation_keys: tuple[str, ...],
) -> str:
    """What of a live child the operator cares about: the spec fields, labels and annotations it sets, and owners.

    Status, resourceVersion, what other controllers annotate (a Deployment's revision) and spec
    fields the operator leaves to others (an autoscaled Deployment's replicas) are left out, so
    only a change of what the operator sets counts as drift.
    """
    meta = (obj or {}).get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    spec = (obj or {}).get("spec") or {}
    return _digest({
        "spec": {k: spec.get(k) for k in spec_keys},
        "owners": meta.get("ownerReferences"),
        "labels": {k: labels.get(k) for k in label_keys},
        "annotations": {k: annotations.get(k) for k in annotation_keys},
    })


def resource_version(obj: Mapping[str, Any] | None) -> int:
    """The object's resourceVersion as a number (etcd's revision); 0 when absent or not numeric."""
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


#: Of a child's spec, the cache keeps only what reconciles read (the rollout's and the handoff's
#: replicas, a Service's ports): drift is judged on the watch event itself, not on the cache, and a
#: pod template would cost ~50 kB per Deployment in memory.
_KEPT_SPEC = {"Deployment": ("replicas",), "Service": ("type", "ports")}
_KEPT_META = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "annotations",
              "ownerReferences", "deletionTimestamp")


def trimmed(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """What the cache keeps of a child: enough for ownership, rollout and the replicas handoff."""
    metadata = body.get("metadata") or {}
    kept: dict[str, Any] = {k: metadata[k] for k in _KEPT_META if k in metadata}
    if kind == "Deployment":  # who owns spec.replicas (the handoff to the HPA reads it)
        kept["managedFields"] = [
            {"manager": m.get("manager"), "operation": m.get("operation"), "fieldsV1": {"f:spec": {"f:replicas": {}}}}
            for m in metadata.get("managedFields") or []
            if "f:replicas" in (((m.get("fieldsV1") or {}).get("f:spec")) or {})
        ]
    spec = body.get("spec") or {}
    return {"apiVersion": body.get("apiVersion"), "kind": kind, "metadata": kept,
            "spec": {k: spec[k] for k in _KEPT_SPEC.get(kind, ()) if k in spec},
            "status": dict(body.get("status") or {}) if kind == "Deployment" else {}}


@dataclass(frozen=True)
class Applied:
    """One child as this process last applied it."""

    digest: str
    fingerprint: str
    resource_version: int
    uid: str
    spec_keys: tuple[str, ...]
    label_keys: tuple[str, ...]
    annotation_keys: tuple[str, ...]

    @classmethod
    def record(cls, desired: Mapping[str, Any], live: Mapping[str, Any]) -> Applied:
        meta = desired.get("metadata") or {}
        spec = tuple(sorted(desired.get("spec") or {}))
        labels = tuple(sorted(meta.get("labels") or {}))
        annotations = tuple(sorted(meta.get("annotations") or {}))
        return cls(
            digest=desired_digest(desired),
            fingerprint=fingerprint(live, spec, labels, annotations),
            resource_version=resource_version(live),
            uid=str((live.get("metadata") or {}).get("uid") or ""),
            spec_keys=spec,
            label_keys=labels,
            annotation_keys=annotations,
        )

    def drifted(self, live: Mapping[str, Any] | None) -> bool:
        """Whether a watch event shows the child no longer as applied (deleted, recreated, or edited).

        Events older than the apply (a lagging watch) are not drift.
        """
        if live is None:
            return True
        uid = str((live.get("metadata") or {}).get("uid") or "")
        if uid != self.uid:
            return True
        if 0 < resource_version(live) < self.resource_version:
            return False
        return fingerprint(live, self.spec_keys, self.label_keys, self.annotation_keys) != self.fingerprint


@dataclass
class ModelState:
    """Everything the operator keeps in memory for one ScoringModel (one uid under one name)."""

    uid: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Set to make the poller reconcile now (an owned Deployment changed, the registry answer moved).
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set to make the poller recompute its timer (a handler's reconcile changed the failure count).
    rearm: asyncio.Event = field(default_factory=asyncio.Event)
    #: The status this process last wrote (the operator is the only status writer, and a
    #: handler's body can be older than its own last write).
    status: dict[str, Any] | None = None
    #: Per child kind: what was last applied (cleared when a watch event shows drift).
    applied: dict[str, Applied] = field(default_factory=dict)
    #: Per owned Deployment (ModelState.applied key): what reconciles read of it, as its last watch
    #: event showed it (`reconcile._rollout_view`); an event that leaves it unchanged wakes nobody.
    deployment_views: dict[str, Any] = field(default_factory=dict)
    #: The main Deployment as this process last applied it (trimmed): a reconcile that runs before the
    #: watch has delivered that apply reads this, not the older cached one (which would still show the
    #: previous version's rollout as complete, and the object falsely Ready on the new one). Dropped
    #: once the watch has caught up.
    deployment: dict[str, Any] | None = None
    #: Whether the Deployment's replicas are known to be left to the HPA.
    handed_over: bool = False
    #: Consecutive reconciles that ended in a temporary failure (drives `retry_delay`).
    failures: int = 0
    #: The registry question this object asks (to wake it when the answer changes).
    question: tuple[str, str, str] | None = None
    #: A canary/shadow rollout in progress: seconds until it wants to be looked at again.
    recheck: float | None = None
    #: Its analysis baseline: (candidate version, per-pod samples of the candidate, of the stable pods).
    analysis: tuple[int, dict[str, Any], dict[str, Any]] | None = None
    #: While a rollout is in progress: when its pods are next listed (monotonic seconds, unless it
    #: progresses meanwhile), and
    #: (version, why its pods could not start) from the last listing, kept between listings so the
    #: status does not flap.
    pods_check_due: float | None = None
    pod_error: tuple[int, Any] | None = None
    #: The rollout's replica counts when it last progressed (a change moves `pods_check_due` on).
    rollout_counts: tuple[int, ...] | None = None
    #: When this process last wrote the status (monotonic), and when a held-back write of mere
    #: rollout progress is due (see `reconcile.PROGRESS_EVERY`).
    status_written_at: float = 0.0
    progress_due: float | None = None
    #: This reconcile held back the new version's Deployment: all rollout slots are taken.
    queued: bool = False
    #: The model version (annotation) of the rollout that holds a rollout slot.
    rolling_to: str | None = None


class States:
    """ModelState per (namespace, name); a new uid under an old name starts afresh."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], ModelState] = {}

    def get(self, key: tuple[str, str], uid: str | None = None) -> ModelState:
        state = self._states.get(key)
        if state is None or (uid is not None and uid and state.uid != uid):
            fresh = ModelState(uid=uid or "")
            if state is not None:  # keep the poller's events: it waits on them already
                fresh.lock, fresh.wake, fresh.rearm = state.lock, state.wake, state.rearm
            state = self._states[key] = fresh
        return state

    def peek(self, key: tuple[str, str]) -> ModelState | None:
        return self._states.get(key)

    def pop(self, key: tuple[str, str]) -> ModelState | None:
        return self._states.pop(key, None)

    def items(self) -> list[tuple[tuple[str, str], ModelState]]:
        return list(self._states.items())


class ChildCache(Protocol):
    """Watched children of the operator (labelled `app.kubernetes.io/managed-by: scoring-operator`)."""

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The last object seen on the watch, or None when the watch knows none."""
        ...
