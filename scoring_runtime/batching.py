"""Adaptive batching: many concurrent requests, one model call.

A model (a GPU especially, a CPU with vectorised kernels too) scores 16 rows in much less than 16
times the cost of one. `AdaptiveBatcher` queues requests and hands them to the model in groups:

- the batch closes when it holds `max_batch_rows` rows (rows, not requests: a request with 8
  images counts 8) or `max_delay_s` after its *first* request was queued, whichever comes first;
- while the model is busy, new requests queue up and form the next batch, so batches grow with
  load; when the model is idle, a request waits for company (up to `max_delay_s`) only under
  concurrent load (recent requests arrived while others were queued or running, and the model has
  not sat idle with nothing arriving for longer than `max_delay_s`): a lone client is never held;
- closed-loop clients (each sends its next request when it has its answer; the batcher sees them come
  back right after a batch ends): the next batch goes as soon as it holds as many rows as were in the
  system when the last one ended, instead of waiting `max_delay_s` for rows no client can send, and a
  just-freed model may wait a little (half its last call, at most `max_delay_s`, counted again from
  when a batch's answers are written) for the clients it has just answered, so they are not split
  into cohorts taking turns with half batches
  (`AdaptiveBatcher._batch_done`); arrivals that do not follow answers (open loop) mostly keep the
  plain rule (on one busy core they partly look like returns: docs/benchmarks.md has the cost);
- a request with more rows than `max_batch_rows` is never split: it runs alone, as one batch;
- requests are taken in arrival order (a big request is never overtaken forever by small ones);
- the queue is bounded (`max_queue_rows`): when full, `submit` raises `QueueFull` at once, so the
  server can answer 503 fast instead of letting latency pile up;
- the model runs on one dedicated thread (one model call at a time), except that a lone request of
  at most `inline_max_rows` rows (no concurrent load in sight, nothing queued) may run on the event
  loop itself: for a cheap model the two thread hand-offs (to the inference thread and back) cost
  a lone client more than the model call, above all on a busy node where each wake-up waits for a
  core; under load the thread keeps the loop free to take in the requests that form the next batch.
  When the model is idle such a request is scored straight from `submit` (no queue entry, future or
  collector turn), after one turn of the loop in which requests read together with it queue behind
  it and turn it into a batch;
- an exception in the model fails the requests of that batch only, and when the batch held
  several requests each is retried alone, so only the request that causes it fails;
- `stop()` fails queued requests with `BatcherClosed` and lets the running batch finish (one
  that outlasts the timeout is abandoned and its requests fail with `BatcherClosed`).

The batcher does not look inside requests: `predict(jobs)` gets the jobs of a batch and must return
one result per job, in order (the flavour concatenates and splits rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Gauge, Histogram

log = logging.getLogger(__name__)

#: rows per model call: powers of two up to 1024 (covers CPU and GPU batch sizes)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: seconds a request waited in the queue before its batch started
_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HasRows(Protocol):
    """What the batcher needs from a request: how many rows (images, records) it carries."""

    @property
    def rows(self) -> int: ...


J = TypeVar("J", bound=HasRows)
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The batcher is shutting down; the request was not scored."""


