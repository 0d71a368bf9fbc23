"""One reconcile of one ScoringModel: resolve the version, apply children, observe, write status.

Called by the kopf handlers (create/update/resume), by the per-object poller (label moves, drift
repair) and when an owned child changes. Reconciles of one object are serialized by a lock, so
these triggers never race. Nothing here imports kopf: the handlers pass in how to post Events and
the cache of watched children.

Quiet by construction: children are read from the watch cache (`ChildCache`), a child is applied
only when its desired state differs from what this process last applied (or a watch event showed
someone changed it), the registry answer is shared by every ScoringModel asking the same question,
and status is written only when it changes. An idle cluster costs no API request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
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
from scoring_operator.cache import Applied, ChildCache, ModelState, States, desired_digest, retry_delay
from scoring_operator.config import OperatorConfig
from scoring_operator.kube import Kube, KubeError
from scoring_operator.resolver import Question, Resolver
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
        children: ChildCache | None = None,
    ) -> None:
        self.config = config
        self.kube = kube
        self.resolver = resolver
        self.post_event = post_event
        self.clock = clock
        #: The watched children; None: read them with GETs (tests of the reconcile logic alone).
        self.children = children
        self.tracker = metrics.ModelTracker()
        self.states = States()
        self._running = asyncio.Semaphore(config.max_concurrent_reconciles)
        #: Who asks which registry question (woken together when its answer changes), and who is
        #: waiting for an answer right now (it gets the new answer anyway: not woken).
        self._askers: dict[Question, set[tuple[str, str]]] = {}
        self._asking: dict[Question, set[tuple[str, str]]] = {}
        resolver.on_change = self._answer_changed

    # ------------------------------------------------------------------ poller coordination
    def state(self, key: tuple[str, str]) -> ModelState:
        """The in-memory state of `key` (created empty on first use)."""
        return self.states.get(key)

    def wake(self, key: tuple[str, str]) -> None:
        """Make the poller of `key` reconcile now."""
        state = self.states.peek(key)
        if state is not None:
            state.wake.set()

    def rearm(self, key: tuple[str, str]) -> None:
        """Make the poller of `key` recompute its timer (after a handler's reconcile succeeded or failed)."""
        state = self.states.peek(key)
        if state is not None:
            state.rearm.set()

    def next_delay(self, key: tuple[str, str], interval: float) -> float:
        """When the poller of `key` should reconcile next: the poll interval, or the retry backoff."""
        return retry_delay(self.state(key).failures, interval)

    def forget(self, key: tuple[str, str]) -> None:
        """Drop all in-memory state of a deleted ScoringModel."""
        state = self.states.pop(key)
        if state is not None and state.question is not None:
            self._unask(key, state.question)
        self.tracker.forget(key)

    def _ask(self, key: tuple[str, str], state: ModelState, question: Question | None) -> None:
        if state.question == question:
            return
        if state.question is not None:
            self._unask(key, state.question)
        state.question = question
        if question is not None:
            self._askers.setdefault(question, set()).add(key)

    def _unask(self, key: tuple[str, str], question: Question) -> None:
        askers = self._askers.get(question)
        if askers is not None:
            askers.discard(key)
            if not askers:
                del self._askers[question]
                self.resolver.forget(question)

    def _answer_changed(self, question: Question) -> None:
        """A registry answer moved (a label moved, the registry came back): every asker reconciles now."""
        askers = self._askers.get(question, ())
        if askers:
            log.info("registry answer for %s changed: waking %d ScoringModel(s)", "/".join(question), len(askers))
        waiting = self._asking.get(question, set())
        for key in askers:
            if key not in waiting:
                self.wake(key)

    def observe_child(self, kind: str, obj: Mapping[str, Any], *, deleted: bool = False) -> None:
        """A watch event of an owned child: drift clears what was applied, and the owner looks again.

        Deployments always wake their owner (readiness reaches the status promptly); other kinds only
        when they no longer look as applied (edited, deleted or recreated by someone else).
        """
        key = meta.controller_of(obj)
        state = self.states.peek(key) if key is not None else None
        if key is None or state is None:
            return
        if not any(r.get("uid") == state.uid for r in (obj.get("metadata") or {}).get("ownerReferences") or []):
            return  # a child of an older object of the same name
        applied = state.applied.get(kind)
        drifted = deleted if applied is None else applied.drifted(None if deleted else obj)
        if drifted:
            state.applied.pop(kind, None)
            log.debug("%s/%s: %s %s", key[0], key[1], kind, "deleted" if deleted else "changed by someone else")
        if drifted or kind == "Deployment":
            state.wake.set()

    # ------------------------------------------------------------------ the reconcile
    async def reconcile(self, body: Mapping[str, Any], *, trigger: str = "spec") -> Result:
        """Bring the children of `body` in line with its spec and report it in its status."""
        owner = meta.Owner.from_body(body)
        state = self.states.get(owner.key, owner.uid)
        async with state.lock, self._running:
            state = self.states.get(owner.key, owner.uid)  # forgotten or replaced while waiting
            with telemetry.reconcile_span(owner.namespace, owner.name, trigger) as span:
                started = time.monotonic()
                try:
                    result = await self._reconcile(owner, body, state)
                except Exception:
                    metrics.RECONCILES.labels("error", trigger).inc()
                    state.failures += 1
                    raise
                finally:
                    metrics.RECONCILE_SECONDS.labels(trigger).observe(time.monotonic() - started)
                state.failures = state.failures + 1 if result.retry else 0
                outcome = "success" if result.failure is None else ("retry" if result.retry else "failed")
                metrics.RECONCILES.labels(outcome, trigger).inc()
                failure = result.failure
                telemetry.record_outcome(span, outcome, failure.reason if failure else None,
                                         failure.message if failure else "")
                return result

    async def _reconcile(self, owner: meta.Owner, body: Mapping[str, Any], state: ModelState) -> Result:
        generation = int(body["metadata"].get("generation") or 0)
        old_status: Mapping[str, Any] = state.status if state.status is not None else (body.get("status") or {})
        try:
            spec = api.parse_spec(body.get("spec"))
        except ValidationError as e:
            obs = Observation(generation, spec_error=Failure("InvalidSpec", api.format_validation_error(e)))
            return await self._report(owner, body, state, old_status, obs, None)

        resolved, resolve_error = await self._resolve(owner, state, spec.model, old_status)
        apply_error: Failure | None = None
        applied: tuple[str, ...] = ()
        dep: dict[str, Any] | None = None
        if resolved is not None:
            applied, apply_error, dep = await self._apply(owner, state, spec, resolved.version)
        rollout = None
        try:
            if dep is None:
                dep = await self._live("apps/v1", "Deployment", owner)
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
            endpoint=meta.endpoint(owner, spec.service.port, tls=spec.tls is not None),
            pod_error=pod_error,
        )
        return await self._report(owner, body, state, old_status, obs, resolved)

    async def _resolve(
        self, owner: meta.Owner, state: ModelState, ref: api.ModelRef, old_status: Mapping[str, Any]
    ) -> tuple[Resolved | None, Failure | None]:
        """The version to serve: the registry's (shared) answer, at most one poll interval old."""
        previous = _previous(old_status, ref)
        try:
            question = self.resolver.question(ref)
            self._ask(owner.key, state, question)
            waiting = self._asking.setdefault(question, set())
            waiting.add(owner.key)
            try:
                return await self.resolver.resolve(ref, max_age=float(ref.poll_interval)), None
            finally:
                waiting.discard(owner.key)
                if not waiting:
                    self._asking.pop(question, None)
        except RegistryError as e:
            metrics.REGISTRY_ERRORS.labels(e.reason).inc()
            # Keep serving what runs now: a registry outage or a deleted label is no reason to stop.
            return previous, Failure(e.reason, str(e), e.retryable)

    async def _live(self, api_version: str, kind: str, owner: meta.Owner) -> dict[str, Any] | None:
        """The child as the watch last saw it (a GET when there is no watch cache, or it knows none)."""
        if self.children is not None:
            cached = self.children.get(kind, owner.namespace, owner.name)
            if cached is not None:
                return cached
        return await self.kube.get(api_version, kind, owner.namespace, owner.name)

    async def _apply(
        self, owner: meta.Owner, state: ModelState, spec: api.ScoringModelSpec, version: int
    ) -> tuple[tuple[str, ...], Failure | None, dict[str, Any] | None]:
        """Apply the children whose desired state changed; (kinds in place, failure, the live Deployment if known)."""
        children = desired_children(owner, spec, version, self.config)
        done: list[str] = []
        deployment: dict[str, Any] | None = None
        try:
            for obj in children.apply:
                kind = obj["kind"]
                record = state.applied.get(kind)
                if record is not None and record.digest == desired_digest(obj):
                    done.append(kind)  # unchanged since this process applied it, and no drift seen since
                    continue
                # First apply for this object in this process, or a change: is the name ours to take?
                live = await self._live(obj["apiVersion"], kind, owner)
                if live is not None and not meta.is_owned_by(live, owner):
                    return tuple(done), Failure(
                        "ChildConflict",
                        f"{kind} {owner.namespace}/{owner.name} already exists and does not belong to this "
                        "ScoringModel: delete or rename it, or rename the ScoringModel",
                    ), None
                if kind == "Deployment":
                    await self._hand_replicas_to_hpa(owner, state, spec, live)
                state.applied.pop(kind, None)
                result = await self._apply_one(owner, obj, live)
                state.applied[kind] = Applied.record(obj, result)
                if kind == "Deployment":
                    deployment = result
                done.append(kind)
            for ref in children.prune:
                state.applied.pop(ref.kind, None)
                if self.children is not None:
                    existing = self.children.get(ref.kind, owner.namespace, ref.name)
                else:
                    existing = await self.kube.get(ref.api_version, ref.kind, owner.namespace, ref.name)
                if existing is not None and meta.is_owned_by(existing, owner):
                    await self.kube.delete(ref.api_version, ref.kind, owner.namespace, ref.name)
        except KubeError as e:
            metrics.KUBE_ERRORS.labels(e.reason).inc()
            return tuple(done), Failure(e.reason, str(e), e.retryable), None
        return tuple(done), None, deployment

    async def _apply_one(self, owner: meta.Owner, obj: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
        """Server-side apply; a keyed list someone else broke (HTTP 422) is replaced, then applied again."""
        repairable = _REPLACE_ON_INVALID.get(obj["kind"])
        try:
            return await self.kube.apply(obj)
        except KubeError as e:
            if live is None or e.code != 422 or not repairable:
                raise
            log.info("%s/%s: %s; replacing %s", owner.namespace, owner.name, e, ", ".join(repairable))
        fresh = await self.kube.get(obj["apiVersion"], obj["kind"], owner.namespace, owner.name)
        await self.kube.replace_fields(with_node_ports(obj, fresh), repairable)
        return await self.kube.apply(obj)

    async def _hand_replicas_to_hpa(
        self, owner: meta.Owner, state: ModelState, spec: api.ScoringModelSpec, live: dict[str, Any] | None
    ) -> None:
        """Before an apply without spec.replicas, give the replicas the operator owns to another manager.

        Checked once per object and operator process: after that, the operator's applies never list
        replicas again while autoscaling is on, so it cannot own them.
        """
        if spec.autoscaling is None:
            state.handed_over = False  # this apply takes replicas back
            return
        if state.handed_over:
            return
        handoff = replicas_handoff(owner, spec, live)
        if handoff is not None:
            log.info("%s/%s: autoscaling on: handing spec.replicas=%s over to the HPA", owner.namespace,
                     owner.name, handoff["spec"]["replicas"])
            await self.kube.apply(handoff, field_manager=HANDOFF_MANAGER)
        state.handed_over = True

    async def _report(
        self,
        owner: meta.Owner,
        body: Mapping[str, Any],
        state: ModelState,
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
                state.status = new_status
                for etype, reason, message in _worth_posting(transition_events(old_status, new_status)):
                    level = logging.WARNING if etype == "Warning" else logging.INFO
                    log.log(level, "%s/%s: %s: %s", owner.namespace, owner.name, reason, message)
                    self.post_event(body, etype, reason, message[:1024])
        self.tracker.observe(owner.key, new_status["phase"], (resolved.name, resolved.version) if resolved else None)
        if failure is not None:  # already logged and posted as an Event when it first appeared
            log.debug("%s/%s: %s: %s", owner.namespace, owner.name, failure.reason, failure.message)
        return Result(new_status["phase"], failure)


def _worth_posting(events: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """One Warning per cause: `NotReady` only when no other Warning already says why."""
    if any(etype == "Warning" and reason != "NotReady" for etype, reason, _ in events):
        return [e for e in events if e[1] != "NotReady"]
    return list(events)
