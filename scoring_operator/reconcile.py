"""One reconcile of one ScoringModel: resolve the version, apply children, observe, write status.

Called by the kopf handlers (create/update/resume), by the per-object poller (label moves, drift
repair) and when an owned Deployment changes. Reconciles of one object are serialized by a lock,
so these triggers never race. Nothing here imports kopf: the handlers pass in how to post Events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from scoring_operator import metrics
from scoring_operator import spec as api
from scoring_operator.builders import desired_children, meta
from scoring_operator.builders.status import (
    Failure,
    Observation,
    Resolved,
    compute_status,
    evaluate_rollout,
    fetch_failure,
    status_patch,
    transition_events,
)
from scoring_operator.builders.workload import HANDOFF_MANAGER, replicas_handoff, with_node_ports
from scoring_operator.config import OperatorConfig
from scoring_operator.kube import Kube, KubeError
from scoring_operator.resolver import Resolver
from scoring_runtime import telemetry
from scoring_runtime.registry import RegistryError

log = logging.getLogger(__name__)

#: post_event(body, type, reason, message): how Events reach Kubernetes (kopf's poster in production).
EventSink = Callable[[Mapping[str, Any], str, str, str], None]
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Result:
    """What happened, for the caller's retry decision."""

    phase: str
    failure: Failure | None = None

    @property
    def retry(self) -> bool:
        """A temporary failure: try again soon (kopf.TemporaryError / short poll)."""
        return self.failure is not None and self.failure.retryable


#: Keyed lists that server-side apply cannot take back once another manager edited an entry's key
#: (a Service port changed from 80 to 81 leaves two entries named "http"): replaced, then applied.
_REPLACE_ON_INVALID: dict[str, tuple[str, ...]] = {"Service": ("ports",)}


def _ref_key(ref: api.ModelRef) -> str:
    return "version" if ref.version is not None else f"label:{ref.label}"


def _previous(status: Mapping[str, Any], ref: api.ModelRef) -> Resolved | None:
    """The version already served, if it still answers the current reference."""
    prev = status.get("model") or {}
    if prev.get("name") != ref.name or prev.get("resolvedFrom") != _ref_key(ref):
        return None
    if ref.version is not None and prev.get("version") != ref.version:
        return None
    return Resolved(name=ref.name, version=int(prev["version"]), resolved_from=str(prev["resolvedFrom"]))


