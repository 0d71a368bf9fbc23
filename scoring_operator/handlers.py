"""kopf handlers: thin glue from Kubernetes events to `Reconciler.reconcile`.

- create/update(spec)/resume: reconcile now. A temporary failure is not raised to kopf: the
  object's poller retries it with the one backoff (`cache.retry_delay`), so retries are counted
  and spaced in one place and cost no kopf bookkeeping writes.
- a per-object poller (a kopf daemon, i.e. a timer whose interval is the object's own
  `spec.model.pollInterval`): re-resolves tracked labels (rolling out a moved label), keeps
  retrying failures (1, 2, 4... seconds, capped at the interval), and reconciles at once when woken.
- the children (Deployments, Services, HPAs, PDBs, Ingresses, HTTPRoutes labelled `app.kubernetes.io/managed-by:
  scoring-operator`) are watched into kopf indexes, the cache the reconciler reads instead of
  GETting; their events wake the owner's poller (a Deployment's always, for readiness; the others
  when they drifted from what was applied).

Run with `scoring-operator` (see __main__) or `kopf run -m scoring_operator.handlers` with
`SCORING_OPERATOR_*` env vars. kopf logs in through the official `kubernetes` client (in-cluster
ServiceAccount, or the kubeconfig with its exec plugins); so does the reconciler (`kube.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Mapping
from typing import Any, cast

import aiohttp
import kopf

from scoring_operator import config as cfg
from scoring_operator import metrics
from scoring_operator import spec as api
from scoring_operator.builders import meta
from scoring_operator.cache import trimmed
from scoring_operator.kube import Kube
from scoring_operator.reconcile import Reconciler
from scoring_operator.resolver import Resolver

FINALIZER = f"{api.GROUP}/operator"
#: Connections kopf may use for its own writes besides its watch streams.
KOPF_WRITERS = 8
#: Seconds kopf keeps an object's event worker (and the last event it processed) after its last event.
WORKER_IDLE_TIMEOUT = 1.0
#: Coalesce bursts of Deployment events (a rollout produces several) into one reconcile.
WAKE_DEBOUNCE = 0.5
#: The children the operator watches: (kind, group, version, plural), each into its own kopf index.
CHILD_KINDS = (
    ("Deployment", "apps", "v1", "deployments"),
    ("Service", "", "v1", "services"),
    ("HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscalers"),
    ("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets"),
    ("Ingress", "networking.k8s.io", "v1", "ingresses"),
    # A CRD: when the Gateway API is not installed when the operator starts, kopf logs that it cannot
    # watch it and carries on; reconciles then GET what they applied (see Reconciler._apply).
    ("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes"),
    ("ConfigMap", "", "v1", "configmaps"),  # the shadow's (spec.rollout.strategy Shadow)
)
_MANAGED = ",".join(f"{k}={v}" for k, v in meta.MANAGED_SELECTOR.items())


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base storage, building the same essence without deep-copying the whole body.

    kopf builds the essence of every ScoringModel event (status writes included) by deep-copying
    the whole object, status and managedFields too, only to drop them: ~13% of the operator's CPU
    while 500 ScoringModels roll out. Dropping them before the copy gives the identical essence.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if extra_fields:  # fields picked from status or metadata: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        metadata = body.get("metadata") or {}
        lean = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        lean["metadata"] = {k: metadata[k] for k in ("labels", "annotations", "ownerReferences") if k in metadata}
        return super().build(body=kopf.Body(cast(kopf.RawBody, lean)))


def _post_event(body: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=etype, reason=reason, message=message)


def _reconciler(memo: Any) -> Reconciler:
    rec = getattr(memo, "reconciler", None)
    if rec is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return cast(Reconciler, rec)


def _poll_interval(body: Mapping[str, Any]) -> float:
    try:
        return float(max(1, int(body["spec"]["model"].get("pollInterval", 60))))
    except (KeyError, TypeError, ValueError, AttributeError):
        return 60.0


def _index_name(kind: str) -> str:
    return f"children_{kind.lower()}"


class IndexedChildren:
    """The `ChildCache` over kopf's indexes (one per child kind, keyed by (namespace, name))."""

    def __init__(self, indices: Mapping[str, kopf.Index[tuple[str, str], dict[str, Any]]]) -> None:
        self._by_kind = {kind: indices[_index_name(kind)] for kind, *_ in CHILD_KINDS if _index_name(kind) in indices}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        index = self._by_kind.get(kind)
        store = index.get((namespace, name)) if index is not None else None
        return next(iter(store), None) if store else None


def _register_children() -> None:
    """One kopf index (the cache) and one event handler (drift and readiness wake-ups) per child kind."""
    for kind, group, version, plural in CHILD_KINDS:

        async def index(  # async: runs on the loop, not in kopf's thread pool
            body: kopf.Body, namespace: str | None, name: str | None, _kind: str = kind, **_: Any
        ) -> Any:
            return {(str(namespace), str(name)): trimmed(body, _kind)}

        async def changed(
            body: kopf.Body, type: str | None, memo: kopf.Memo, _kind: str = kind, **_: Any
        ) -> None:
            rec = getattr(memo, "reconciler", None)
            if rec is not None:
                cast(Reconciler, rec).observe_child(_kind, body, deleted=type == "DELETED")

        kopf.index(group, version, plural, id=_index_name(kind), labels=meta.MANAGED_SELECTOR)(index)
        kopf.on.event(group, version, plural, id=f"{plural}_changed", labels=meta.MANAGED_SELECTOR)(changed)


