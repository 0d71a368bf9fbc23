"""kopf handlers: thin glue from Kubernetes events to `Reconciler.reconcile`.

- create/update(spec)/resume: reconcile now; a temporary failure raises kopf.TemporaryError so
  kopf retries with backoff.
- a per-object poller (a kopf daemon, i.e. a timer whose interval is the object's own
  `spec.model.pollInterval`): re-resolves tracked labels (rolling out a moved label), repairs
  drifted or deleted children, and keeps retrying failures at that slower pace.
- owned Deployment changes wake the poller at once, so readiness reaches the status promptly.

Run with `scoring-operator` (see __main__) or `kopf run -m scoring_operator.handlers` with
`SCORING_OPERATOR_*` env vars.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from scoring_operator import config as cfg
from scoring_operator import metrics
from scoring_operator import spec as api
from scoring_operator.builders import meta
from scoring_operator.kube import Kube
from scoring_operator.reconcile import Reconciler
from scoring_operator.resolver import Resolver

FINALIZER = f"{api.GROUP}/operator"
#: Coalesce bursts of Deployment events (a rollout produces several) into one reconcile.
WAKE_DEBOUNCE = 0.5
MIN_RETRY = 1.0


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


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Configure kopf for least privilege, and build the reconciler once per process."""
    config = cfg.current()
    settings.peering.standalone = True  # one replica; no kopf.dev peering objects or RBAC for them
    settings.scanning.disabled = True  # no cluster-wide CRD/namespace watching needed
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.CRITICAL  # Events are posted deliberately, on status transitions
    settings.execution.max_workers = 4
    metrics.serve(config.metrics_port, config.bind_address)  # also under plain `kopf run`
    kube = Kube()
    resolver = Resolver(config.local_registry_root, timeout=config.registry_timeout)
    memo.reconciler = Reconciler(config, kube, resolver, _post_event)
    logger.info(
        "scoring-operator ready: namespaces=%s local registry=%s",
        ",".join(config.namespaces) or "(all)", config.local_registry_root or "(none)",
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    rec = getattr(memo, "reconciler", None)
    if rec is not None:
        await rec.kube.close()


@kopf.on.resume(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.create(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.update(api.GROUP, api.VERSION, api.PLURAL, field="spec")
async def reconcile(body: kopf.Body, memo: kopf.Memo, reason: str, retry: int, **_: Any) -> None:
    """Reconcile on creation, on any spec change, and once for every object when the operator starts."""
    result = await _reconciler(memo).reconcile(body, refresh=True, trigger=str(reason))
    if result.retry and result.failure is not None:
        delay = min(_poll_interval(body), MIN_RETRY * 2 ** min(retry, 6))
        raise kopf.TemporaryError(f"{result.failure.reason}: {result.failure.message}", delay=delay)


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, id="poll", cancellation_timeout=10.0)
async def poll(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Per-object timer: every spec.model.pollInterval (or when woken), reconcile the live object."""
    rec = _reconciler(memo)
    key = (str(body.metadata.namespace), str(body.metadata.name))
    wake = rec.wakeup(key)
    failures = 0
    try:
        while not stopped:
            interval = _poll_interval(body)
            delay = min(interval, MIN_RETRY * 2**failures) if failures else interval
            woken = await _wait(wake, stopped, delay)
            if stopped:
                break
            if woken:
                await asyncio.sleep(WAKE_DEBOUNCE)
                wake.clear()
            if body.metadata.get("deletionTimestamp"):
                break
            result = await rec.reconcile(body, refresh=not woken, trigger="wake" if woken else "poll")
            failures = min(failures + 1, 10) if result.retry else 0
    finally:
        if body.metadata.get("deletionTimestamp"):
            rec.forget(key)


async def _wait(wake: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> bool:
    """Sleep up to `timeout`; True when woken by `wake`, False on timeout or stop."""
    waiters = {
        asyncio.ensure_future(wake.wait()),
        asyncio.ensure_future(stopped.wait(timeout)),
    }
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return wake.is_set()


@kopf.on.event("apps", "v1", "deployments", labels=meta.MANAGED_SELECTOR)
async def deployment_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """An owned Deployment changed or vanished: let its ScoringModel's poller look now."""
    owner = meta.controller_of(body)
    rec = getattr(memo, "reconciler", None)
    if owner is not None and rec is not None:
        rec.wake(owner)


__all__ = ["cleanup", "deployment_changed", "poll", "reconcile", "startup"]
