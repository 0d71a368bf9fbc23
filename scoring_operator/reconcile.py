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
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from scoring_operator import metrics
from scoring_operator import spec as api
from scoring_operator.builders import canary, desired_children, meta, progress
from scoring_operator.builders.analysis import Judgement, Numbers, PodSample, judge, parse_metrics, window
from scoring_operator.builders.exposure import GATEWAY_API_GROUP, external_url
from scoring_operator.builders.status import (
    Failure,
    Observation,
    Resolved,
    Rollout,
    compute_status,
    evaluate_rollout,
    fetch_failure,
    status_patch,
    transition_events,
)
from scoring_operator.builders.workload import HANDOFF_MANAGER, replicas_handoff, with_node_ports
from scoring_operator.cache import (
    Applied,
    ChildCache,
    ModelState,
    States,
    desired_digest,
    resource_version,
    retry_delay,
    trimmed,
)
from scoring_operator.config import OperatorConfig
from scoring_operator.kube import Kube, KubeError
from scoring_operator.resolver import Question, Resolver
from scoring_operator.rollouts import RolloutSlots
from scoring_runtime import telemetry
from scoring_runtime.registry import RegistryError

log = logging.getLogger(__name__)

#: Seconds a rollout may go without progress (no change in its Deployment's replica counts) before
#: its pods are listed for a failed model fetch: a healthy rollout, however slow, lists no pods
#: (each list is read from every pod of the namespace: in a 500-model label move on a saturated
#: cluster nearly every rollout took longer than this and listed). Once its new pods are all
#: available, what is left (old pods going away) is no failure of the new version: no list either.
POD_CHECK_AFTER = 10.0
#: A status change that is mere rollout progress (same phase, conditions and reasons; only the
#: counts and messages moved) is written at most this often per object: a rollout's Deployment
#: changes several times within a second or two, and each write is also an event every watcher
#: of ScoringModels receives. Transitions (a new version, Ready, a failure) are written at once,
#: so a healthy rollout of under a minute costs two writes (Deploying, Ready); a longer one shows
#: its counts refreshed every minute (`kubectl rollout status` shows them live).
PROGRESS_EVERY = 60.0
#: A rollout slot (`SCORING_OPERATOR_MAX_CONCURRENT_ROLLOUTS`) is handed on to the next waiting
#: model when its rollout made no progress (no change in its Deployment's counts or conditions)
#: for this long: one stuck model never holds up the rest (it keeps rolling in the background).
ROLLOUT_STALL = 60.0

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
#: Children that make the model reachable from outside (status.url is shown once one is applied).
_EXPOSURE_KINDS = ("Ingress", "HTTPRoute")


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
        #: Rollouts of a new model version running at once, cluster-wide (0: no cap).
        self.slots = RolloutSlots(config.max_concurrent_rollouts, ROLLOUT_STALL)
        metrics.ROLLOUT_SLOTS.labels("running").set_function(lambda: self.slots.running)
        metrics.ROLLOUT_SLOTS.labels("queued").set_function(lambda: self.slots.waiting)
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
        """When the poller of `key` should reconcile next: the poll interval, the retry backoff, a pod
        check, or sooner while a canary/shadow rollout is being analysed."""
        state = self.state(key)
        delay = retry_delay(state.failures, interval)
        if state.recheck:
            delay = min(delay, state.recheck)
        for due in (state.pods_check_due, state.progress_due):
            if due is not None:
                delay = min(delay, max(0.1, due - time.monotonic()))
        if self.slots.queued(key):  # a slot may be handed on by a stalled rollout
            expiry = self.slots.next_expiry()
            if expiry is not None:
                delay = min(delay, max(0.1, expiry))
        return delay

    def forget(self, key: tuple[str, str]) -> None:
        """Drop all in-memory state of a deleted ScoringModel."""
        state = self.states.pop(key)
        if state is not None and state.question is not None:
            self._unask(key, state.question)
        self.tracker.forget(key)
        for waiter in self.slots.release(key):
            self.wake(waiter)

    def _rollout_ended(self, key: tuple[str, str], state: ModelState, dep: Mapping[str, Any] | None) -> None:
        """Hand the slot of `key` on once its Deployment serves the new version with all new pods available
        (what is left, old pods going away, is the controller's cleanup), or the rollout failed."""
        if dep is None or not self.slots.holds(key) or _version(dep) != state.rolling_to:
            return  # not holding, or an event from before the apply
        rollout = evaluate_rollout(dep)
        if rollout.new_pods_available or rollout.state in ("Complete", "Stalled"):
            for waiter in self.slots.release(key):
                self.wake(waiter)

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

        Deployments wake their owner when anything a reconcile reads of them changed (readiness
        reaches the status promptly; a rollout's Deployment is written ~8 times, not all of them
        news to the operator); other kinds only when they no longer look as applied (edited,
        deleted or recreated by someone else).
        """
        key = meta.controller_of(obj)
        state = self.states.peek(key) if key is not None else None
        if key is None or state is None:
            return
        if not any(r.get("uid") == state.uid for r in (obj.get("metadata") or {}).get("ownerReferences") or []):
            return  # a child of an older object of the same name
        key_ = _applied_key(kind, str((obj.get("metadata") or {}).get("name") or ""), meta.Owner(key[1], key[0], ""))
        applied = state.applied.get(key_)
        drifted = deleted if applied is None else applied.drifted(None if deleted else obj)
        if drifted:
            state.applied.pop(key_, None)
            log.debug("%s/%s: %s %s", key[0], key[1], kind, "deleted" if deleted else "changed by someone else")
        news = False
        if kind == "Deployment":
            view = None if deleted else _rollout_view(obj)
            news = state.deployment_views.get(key_, ()) != view
            state.deployment_views[key_] = view
            if key_ == "Deployment" and news:
                self.slots.progressed(key)
                self._rollout_ended(key, state, None if deleted else obj)
        if drifted or news:
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
        state.queued = False
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
        decision: progress.Decision | None = None
        if resolved is not None:
            try:
                decision = await self._progress(owner, state, spec, resolved, old_status, generation,
                                                resolve_error is not None)
            except KubeError as e:
                metrics.KUBE_ERRORS.labels(e.reason).inc()
                apply_error = Failure(e.reason, str(e), e.retryable)
        if resolved is not None and decision is not None:
            applied, apply_error, dep = await self._apply(owner, state, spec, resolved.version, decision)
            # status.model is the version the stable Deployment serves; a canary's is in status.rollout
            resolved = Resolved(resolved.name, decision.stable_version, resolved.resolved_from)
        rollout = None
        try:
            if dep is None:
                dep = await self._deployment(owner, state)
            # A same-named Deployment of someone else is not our rollout (that clash is a ChildConflict).
            rollout = evaluate_rollout(dep if meta.is_owned_by(dep, owner) else None)
            if not state.queued:
                self._rollout_ended(owner.key, state, dep)
        except KubeError as e:
            metrics.KUBE_ERRORS.labels(e.reason).inc()
            apply_error = apply_error or Failure(e.reason, str(e), e.retryable)
        if not state.queued:  # it no longer waits (rolled, or wants no new version any more)
            self.slots.withdraw(owner.key)
        pod_error = await self._pod_error(owner, state, rollout, resolved, dep, spec.model.poll_interval)
        exposed = any(kind in applied for kind in _EXPOSURE_KINDS)
        obs = Observation(
            generation,
            resolved=resolved,
            resolve_error=resolve_error,
            apply_error=apply_error,
            applied=applied,
            rollout=rollout,
            endpoint=meta.endpoint(owner, spec.service.port, tls=spec.tls is not None),
            pod_error=pod_error,
            url=external_url(spec) if exposed else None,
            progressive=decision.status if decision is not None else old_status.get("rollout"),
            queued=_QUEUED.format(limit=self.slots.limit) if state.queued else None,
        )
        return await self._report(owner, body, state, old_status, obs, resolved)

    async def _progress(
        self, owner: meta.Owner, state: ModelState, spec: api.ScoringModelSpec, resolved: Resolved,
        old_status: Mapping[str, Any], generation: int, registry_down: bool,
    ) -> progress.Decision:
        """Where a canary/shadow rollout goes next (see builders/progress.py), with a fresh analysis when due."""
        old_rollout = old_status.get("rollout") or None
        if spec.strategy == "RollingUpdate" and not (old_rollout and old_rollout.get("phase") in progress.IN_FLIGHT):
            state.recheck, state.analysis = None, None
            return progress.Decision(resolved.version, status=old_rollout)  # no API call for plain rollouts
        old_model = old_status.get("model") or {}
        stable = int(old_model["version"]) if old_model.get("name") == spec.model.name and old_model.get(
            "version") is not None else None
        target = resolved.version
        if registry_down and old_rollout and old_rollout.get("phase") in progress.IN_FLIGHT:
            target = int(old_rollout.get("candidateVersion") or target)  # keep going while the registry is away
        now = self.clock()
        dep = await self._deployment(owner, state)
        dep = dep if meta.is_owned_by(dep, owner) else None
        name = canary.shadow_name(owner) if spec.strategy == "Shadow" else canary.canary_name(owner)
        cand = await self._cached("apps/v1", "Deployment", owner, name)
        available = _serves(cand, target)
        problem: tuple[bool, str] | None = None
        if cand is not None and not available and meta.is_owned_by(cand, owner):
            state_ = evaluate_rollout(cand)
            if state_.state == "Stalled":
                problem = (True, state_.message)
            else:  # say why its pods do not start (e.g. the version's files fail their checksum)
                track = "shadow" if spec.strategy == "Shadow" else progress.CANARY
                pods = await self.kube.list_pods(owner.namespace, canary.candidate_selector(owner, spec, track))
                failed = fetch_failure(pods, target)
                problem = (False, failed.message) if failed is not None else None
        inputs = progress.Inputs(
            spec=spec, generation=generation, target=target, stable=stable, old=old_rollout, now=now,
            candidate_available=available, stable_done=_serves(dep, target),
            stable_live_replicas=int(((dep or {}).get("status") or {}).get("replicas") or 0) or None,
            candidate_problem=problem,
        )
        decision = progress.decide(inputs)
        if decision.analyse and decision.candidate is not None:
            judgement = await self._analyse(owner, state, spec, decision.candidate)
            metrics.ANALYSES.labels(judgement.verdict).inc()
            decision = progress.decide(dataclasses.replace(inputs, judgement=judgement))
        if decision.candidate is None:
            state.analysis = None
        state.recheck = decision.recheck
        return decision

    async def _analyse(
        self, owner: meta.Owner, state: ModelState, spec: api.ScoringModelSpec, track: progress.Track
    ) -> Judgement:
        """Read /metrics of the candidate's and the stable pods; judge the requests since the last verdict."""
        ns = owner.namespace
        selector = canary.candidate_selector(owner, spec, track.kind)
        cand_pods = await self.kube.list_pods(ns, selector)
        stable_pods = await self.kube.list_pods_selector(
            ns, f"app.kubernetes.io/name=scoring-model,app.kubernetes.io/instance={owner.name},"
                f"{canary.LABEL_TRACK}!={progress.CANARY}")
        scheme = "https" if spec.tls is not None else "http"
        errors: list[str] = []

        async def scrape(pods: list[dict[str, Any]], version: int | None) -> dict[str, PodSample]:
            out: dict[str, PodSample] = {}
            for pod in pods:
                md = pod.get("metadata") or {}
                if version is not None and _version(pod) != str(version):
                    continue
                if md.get("deletionTimestamp") or not _pod_ready(pod):
                    continue
                try:
                    text = await self.kube.pod_metrics(ns, str(md.get("name")), scheme)
                    out[str(md.get("uid") or md.get("name"))] = parse_metrics(text)
                except (KubeError, ValueError) as e:
                    errors.append(f"{md.get('name')}: {e}")
            return out

        cand_now = await scrape(cand_pods, track.version)
        stable_now = await scrape(stable_pods, None)
        analysis = (spec.rollout or api.RolloutSpec()).effective_analysis
        base = state.analysis
        if base is None or base[0] != track.version:
            state.analysis = (track.version, cand_now, stable_now)
            why = "first read of the pods' metrics: the next analysis judges the requests from now on"
            if errors:
                why += f" (unreadable: {'; '.join(errors)[:500]})"
            return Judgement("Inconclusive", why, Numbers.of(PodSample(), len(cand_now)),
                             Numbers.of(PodSample(), len(stable_now)))
        result = judge(Numbers.of(window(cand_now, base[1]), len(cand_now)),
                       Numbers.of(window(stable_now, base[2]), len(stable_now)), analysis)
        if result.verdict != "Inconclusive":
            state.analysis = (track.version, cand_now, stable_now)
        if errors:
            log.warning("%s/%s: metrics not read from %s", ns, owner.name, "; ".join(errors)[:500])
        return result

    async def _pod_error(
        self, owner: meta.Owner, state: ModelState, rollout: Rollout | None, resolved: Resolved | None,
        dep: Mapping[str, Any] | None, interval: float,
    ) -> Failure | None:
        """Why the new pods cannot start (e.g. the model fetch fails), for a rollout that is stuck.

        Pods are listed once a rollout has made no progress for POD_CHECK_AFTER seconds (or has
        stalled) while the Deployment has pods of the new version not yet available, then again
        every poll interval while it stays stuck; the answer is kept between.
        """
        if (resolved is None or rollout is None or rollout.state not in ("Progressing", "Stalled")
                or rollout.new_pods_available):
            state.pods_check_due, state.pod_error, state.rollout_counts = None, None, None
            return None
        now = time.monotonic()
        counts = _replica_counts(dep)
        if state.pods_check_due is None or counts != state.rollout_counts:  # started, or progressed
            state.pods_check_due, state.rollout_counts = now + POD_CHECK_AFTER, counts
        new_pods = _has_new_pods(dep)
        if now >= state.pods_check_due and not new_pods:  # nothing to look at yet: look again later
            state.pods_check_due = now + POD_CHECK_AFTER
        elif rollout.state == "Stalled" or now >= state.pods_check_due:
            state.pods_check_due = now + max(POD_CHECK_AFTER, float(interval))
            try:
                pods = await self.kube.list_pods(owner.namespace, meta.selector_labels(owner))
                state.pod_error = (resolved.version, fetch_failure(pods, resolved.version))
            except KubeError as e:
                metrics.KUBE_ERRORS.labels(e.reason).inc()
        if state.pod_error is None or state.pod_error[0] != resolved.version:
            return None
        error = state.pod_error[1]
        return error if isinstance(error, Failure) else None

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

    async def _live(
        self, api_version: str, kind: str, owner: meta.Owner, name: str | None = None
    ) -> dict[str, Any] | None:
        """The child as the watch last saw it (a GET when there is no watch cache, or it knows none)."""
        name = name or owner.name
        if self.children is not None:
            cached = self.children.get(kind, owner.namespace, name)
            if cached is not None:
                return cached
        return await self.kube.get(api_version, kind, owner.namespace, name)

    async def _deployment(self, owner: meta.Owner, state: ModelState) -> dict[str, Any] | None:
        """The main Deployment: the watch cache's, unless it is older than this process's last apply of it."""
        live = await self._live("apps/v1", "Deployment", owner)
        mine, record = state.deployment, state.applied.get("Deployment")
        if mine is None or record is None or resource_version(mine) != record.resource_version:
            return live  # not applied by this process, or someone changed it since (the record was cleared)
        if live is None or resource_version(live) < record.resource_version:
            return mine  # the watch has not delivered the apply yet
        state.deployment = None  # caught up (the watch never goes back): no need to keep a copy
        return live

    async def _cached(self, api_version: str, kind: str, owner: meta.Owner, name: str) -> dict[str, Any] | None:
        """A child that usually does not exist: the watch cache's answer when there is one (no GET)."""
        if self.children is not None:
            return self.children.get(kind, owner.namespace, name)
        return await self.kube.get(api_version, kind, owner.namespace, name)

    async def _apply(
        self, owner: meta.Owner, state: ModelState, spec: api.ScoringModelSpec, version: int,
        decision: progress.Decision | None = None,
    ) -> tuple[tuple[str, ...], Failure | None, dict[str, Any] | None]:
        """Apply the children whose desired state changed; (kinds in place, failure, the live Deployment if known)."""
        children = desired_children(owner, spec, version, self.config, decision)
        done: list[str] = []
        deployment: dict[str, Any] | None = None
        try:
            for obj in children.apply:
                kind, name = obj["kind"], obj["metadata"]["name"]
                key = _applied_key(kind, name, owner)
                main = name == owner.name
                record = state.applied.get(key)
                if record is not None and record.digest == desired_digest(obj):
                    if main:
                        done.append(kind)  # unchanged since this process applied it, and no drift seen since
                    continue
                # First apply for this object in this process, or a change: is the name ours to take?
                live = await self._live(obj["apiVersion"], kind, owner, name)
                if live is not None and not meta.is_owned_by(live, owner):
                    return tuple(done), Failure(
                        "ChildConflict",
                        f"{kind} {owner.namespace}/{name} already exists and does not belong to this "
                        "ScoringModel: delete or rename it, or rename the ScoringModel",
                    ), None
                if kind == "Deployment" and main:
                    if _new_version(live, obj):
                        if not self.slots.acquire(owner.key):
                            state.queued = True  # applied when a slot is free (the releaser wakes it)
                            continue
                        state.rolling_to = _version(obj)
                    await self._hand_replicas_to_hpa(owner, state, spec, live)
                state.applied.pop(key, None)
                try:
                    result = await self._apply_one(owner, obj, live)
                except KubeError as e:
                    missing = await self._missing_api(obj, e)
                    if missing is None:
                        raise
                    metrics.KUBE_ERRORS.labels(e.reason).inc()
                    return tuple(done), missing, None
                state.applied[key] = Applied.record(obj, result)
                if kind == "Deployment" and main:
                    deployment, state.deployment = result, trimmed(result, "Deployment")
                if main:
                    done.append(kind)
            for ref in children.prune:
                was_applied = state.applied.pop(_applied_key(ref.kind, ref.name, owner), None) is not None
                existing = None
                if self.children is not None:
                    existing = self.children.get(ref.kind, owner.namespace, ref.name)
                # Without a watch cache, or for a kind whose watch may not run (an HTTPRoute whose CRD
                # was installed after the operator started), what this process applied is looked up.
                if existing is None and (self.children is None or was_applied):
                    existing = await self.kube.get(ref.api_version, ref.kind, owner.namespace, ref.name)
                if existing is not None and meta.is_owned_by(existing, owner):
                    await self.kube.delete(ref.api_version, ref.kind, owner.namespace, ref.name)
        except KubeError as e:
            metrics.KUBE_ERRORS.labels(e.reason).inc()
            return tuple(done), Failure(e.reason, str(e), e.retryable), None
        return tuple(done), None, deployment

    async def _missing_api(self, obj: Mapping[str, Any], error: KubeError) -> Failure | None:
        """The failure to report when an apply failed because the apiserver lacks the kind's CRD, else None.

        Why: a ScoringModel asking for an HTTPRoute on a cluster without the Gateway API CRDs must say
        so (and keep serving in-cluster), and start working once they are installed (retryable).
        """
        if error.code != 404 or obj["apiVersion"].split("/")[0] != GATEWAY_API_GROUP:
            return None
        try:
            if await self.kube.serves(obj["apiVersion"], obj["kind"]):
                return None
        except KubeError:
            return None
        return Failure(
            "GatewayAPINotInstalled",
            f"spec.exposure.httpRoute needs the Gateway API CRDs ({obj['apiVersion']} {obj['kind']}), which this "
            "cluster does not serve: install them (see docs/operator.md, Exposure) or use spec.exposure.ingress; "
            "the model is served in-cluster meanwhile",
            retryable=True,
        )

    async def _apply_one(self, owner: meta.Owner, obj: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
        """Server-side apply; a keyed list someone else broke (HTTP 422) is replaced, then applied again."""
        repairable = _REPLACE_ON_INVALID.get(obj["kind"])
        try:
            return await self.kube.apply(obj)
        except KubeError as e:
            if live is None or e.code != 422 or not repairable:
                raise
            log.info("%s/%s: %s; replacing %s", owner.namespace, owner.name, e, ", ".join(repairable))
        fresh = await self.kube.get(obj["apiVersion"], obj["kind"], owner.namespace, obj["metadata"]["name"])
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
        now = time.monotonic()
        if patch is not None and _progress_only(old_status, new_status) and \
                now < state.status_written_at + PROGRESS_EVERY:
            state.progress_due, patch = state.status_written_at + PROGRESS_EVERY, None  # written by the poller
        elif patch is None:
            state.progress_due = None
        if patch is not None:
            try:
                await self.kube.patch_status(owner.namespace, owner.name, patch)
            except KubeError as e:
                metrics.KUBE_ERRORS.labels(e.reason).inc()
                if e.code == 404:  # deleted meanwhile: nothing left to report on
                    return Result(new_status["phase"])
                failure = failure or Failure(e.reason, str(e), retryable=True)
            else:
                state.status, state.status_written_at, state.progress_due = new_status, now, None
                rollout_events = progress.events(old_status.get("rollout"), new_status.get("rollout"))
                posted = [*transition_events(old_status, new_status), *rollout_events]
                ended = new_status.get("rollout") or {}
                if any(reason.endswith(("Promoted", "RolledBack")) for _, reason, _ in rollout_events):
                    metrics.ROLLOUTS.labels(str(ended.get("strategy")), str(ended.get("reason"))).inc()
                for etype, reason, message in _worth_posting(posted):
                    level = logging.WARNING if etype == "Warning" else logging.INFO
                    log.log(level, "%s/%s: %s: %s", owner.namespace, owner.name, reason, message)
                    self.post_event(body, etype, reason, message[:1024])
        self.tracker.observe(owner.key, new_status["phase"], (resolved.name, resolved.version) if resolved else None)
        if failure is not None:  # already logged and posted as an Event when it first appeared
            log.debug("%s/%s: %s: %s", owner.namespace, owner.name, failure.reason, failure.message)
        return Result(new_status["phase"], failure)


_QUEUED = ("waiting for a rollout slot: {limit} rollouts of a new model version are running in the cluster "
           "(SCORING_OPERATOR_MAX_CONCURRENT_ROLLOUTS); the previous version keeps serving")


def _new_version(live: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether applying `desired` rolls the existing Deployment `live` to another model version."""
    return live is not None and _version(live) != _version(desired)  # a new Deployment: nothing rolls


def _version(obj: Mapping[str, Any]) -> str | None:
    """The model version a Deployment (desired or live) or a pod is for: its model-version annotation."""
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(meta.ANNOTATION_MODEL_VERSION)


def _applied_key(kind: str, name: str, owner: meta.Owner) -> str:
    """The key of a child in ModelState.applied: its kind, plus its name for the canary/shadow ones."""
    return kind if name == owner.name else f"{kind}/{name}"


def _serves(dep: Mapping[str, Any] | None, version: int) -> bool:
    """The Deployment runs `version` and all its pods are updated and available."""
    if not dep or _version(dep) != str(version):
        return False
    return evaluate_rollout(dep).state == "Complete"


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _has_new_pods(dep: Mapping[str, Any] | None) -> bool:
    """Whether the Deployment controller has seen the current spec and made pods for it."""
    status = (dep or {}).get("status") or {}
    seen = int(status.get("observedGeneration") or 0) >= int(((dep or {}).get("metadata") or {}).get("generation") or 0)
    return seen and int(status.get("updatedReplicas") or 0) > 0


def _rollout_view(dep: Mapping[str, Any]) -> tuple[Any, ...]:
    """All that reconciles read of a Deployment (its identity, spec generation, version, replicas and
    rollout status); a watch event that leaves it unchanged is no news to the owner."""
    metadata = dep.get("metadata") or {}
    status = dep.get("status") or {}
    conditions = tuple((c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or [])
    return (metadata.get("uid"), metadata.get("generation"), metadata.get("deletionTimestamp"),
            _version(dep),
            (dep.get("spec") or {}).get("replicas"), _replica_counts(dep), conditions)


def _replica_counts(dep: Mapping[str, Any] | None) -> tuple[int, ...]:
    """What a rollout's progress shows in its Deployment: the generation seen and the replica counts."""
    status = (dep or {}).get("status") or {}
    return tuple(int(status.get(k) or 0) for k in ("observedGeneration", "replicas", "updatedReplicas",
                                                   "readyReplicas", "availableReplicas"))


def _progress_only(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether `new` differs from `old` only in a rollout's counts and messages (same phase, conditions, model)."""
    if new.get("phase") != "Deploying" or old.get("phase") != "Deploying":
        return False

    def shape(status: Mapping[str, Any]) -> Any:
        conds = [(c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or []]
        rollout = status.get("rollout") or {}  # a canary's phase, step or verdict is news, not progress
        steps = tuple(rollout.get(k) for k in ("phase", "step", "weight", "candidateVersion", "reason"))
        return (conds, steps, *(status.get(k) for k in ("observedGeneration", "model", "endpoint", "lastFailure",
                                                         "url")))

    return bool(shape(old) == shape(new))


def _worth_posting(events: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """One Warning per cause: `NotReady` only when no other Warning already says why."""
    if any(etype == "Warning" and reason != "NotReady" for etype, reason, _ in events):
        return [e for e in events if e[1] != "NotReady"]
    return list(events)