_register_children()


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """Log in through the official client: in-cluster ServiceAccount, else kubeconfig (exec plugins run).

    kopf gets a session with a bounded connection pool (its default is unbounded: hundreds of
    objects changing at once would open hundreds of TLS connections, ~0.3 MB each): one per
    watch stream, plus a few for its own writes (finalizers, its annotations, Events); the
    reconciles' API calls go through the reconciler's own pool (`Kube`).
    """
    info: kopf.ConnectionInfo | None = await asyncio.to_thread(kopf.login_via_client, **kwargs)
    if info is None:
        return None
    config = cfg.current()
    watches = (1 + len(CHILD_KINDS)) * max(1, len(config.namespaces))
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=watches + KOPF_WRITERS, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(server=info.server, default_namespace=info.default_namespace, priority=info.priority,
                               expiration=info.expiration, aiohttp_session=session)


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    """Configure kopf for least privilege, and build the reconciler once per process."""
    config = cfg.current()
    settings.peering.standalone = True  # one replica; no kopf.dev peering objects or RBAC for them
    settings.scanning.disabled = True  # no cluster-wide CRD/namespace watching needed
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(prefix=api.GROUP, key="last-handled-configuration")
    settings.posting.level = logging.CRITICAL  # Events are posted deliberately, on status transitions
    settings.execution.max_workers = 4
    # kopf's per-object worker keeps the object's last event (a parsed Deployment: ~50-100 kB) until it
    # exits, idle_timeout after that event (default 5 s): when 500 rollouts complete together, nearly
    # every worker is alive holding one. Exiting after 1 s of quiet bounds that; a new event respawns it.
    settings.queueing.idle_timeout = WORKER_IDLE_TIMEOUT
    for _, group, _version, plural in CHILD_KINDS:  # watch only our children, filtered by the apiserver
        settings.watching.label_selectors[(group, plural) if group else plural] = _MANAGED
    metrics.serve(config.metrics_port, config.bind_address)  # also under plain `kopf run`
    kube = await Kube.connect(max_connections=config.max_concurrent_reconciles)
    resolver = Resolver(config.local_registry_root, timeout=config.registry_timeout)
    memo.reconciler = Reconciler(config, kube, resolver, _post_event, children=IndexedChildren(kwargs))
    _freeze_startup_objects()
    logger.info(
        "scoring-operator ready: namespaces=%s local registry=%s",
        ",".join(config.namespaces) or "(all)", config.local_registry_root or "(none)",
    )


def _freeze_startup_objects() -> None:
    """Move everything alive after start-up (modules, classes: ~70 MB) out of the cyclic GC's reach.

    Why: every watch event kopf processes is wrapped in a `Body` that references itself through
    its `Meta`/`Spec` views, so the event's parsed object (~50-100 kB for a Deployment) is freed
    only by a collection of the generation it reached. Under a burst (500 rollouts completing
    together) many reach the oldest generation, which Python collects only once the objects
    promoted there since the last full collection exceed a quarter of those already there:
    with the start-up objects counted, hundreds of events piled up (+13-20 MB of peak RSS in a
    500-model label move). Frozen, they are neither counted nor scanned: full collections come
    sooner and cost less.
    """
    gc.collect()
    gc.freeze()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    rec = getattr(memo, "reconciler", None)
    if rec is not None:
        await rec.resolver.close()
        await rec.kube.close()


@kopf.on.resume(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.create(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.update(api.GROUP, api.VERSION, api.PLURAL, field="spec")
async def reconcile(body: kopf.Body, memo: kopf.Memo, reason: str, **_: Any) -> None:
    """Reconcile on creation, on any spec change, and once for every object when the operator starts.

    A temporary failure is retried by the object's poller (one backoff for both), not by kopf.
    """
    rec = _reconciler(memo)
    await rec.reconcile(body, trigger=str(reason))
    rec.rearm((str(body.metadata.namespace), str(body.metadata.name)))


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, id="poll", cancellation_timeout=10.0)
async def poll(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Per-object timer: every spec.model.pollInterval, on retry backoff, or when woken, reconcile the live object."""
    rec = _reconciler(memo)
    key = (str(body.metadata.namespace), str(body.metadata.name))
    state = rec.state(key)
    try:
        while not stopped:
            why = await _wait(state.wake, state.rearm, stopped, rec.next_delay(key, _poll_interval(body)))
            if stopped:
                break
            if why == "rearm":
                continue  # a handler reconciled: recompute the timer from the new failure count
            if why == "wake":
                if not rec.slots.queued(key):  # a waiter woken for a free rollout slot has no burst to coalesce
                    await asyncio.sleep(WAKE_DEBOUNCE)
                state.wake.clear()
            if body.metadata.get("deletionTimestamp"):
                break
            await rec.reconcile(body, trigger=why)
    finally:
        if body.metadata.get("deletionTimestamp"):
            rec.forget(key)


async def _wait(wake: asyncio.Event, rearm: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> str:
    """Sleep up to `timeout`: "wake", "rearm", or "poll" (timer ran out, or stopped)."""
    waiters = {
        asyncio.ensure_future(wake.wait()),
        asyncio.ensure_future(rearm.wait()),
        asyncio.ensure_future(stopped.wait(timeout)),
    }
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if wake.is_set():
        return "wake"
    if rearm.is_set():
        rearm.clear()
        return "rearm"
    return "poll"


__all__ = ["IndexedChildren", "LeanDiffBaseStorage", "cleanup", "login", "poll", "reconcile", "startup", "trimmed"]