class Reconciler:
    """Reconciles ScoringModels; one instance per operator process."""

    def __init__(
        self,
        config: OperatorConfig,
        kube: Kube,
        resolver: Resolver,
        post_event: EventSink,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.kube = kube
        self.resolver = resolver
        self.post_event = post_event
        self.clock = clock
        self.tracker = metrics.ModelTracker()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._wakeups: dict[tuple[str, str], asyncio.Event] = {}
        # The status this process last wrote, per object (uid, status): the operator is the only
        # writer of status, and a handler's body can be older than our own last write.
        self._written: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._owned: dict[tuple[str, str], tuple[str, set[str]]] = {}
        # uid per object whose Deployment replicas are known to be left to the HPA (see _hand_replicas_to_hpa).
        self._handed_over: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ poller coordination
    def wakeup(self, key: tuple[str, str]) -> asyncio.Event:
        """The event the poller of `key` waits on; set it to reconcile `key` early."""
        return self._wakeups.setdefault(key, asyncio.Event())

    def wake(self, key: tuple[str, str]) -> None:
        event = self._wakeups.get(key)
        if event is not None:
            event.set()

    def forget(self, key: tuple[str, str]) -> None:
        """Drop in-memory state of a deleted ScoringModel."""
        self._wakeups.pop(key, None)
        self._locks.pop(key, None)
        self._written.pop(key, None)
        self._owned.pop(key, None)
        self._handed_over.pop(key, None)
        self.tracker.forget(key)

    # ------------------------------------------------------------------ the reconcile
    async def reconcile(self, body: Mapping[str, Any], *, refresh: bool = True, trigger: str = "spec") -> Result:
        """Bring the children of `body` in line with its spec and report it in its status.

        refresh=False reuses the version in status when it still answers the reference (used for
        Deployment events, which should not cost a registry round trip).
        """
        owner = meta.Owner.from_body(body)
        lock = self._locks.setdefault(owner.key, asyncio.Lock())
        async with lock:
            with telemetry.reconcile_span(owner.namespace, owner.name, trigger) as span:
                started = time.monotonic()
                try:
                    result = await self._reconcile(owner, body, refresh=refresh)
                except Exception:
                    metrics.RECONCILES.labels("error", trigger).inc()
                    raise
                finally:
                    metrics.RECONCILE_SECONDS.labels(trigger).observe(time.monotonic() - started)
                outcome = "success" if result.failure is None else ("retry" if result.retry else "failed")
                metrics.RECONCILES.labels(outcome, trigger).inc()
                failure = result.failure
                telemetry.record_outcome(span, outcome, failure.reason if failure else None,
                                         failure.message if failure else "")
                return result

    async def _reconcile(self, owner: meta.Owner, body: Mapping[str, Any], *, refresh: bool) -> Result:
        generation = int(body["metadata"].get("generation") or 0)
        old_status: Mapping[str, Any] = body.get("status") or {}
        cached = self._written.get(owner.key)
        if cached is not None and cached[0] == owner.uid:
            old_status = cached[1]
        try:
            spec = api.parse_spec(body.get("spec"))
        except ValidationError as e:
            obs = Observation(generation, spec_error=Failure("InvalidSpec", api.format_validation_error(e)))
            return await self._report(owner, body, old_status, obs, None)

        resolved, resolve_error = await self._resolve(spec.model, old_status, refresh)
        apply_error: Failure | None = None
        applied: tuple[str, ...] = ()
        if resolved is not None:
            applied, apply_error = await self._apply(owner, spec, resolved.version)
        rollout = None
        try:
            dep = await self.kube.get("apps/v1", "Deployment", owner.namespace, owner.name)
            # A same-named Deployment of someone else is not our rollout (that clash is a ChildConflict).
            rollout = evaluate_rollout(dep if meta.is_owned_by(dep, owner) else None)
        except KubeError as e:
            metrics.KUBE_ERRORS.labels(e.reason).inc()
            apply_error = apply_error or Failure(e.reason, str(e), e.retryable)
        pod_error = None
        if resolved is not None and rollout is not None and rollout.state in ("Progressing", "Stalled"):
            try:  # a stuck rollout: say why the new pods cannot start (e.g. the model fetch fails)
                pods = await self.kube.list_pods(owner.namespace, meta.selector_labels(owner))
                pod_error = fetch_failure(pods, resolved.version)
            except KubeError as e:
                metrics.KUBE_ERRORS.labels(e.reason).inc()
        obs = Observation(
            generation,
            resolved=resolved,
            resolve_error=resolve_error,
            apply_error=apply_error,
            applied=applied,
            rollout=rollout,
            endpoint=meta.endpoint(owner, spec.service.port),
            pod_error=pod_error,
        )
        return await self._report(owner, body, old_status, obs, resolved)

    async def _resolve(
        self, ref: api.ModelRef, old_status: Mapping[str, Any], refresh: bool
    ) -> tuple[Resolved | None, Failure | None]:
        previous = _previous(old_status, ref)
        if previous is not None and not refresh:
            return previous, None
        try:
            return await self.resolver.resolve(ref), None
        except RegistryError as e:
            metrics.REGISTRY_ERRORS.labels(e.reason).inc()
            # Keep serving what runs now: a registry outage or a deleted label is no reason to stop.
            return previous, Failure(e.reason, str(e), e.retryable)

    def _owned_kinds(self, owner: meta.Owner) -> set[str]:
        uid, kinds = self._owned.get(owner.key, ("", set()))
        if uid != owner.uid:  # a new object under an old name starts from scratch
            kinds = set()
            self._owned[owner.key] = (owner.uid, kinds)
        return kinds

    async def _apply(
        self, owner: meta.Owner, spec: api.ScoringModelSpec, version: int
    ) -> tuple[tuple[str, ...], Failure | None]:
        children = desired_children(owner, spec, version, self.config)
        done: list[str] = []
        # Kinds this process already applied for this uid: their ownership was checked then, so the
        # GET before each apply is only paid once per child (and again after any failure).
        owned = self._owned_kinds(owner)
        try:
            for obj in children.apply:
                kind = obj["kind"]
                fetched = kind not in owned
                existing: dict[str, Any] | None = None
                if fetched:
                    existing = await self.kube.get(obj["apiVersion"], kind, owner.namespace, owner.name)
                    if existing is not None and not meta.is_owned_by(existing, owner):
                        return tuple(done), Failure(
                            "ChildConflict",
                            f"{kind} {owner.namespace}/{owner.name} already exists and does not belong to this "
                            "ScoringModel: delete or rename it, or rename the ScoringModel",
                        )
                exists = existing is not None or not fetched
                if kind == "Deployment":
                    await self._hand_replicas_to_hpa(owner, spec, existing, fetched)
                owned.discard(kind)
                try:
                    await self.kube.apply(obj)
                except KubeError as e:
                    repairable = _REPLACE_ON_INVALID.get(kind)
                    if not exists or e.code != 422 or not repairable:
                        raise
                    log.info("%s/%s: %s; replacing %s", owner.namespace, owner.name, e, ", ".join(repairable))
                    live = await self.kube.get(obj["apiVersion"], kind, owner.namespace, owner.name)
                    await self.kube.replace_fields(with_node_ports(obj, live), repairable)
                    await self.kube.apply(obj)
                owned.add(kind)
                done.append(kind)
            for ref in children.prune:
                existing = await self.kube.get(ref.api_version, ref.kind, owner.namespace, ref.name)
                if existing is not None and meta.is_owned_by(existing, owner):
                    await self.kube.delete(ref.api_version, ref.kind, owner.namespace, ref.name)
        except KubeError as e:
            metrics.KUBE_ERRORS.labels(e.reason).inc()
            return tuple(done), Failure(e.reason, str(e), e.retryable)
        return tuple(done), None

    async def _hand_replicas_to_hpa(
        self, owner: meta.Owner, spec: api.ScoringModelSpec, live: dict[str, Any] | None, fetched: bool
    ) -> None:
        """Before an apply without spec.replicas, give the replicas the operator owns to another manager.

        Checked once per object and operator process (one GET): after that, the operator's applies
        never list replicas again while autoscaling is on, so it cannot own them.
        """
        if spec.autoscaling is None:
            self._handed_over.pop(owner.key, None)  # this apply takes replicas back
            return
        if self._handed_over.get(owner.key) == owner.uid:
            return
        if not fetched:
            live = await self.kube.get("apps/v1", "Deployment", owner.namespace, owner.name)
        handoff = replicas_handoff(owner, spec, live)
        if handoff is not None:
            log.info("%s/%s: autoscaling on: handing spec.replicas=%s over to the HPA", owner.namespace,
                     owner.name, handoff["spec"]["replicas"])
            await self.kube.apply(handoff, field_manager=HANDOFF_MANAGER)
        self._handed_over[owner.key] = owner.uid

    async def _report(
        self,
        owner: meta.Owner,
        body: Mapping[str, Any],
        old_status: Mapping[str, Any],
        obs: Observation,
        resolved: Resolved | None,
    ) -> Result:
        new_status = compute_status(old_status, obs, self.clock())
        patch = status_patch(old_status, new_status)
        failure = obs.failure
        if patch is not None:
            try:
                await self.kube.patch_status(owner.namespace, owner.name, patch)
            except KubeError as e:
                metrics.KUBE_ERRORS.labels(e.reason).inc()
                if e.code == 404:  # deleted meanwhile: nothing left to report on
                    return Result(new_status["phase"])
                failure = failure or Failure(e.reason, str(e), retryable=True)
            else:
                self._written[owner.key] = (owner.uid, new_status)
                for etype, reason, message in transition_events(old_status, new_status):
                    level = logging.WARNING if etype == "Warning" else logging.INFO
                    log.log(level, "%s/%s: %s: %s", owner.namespace, owner.name, reason, message)
                    self.post_event(body, etype, reason, message[:1024])
        self.tracker.observe(owner.key, new_status["phase"], (resolved.name, resolved.version) if resolved else None)
        if failure is not None:  # already logged and posted as an Event when it first appeared
            log.debug("%s/%s: %s: %s", owner.namespace, owner.name, failure.reason, failure.message)
        return Result(new_status["phase"], failure)