class QueueFull(Exception):
    """Too many rows are waiting for the model; the server answers 503 with Retry-After.

    It lives here, below the server, because the batcher raises it; the server's dispatchers
    (scoring_runtime.server.dispatch) re-export it for their callers.
    """

    def __init__(self, message: str = "the model's queue is full", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_rows: int
    max_delay_s: float
    max_queue_rows: int
    #: a lone request up to this many rows runs on the event loop (0: never; see the module docstring)
    inline_max_rows: int = 0
    #: how long a just-freed model may wait for the clients it just answered, as a share of the batch's
    #: own duration (capped by max_delay_s); 0: never (see `AdaptiveBatcher._batch_done`)
    hold_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.max_batch_rows < 1:
            raise ValueError(f"max_batch_size must be at least 1 row, got {self.max_batch_rows}")
        if self.max_delay_s < 0:
            raise ValueError(f"max_batch_delay_ms must be >= 0, got {self.max_delay_s * 1000:g}")
        if not 0 <= self.hold_fraction <= 1:
            raise ValueError(f"hold_fraction must be between 0 and 1, got {self.hold_fraction:g}")
        if self.max_queue_rows < self.max_batch_rows:
            raise ValueError(
                f"max_queue_rows ({self.max_queue_rows}) must be at least max_batch_size ({self.max_batch_rows}), "
                "or a full batch could never be queued"
            )


class BatchingMetrics:
    """Prometheus metrics of one batcher: batch sizes, queue depth, time spent queued."""

    def __init__(self, registry: CollectorRegistry | None, prefix: str = "scoring") -> None:
        self.batch_rows = Histogram(
            f"{prefix}_batch_rows", "Rows per model call (adaptive batching)", buckets=_ROW_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            f"{prefix}_batch_requests", "Requests per model call (adaptive batching)", buckets=_ROW_BUCKETS,
            registry=registry,
        )
        self.queue_rows = Gauge(
            f"{prefix}_batch_queue_rows", "Rows waiting for a model call", registry=registry,
            multiprocess_mode="livesum",  # several worker processes: the rows waiting in all of them
        )
        self.queue_wait = Histogram(
            f"{prefix}_batch_queue_wait_seconds", "Time a request waited before its batch started",
            buckets=_WAIT_BUCKETS, registry=registry,
        )
        # the model's own time, apart from queueing: with scoring_model_seconds (queue + model per request)
        # it says whether latency is spent waiting or computing
        self.batch_seconds = Histogram(
            f"{prefix}_batch_seconds", "Time of one model call (one batch), queueing excluded",
            buckets=_WAIT_BUCKETS, registry=registry,
        )


@dataclass(eq=False)
class _Queued(Generic[J, R]):
    job: J
    rows: int
    enqueued: float
    future: asyncio.Future[R] = field(repr=False)


class AdaptiveBatcher(Generic[J, R]):
    """Groups concurrent `submit(job)` calls into `predict(jobs)` calls; see the module docstring."""

    def __init__(
        self,
        predict: Callable[[list[J]], Sequence[R]],
        config: BatchingConfig,
        metrics: BatchingMetrics | None = None,
        thread_name: str = "inference",
    ) -> None:
        self._predict = predict
        self.config = config
        self._metrics = metrics
        self._thread_name = thread_name
        self._queue: deque[_Queued[J, R]] = deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._running = False
        self._lone = False  # a lone request is taking its turn before running inline (see submit)
        # Is another request likely within max_delay? Only if requests have recently been arriving
        # while others were still queued or running (real concurrency), and not after a quiet spell.
        self._last_event: float | None = None  # the last arrival or batch end
        self._overlap = 0.0  # moving share of arrivals that found others queued or running
        self._wait_ok = False
        # Closed-loop clients send their next request right after an answer: while they are seen to come
        # back (_return_share), the next batch waits for as many rows as were in the system lately (_peak),
        # no more, and may wait for them past max_delay, until _hold_until (see _batch_done).
        self._peak = 0.0  # rows in the system at a batch's end (its own plus those queued), decaying
        self._expect_returns = False
        self._hold_until = 0.0
        self._window_end = 0.0  # arrivals until then count as returns of the last batch's clients
        self._window = 0.0  # its length (from the batch's end, then again from its answers' writing)
        self._window_rows = 0  # that batch's rows
        self._returned = 0  # rows arrived within the window
        self._return_share = 0.0  # moving share of a batch's rows that came back within its window
        self._batches = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the collector task (on the running loop) and the inference thread."""
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="adaptive-batcher")
        self._task.add_done_callback(self._collector_done)

    def _collector_done(self, task: asyncio.Task[None]) -> None:
        """A collector that dies by a bug must not leave requests hanging: fail them and refuse new ones."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("batcher: collector crashed", exc_info=task.exception())
        self._closed = True
        while self._queue:
            self._fail(self._queue.popleft(), BatcherClosed("the batcher failed; see the server log"))
        self._set_queued_rows(0)

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, fail queued requests, let the running batch finish (up to `timeout`)."""
        if self._closed:
            return
        self._closed = True
        while self._queue:
            self._fail(self._queue.popleft(), BatcherClosed("the server is shutting down; retry on another replica"))
        self._set_queued_rows(0)
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning("batcher: the running batch did not finish within %.0f s; abandoning it", timeout)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    # ------------------------------------------------------------------ requests
    async def submit(self, job: J) -> R:
        """Queue `job` and wait for its result; raises `QueueFull` at once when the queue is full."""
        if self._closed:
            raise BatcherClosed("the server is shutting down; retry on another replica")
        if self._task is None or self._wakeup is None:
            raise RuntimeError("batcher not started: call `await batcher.start()` first")
        rows = max(int(job.rows), 1)
        # A request bigger than the whole queue is still let in when nothing waits, else it could never run.
        if self._queue and self._queued_rows + rows > self.config.max_queue_rows:
            raise QueueFull(
                f"request queue full ({self._queued_rows} rows waiting, limit {self.config.max_queue_rows}); "
                "retry later or add replicas"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._note_arrival(now, rows)
        if not (self._queue or self._running or self._lone) and self._inline_rows_ok(rows):
            # The model is idle and no concurrent load is in sight: score it here, without the queue, the
            # future and the collector task's turn. One turn first, marked busy: requests already read
            # in this turn of the loop then queue behind it and it joins them (a batch), instead of each
            # waiting for a model call of its own.
            self._lone = True
            try:
                await asyncio.sleep(0)
            finally:
                self._lone = False
            if self._closed:
                raise BatcherClosed("the server is shutting down; retry on another replica")
            if not (self._queue or self._running):
                return self._run_inline(job, rows, loop)
            item: _Queued[J, R] = _Queued(job, rows, now, loop.create_future())
            self._queue.appendleft(item)  # it came first
        else:
            item = _Queued(job, rows, now, loop.create_future())
            self._queue.append(item)
        self._set_queued_rows(self._queued_rows + rows)
        self._wakeup.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            # The client went away: drop the request if it has not been picked up yet.
            with contextlib.suppress(ValueError):
                self._queue.remove(item)
                self._set_queued_rows(self._queued_rows - rows)
            raise

    # ------------------------------------------------------------------ internals
    def _set_queued_rows(self, n: int) -> None:
        self._queued_rows = n
        if self._metrics:
            self._metrics.queue_rows.set(n)

    def _note_arrival(self, now: float, rows: int) -> None:
        if now <= self._window_end:
            self._returned += rows
        busy = bool(self._queue or self._running or self._lone)
        # quiet: nothing arrived and nothing ran for longer than max_delay before this request
        quiet = not busy and (self._last_event is None or now - self._last_event > self.config.max_delay_s)
        # a request finding others waiting is evidence of concurrency; one finding the model idle is
        # judged on the arrivals before it (the request that opens a batch is idle by definition)
        self._wait_ok = not quiet and (busy or self._overlap >= 0.5)
        self._overlap = 0.5 * self._overlap + (0.5 if busy else 0.0)
        self._last_event = now

    def _more_expected(self) -> bool:
        """Wait for company only under concurrent load: a lone client is never held back.

        The judgement is made once per arrival (`_note_arrival`), where the evidence is.
        """
        return self._wait_ok

    @staticmethod
    def _fail(item: _Queued[J, R], exc: BaseException) -> None:
        if not item.future.done():
            item.future.set_exception(exc)

    async def _collect(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        cfg = self.config
        while True:
            while not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # Fill the batch until it is full or its first request has waited max_delay; when the clients
            # of the last batch come back (see _batch_done), until as many rows as were in the system
            # lately are queued, or (past max_delay) the hold for them is over.
            while self._queue and not self._closed:
                deadline, target = self._queue[0].enqueued + cfg.max_delay_s, cfg.max_batch_rows
                if self._expect_returns:
                    deadline, target = max(deadline, self._hold_until), max(1, min(target, math.ceil(self._peak)))
                remaining = deadline - loop.time()
                if self._queued_rows >= target or remaining <= 0 or not self._more_expected():
                    break
                self._wakeup.clear()
                # a timer that sets the event, not asyncio.wait_for: that wraps each wait in a new Task,
                # and this wait repeats for every request arriving while a batch fills
                timer = loop.call_later(remaining, self._wakeup.set)
                try:
                    await self._wakeup.wait()
                finally:
                    timer.cancel()
            self._hold_until, self._expect_returns = 0.0, False
            batch = self._take()
            if batch:
                await self._run(batch, loop)

    def _take(self) -> list[_Queued[J, R]]:
        """Pop requests in arrival order while they fit; the first one always goes (even if oversized)."""
        batch: list[_Queued[J, R]] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if batch and rows + head.rows > self.config.max_batch_rows:
                break
            self._queue.popleft()
            self._set_queued_rows(self._queued_rows - head.rows)
            if head.future.done():  # cancelled by its caller meanwhile
                continue
            batch.append(head)
            rows += head.rows
        return batch

    async def _run(self, batch: list[_Queued[J, R]], loop: asyncio.AbstractEventLoop) -> None:
        assert self._executor is not None
        started = loop.time()
        rows = sum(i.rows for i in batch)
        if self._metrics:
            self._metrics.batch_rows.observe(rows)
            self._metrics.batch_requests.observe(len(batch))
            for i in batch:
                self._metrics.queue_wait.observe(started - i.enqueued)
        t0 = time.perf_counter()
        self._running = True
        try:
            try:
                results = await self._call(batch, loop)
            except Exception as e:
                if len(batch) == 1:
                    self._fail(batch[0], e)
                    return
                # One request's bad input must not fail its neighbours: find the offender by
                # running each request alone (only after a failure, so the normal path is unchanged).
                log.warning("batch of %d requests failed (%s: %s); retrying each request alone",
                            len(batch), type(e).__name__, e)
                for i in batch:
                    if i.future.done():
                        continue
                    try:
                        (r,) = await self._call([i], loop)
                    except Exception as alone:
                        self._fail(i, alone)
                    else:
                        self._succeed(i, r)
                return
        except asyncio.CancelledError:
            # stop() gave up waiting for this batch: its callers must not wait forever
            for i in batch:
                self._fail(i, BatcherClosed("the server shut down before the model finished; retry on another replica"))
            raise
        finally:
            elapsed = self._call_ended(rows, t0, loop)
        if self._metrics:
            self._metrics.batch_seconds.observe(elapsed)
        log.debug("batch: %d requests in %.1f ms", len(batch), elapsed * 1000)
        for i, r in zip(batch, results, strict=True):
            self._succeed(i, r)
        if len(batch) > 1:  # after the steps of the requests just woken (scheduled first): answers written
            loop.call_soon(self._answers_sent, self._batches, loop)

    def _batch_done(self, rows: int, elapsed: float, now: float) -> None:
        """After a model call: how the next batch is filled.

        Closed-loop clients (each sends its next request when it has its answer) come back a network
        round trip after their answers. Two ways to waste the model's time follow, both measured (see
        docs/benchmarks.md): a batch whose requests were all answered waits for company up to max_delay
        although every client it could get is already queued; and the requests queued during a call go
        at once while the clients just answered queue behind them, so the clients split into cohorts that
        take turns with half batches, each paying the model's fixed cost per call. So, while at least
        half of a batch's rows have been coming back within `hold_fraction` of its duration (at most
        max_delay) after it ended, on average: the next batch goes as soon as it holds as many rows as
        were in the system at the end of this one (its rows plus those queued), and under concurrent load
        (`_wait_ok`: never for a lone client) it may wait for them that long past max_delay. Arrivals
        that do not follow answers (open-loop traffic) keep the plain rule, except that on one core,
        where the event loop reads what arrived during a call only once the call frees the GIL, some of
        them look like returns; every 16th batch tries the closed-loop rule anyway, to notice when
        clients start coming back.
        """
        cfg = self.config
        if self._window_rows:
            share = min(1.0, self._returned / self._window_rows)
            self._return_share = 0.5 * self._return_share + 0.5 * share
        self._batches += 1
        self._peak = max(self._peak - 1, rows + self._queued_rows)
        window = self._window = min(cfg.max_delay_s, cfg.hold_fraction * elapsed)
        self._window_end = now + window
        self._window_rows, self._returned = rows, 0
        self._expect_returns = window > 0 and (self._return_share >= 0.5 or self._batches % 16 == 0)
        self._hold_until = self._window_end if self._expect_returns and self._wait_ok and not self._closed else 0.0

    def _answers_sent(self, batch_no: int, loop: asyncio.AbstractEventLoop) -> None:
        """Start the return window (and the hold for the returns) again when the batch's answers are written.

        A client can only come back after it has its answer, and on one core the loop writes a batch's
        answers one after the other after the call ends (each a render and a send): for a cheap model that
        takes longer than the window itself, so measured from the call's end, the window closed before a
        client could return, and closed-loop clients went unrecognised (4 clients then formed batches
        that waited max_delay for company). Only for batches of several requests: one answer is written
        at once, and the requests that arrived (open loop) while the loop was busy with a batch of one
        are read right after it, so a later window would count more of them as returns (measured: at
        800 requests/s, p50 0.87 -> 1.60 ms with every batch's window moved).
        """
        if batch_no != self._batches:  # a later batch has ended meanwhile: its own window counts
            return
        end = loop.time() + self._window
        if end > self._window_end:
            self._window_end = end
            if self._hold_until:  # still holding the next batch for these returns (not taken yet)
                self._hold_until = end

    async def _call(self, batch: list[_Queued[J, R]], loop: asyncio.AbstractEventLoop) -> Sequence[R]:
        """One model call on the inference thread; one result per job or an error."""
        assert self._executor is not None
        jobs = [i.job for i in batch]
        if self._inline_ok(batch):
            results = self._predict(jobs)
        else:
            results = await loop.run_in_executor(self._executor, self._predict, jobs)
        if len(results) != len(batch):
            raise RuntimeError(f"the model returned {len(results)} results for a batch of {len(batch)} requests")
        return results

    def _inline_ok(self, batch: list[_Queued[J, R]]) -> bool:
        """Run this batch on the loop? Only one small request, alone: nothing queued behind it and
        no sign of concurrent clients (whose requests the loop must keep reading meanwhile)."""
        return len(batch) == 1 and not self._queue and self._inline_rows_ok(batch[0].rows)

    def _inline_rows_ok(self, rows: int) -> bool:
        limit = self.config.inline_max_rows
        return bool(limit) and rows <= limit and not self._wait_ok

    def _run_inline(self, job: J, rows: int, loop: asyncio.AbstractEventLoop) -> R:
        """`submit`'s shortcut for a lone request on an idle model: the model call, metrics and bookkeeping
        of `_run` for a batch of one (nothing waited in the queue), on the request's own turn."""
        if self._metrics:
            self._metrics.batch_rows.observe(rows)
            self._metrics.batch_requests.observe(1)
            self._metrics.queue_wait.observe(0.0)
        t0 = time.perf_counter()
        self._running = True
        try:
            results = self._predict([job])
            if len(results) != 1:
                raise RuntimeError(f"the model returned {len(results)} results for a batch of 1 requests")
        finally:
            elapsed = self._call_ended(rows, t0, loop)
        if self._metrics:
            self._metrics.batch_seconds.observe(elapsed)
        return results[0]

    def _call_ended(self, rows: int, t0: float, loop: asyncio.AbstractEventLoop) -> float:
        """After a model call started at `t0` (perf_counter), whether it failed or not: the model is
        free, and the next batch's rule is set from this one (`_batch_done`). The call's seconds."""
        self._running = False
        elapsed = time.perf_counter() - t0
        self._last_event = loop.time()
        self._batch_done(rows, elapsed, self._last_event)
        return elapsed

    @staticmethod
    def _succeed(item: _Queued[J, R], result: R) -> None:
        if not item.future.done():
            item.future.set_result(result)

