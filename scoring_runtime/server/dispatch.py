"""How jobs reach the model: straight to a thread, or through a batcher.

The server only sees the `Dispatcher` protocol. `make_dispatcher` picks the implementation from
the settings (or, where they leave it unset, the flavour's default: `flavours.batching_for`):
`DirectDispatcher` (one `predict([job])` per request, in the thread pool) when the batch size is 1,
otherwise the adaptive batcher of `scoring_runtime.batching`.

A dispatcher that cannot take more work raises `QueueFull`; the server answers it at once with
`503 Service Unavailable` and a `Retry-After` header (a load balancer or client then retries on
another replica), instead of letting requests queue until they time out.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from scoring_runtime.batching import QueueFull
from scoring_runtime.flavours import batching_for
from scoring_runtime.flavours.base import Job, Scorer
from scoring_runtime.settings import RuntimeSettings

__all__ = ["DirectDispatcher", "Dispatcher", "QueueFull", "make_dispatcher"]


class Dispatcher(Protocol):
    """Gets jobs scored. `submit` may be called concurrently from many requests."""

    async def start(self) -> None:
        """Called once in the app's lifespan, after the model is loaded, before any submit."""

    async def submit(self, job: Job) -> Any:
        """Score one job; returns its result (what `Scorer.predict` returned for it) or raises."""

    async def stop(self) -> None:
        """Called once at shutdown; finish or fail the jobs in flight."""


class DirectDispatcher:
    """No batching: each job is one `predict([job])` call in the executor."""

    def __init__(self, scorer: Scorer, executor: Executor | None) -> None:
        self.scorer = scorer
        self.executor = executor

    async def start(self) -> None:
        return None

    def _one(self, job: Job) -> Any:
        results = self.scorer.predict([job])
        if len(results) != 1:
            raise RuntimeError(f"{type(self.scorer).__name__}.predict returned {len(results)} results for 1 job")
        return results[0]

    async def submit(self, job: Job) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._one, job)

    async def stop(self) -> None:
        return None


def make_dispatcher(
    scorer: Scorer,
    settings: RuntimeSettings,
    executor: Executor | None,
    registry: CollectorRegistry | None = None,
) -> Dispatcher:
    """The dispatcher the settings (else the flavour) ask for: the adaptive batcher for batches > 1 row.

    `executor` runs direct model calls; the batcher uses its own single inference thread.
    `registry` receives the batcher's metrics (the server's registry).
    """
    batching = batching_for(scorer, settings)
    if batching.max_batch_size > 1:
        from scoring_runtime.batching import AdaptiveBatcher, BatchingConfig, BatchingMetrics

        config = BatchingConfig(
            max_batch_rows=batching.max_batch_size,
            max_delay_s=batching.max_batch_delay_ms / 1000.0,
            inline_max_rows=batching.inline_max_rows,
            max_queue_rows=settings.max_queue_rows,
        )
        metrics = BatchingMetrics(registry=registry) if registry is not None else None
        batcher: AdaptiveBatcher[Job, Any] = AdaptiveBatcher(scorer.predict, config, metrics)
        return batcher
    return DirectDispatcher(scorer, executor)
