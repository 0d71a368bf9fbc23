"""AdaptiveBatcher behaviour: correctness under concurrency, row accounting, delay, back-pressure, failures.

The model here is a tiny deterministic function (row -> 3 * row + 1) applied to the *concatenated*
batch and split back by rows, exactly like a real flavour does, so any mix-up of rows between
requests shows up as a wrong answer.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from scoring_runtime.batching import AdaptiveBatcher, BatcherClosed, BatchingConfig, BatchingMetrics, QueueFull
from scoring_runtime.flavours.base import Job

pytestmark = pytest.mark.timeout(30)


class RowModel:
    """predict(jobs): concatenate rows, f(x) = 3x + 1, split per job; records every batch it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []  # rows per job, per batch
        self.tags: list[list[Any]] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def predict(self, jobs: list[Job]) -> list[Any]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append([j.rows for j in jobs])
        self.tags.append([j.params.get("tag") for j in jobs])
        if any(j.params.get("boom") for j in jobs):
            raise ValueError("model exploded on a poisoned row")
        if self.delay_s:
            time.sleep(self.delay_s)
        x = np.concatenate([j.data for j in jobs])
        y = 3 * x + 1
        out, start = [], 0
        for j in jobs:
            out.append(y[start:start + j.rows])
            start += j.rows
        return out


def job(rows: int, base: int = 0, **params: Any) -> Job:
    return Job(rows=rows, data=np.arange(base, base + rows, dtype=np.int64), params=params)


async def started(model: RowModel, metrics: BatchingMetrics | None = None, **cfg: Any) -> AdaptiveBatcher[Job, Any]:
    b: AdaptiveBatcher[Job, Any] = AdaptiveBatcher(model.predict, BatchingConfig(**cfg), metrics)
    await b.start()
    return b


async def test_concurrent_mixed_requests_each_get_their_own_rows() -> None:
    model = RowModel(delay_s=0.002)
    b = await started(model, max_batch_rows=16, max_delay_s=0.005, max_queue_rows=10_000)
    rng = random.Random(7)
    sizes = [rng.randint(1, 7) for _ in range(300)]
    sizes[10] = 40  # one request bigger than a whole batch: served alone
    jobs = [job(n, base=i * 1000) for i, n in enumerate(sizes)]

    async def one(j: Job) -> Any:
        await asyncio.sleep(rng.random() * 0.05)  # staggered arrivals
        return await b.submit(j)

    results = await asyncio.gather(*(one(j) for j in jobs))
    await b.stop()
    for j, r in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(r, 3 * j.data + 1)
    assert sum(sum(batch) for batch in model.batches) == sum(sizes)
    assert any(len(batch) > 1 for batch in model.batches), "concurrent requests were never batched"
    for batch in model.batches:
        assert sum(batch) <= 16 or batch == [40], f"batch over max_batch_size: {batch}"
    assert [40] in model.batches


async def test_batches_count_rows_not_requests_and_close_when_full() -> None:
    model = RowModel()
    model.gate.clear()
    # A long delay: batches can only close by size, so timing shows they did.
    b = await started(model, max_batch_rows=8, max_delay_s=5.0, max_queue_rows=64)
    first = asyncio.ensure_future(b.submit(job(8, tag="first")))  # full at once: starts immediately
    while not model.entered.is_set():
        await asyncio.sleep(0.001)
    t0 = time.monotonic()
    rest = [asyncio.ensure_future(b.submit(job(4, base=10 * i, tag=i))) for i in range(4)]
    await asyncio.sleep(0.01)
    model.gate.set()
    await asyncio.gather(first, *rest)
    assert time.monotonic() - t0 < 2.0, "full batches waited for max_delay"
    assert model.batches == [[8], [4, 4], [4, 4]]
    assert model.tags[1:] == [[0, 1], [2, 3]], "requests were reordered"
    await b.stop()


async def test_max_delay_runs_from_the_first_queued_request() -> None:
    model = RowModel(delay_s=0.03)
    b = await started(model, max_batch_rows=64, max_delay_s=0.1, max_queue_rows=256)
    # A steady stream, one request every 10 ms, faster than the model (30 ms a call): batches must
    # close ~100 ms after their first request arrived (not when full: 64 rows would take 640 ms).
    t0 = time.monotonic()
    done_at: dict[int, float] = {}

    async def one(i: int) -> None:
        await asyncio.sleep(0.01 * i)
        await b.submit(job(1, tag=i))
        done_at[i] = time.monotonic() - t0

    await asyncio.gather(*(one(i) for i in range(40)))
    await b.stop()
    assert model.tags[0] == [0], "the very first request had no reason to wait"
    big = [t for t in model.tags if len(t) >= 4]
    assert big, f"a steady stream was not batched: {model.tags}"
    for tags in big[:-1]:  # the last batch may close early: the stream ended
        held = done_at[tags[0]] - 0.01 * tags[0]
        assert 0.08 <= held < 0.1 + 0.03 + 0.15, f"batch {tags}: its first request was held {held:.3f}s"
    assert [i for t in model.tags for i in t] == list(range(40)), "arrival order was not kept"


async def test_closed_loop_clients_on_a_slow_model_fill_whole_batches() -> None:
    # 4 clients, each sending its next request a few ms after its previous answer, to a model that
    # takes 50 ms per call whatever the batch size. With max_delay above one model call, waiting for
    # the stragglers must win: no lasting split into a small and a large batch taking turns.
    model = RowModel(delay_s=0.05)
    b = await started(model, max_batch_rows=4, max_delay_s=0.08, max_queue_rows=64)
    rng = random.Random(3)

    async def client(n: int) -> None:
        for i in range(8):
            await asyncio.sleep(rng.random() * 0.005)
            r = await b.submit(job(1, base=100 * n + i))
            assert int(r[0]) == 3 * (100 * n + i) + 1

    await asyncio.gather(*(client(n) for n in range(4)))
    await b.stop()
    sizes = [sum(batch) for batch in model.batches]
    assert sum(sizes[2:]) / len(sizes[2:]) >= 3.5, f"batches stayed small: {sizes}"


async def test_a_lone_request_after_a_quiet_spell_is_not_held() -> None:
    model = RowModel()
    b = await started(model, max_batch_rows=64, max_delay_s=0.5, max_queue_rows=256)
    await asyncio.gather(*(b.submit(job(1)) for _ in range(8)))  # a burst teaches it requests come in groups
    await asyncio.sleep(0.6)  # then silence, longer than max_delay
    t0 = time.monotonic()
    await b.submit(job(1))
    await b.submit(job(1))  # closed loop, one client: each waits for the previous answer
    elapsed = time.monotonic() - t0
    assert elapsed < 0.5, f"lone requests were held for company that never came ({elapsed:.3f}s)"
    await b.stop()


async def four_closed_loop_clients(b: AdaptiveBatcher[Any, Any], rounds: int, writing_s: float = 0.0) -> float:
    """4 clients, each sending its next 1-row request once it has its answer (each answer checked);
    `writing_s` of the loop's own time per answer (rendering and writing it: nobody else runs). Seconds taken."""

    async def client(n: int) -> None:
        for i in range(rounds):
            r = await b.submit(job(1, base=100 * n + i))
            assert int(r[0]) == 3 * (100 * n + i) + 1
            if writing_s:
                time.sleep(writing_s)
            await asyncio.sleep(0.001)  # the network round trip before the next request

    t0 = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(4)))
    return time.monotonic() - t0


@pytest.mark.parametrize("writing_s", [0.0, 0.004], ids=["answers-written-at-once", "answers-written-4ms-each"])
async def test_closed_loop_clients_all_back_do_not_wait_for_rows_that_cannot_come(writing_s: float) -> None:
    """4 closed-loop clients, batches of up to 32 rows, a long max_delay. Once the batcher has seen the
    clients come back after their answers, a batch goes as soon as all 4 are queued again, instead of
    waiting max_delay for 28 more rows that no client can send.

    answers-written-4ms-each: on one core the loop writes a batch's answers one after the other once the
    call has ended (4 ms each here, on the loop), so the last client can only come back ~16 ms after the
    call's end, past a return window of half the call (5 ms). Counted from the call's end, the clients
    never look closed-loop and every batch waits max_delay for company; counted from when the answers are
    written, they do.
    """
    model = RowModel(delay_s=0.01)
    b = await started(model, max_batch_rows=32, max_delay_s=0.2, max_queue_rows=256)
    rounds = 12
    elapsed = await four_closed_loop_clients(b, rounds, writing_s=writing_s)
    await b.stop()
    full = [sum(batch) for batch in model.batches]
    assert full.count(4) >= rounds - 3, f"the clients were not batched together: {full}"
    # waiting max_delay for every batch takes at least rounds x 0.2 s = 2.4 s however loaded the machine;
    # here ~0.15 s of model (~0.35 s with the writing), and a wait or two while it learns (room for a busy
    # machine)
    assert elapsed < 1.8, f"batches waited for rows that could not come ({elapsed:.2f} s, batches {full})"


async def test_clients_split_into_cohorts_are_joined_again() -> None:
    # 8 closed-loop clients in two cohorts: 4 arrive while the model scores the other 4. Without a hold,
    # the second cohort has waited past max_delay when the model frees and goes alone, the first cohort
    # comes back behind it, and the two take turns with half batches for ever. Holding the freed model for
    # the clients it just answered (a fraction of its call, capped by max_delay) joins them.
    model = RowModel(delay_s=0.02)
    b = await started(model, max_batch_rows=16, max_delay_s=0.01, max_queue_rows=256)

    async def client(n: int) -> None:
        if n >= 4:
            await asyncio.sleep(0.015)  # the second cohort, during the first cohort's model call
        for i in range(12):
            r = await b.submit(job(1, base=100 * n + i))
            assert int(r[0]) == 3 * (100 * n + i) + 1
            await asyncio.sleep(0.002)

    await asyncio.gather(*(client(n) for n in range(8)))
    await b.stop()
    sizes = [sum(batch) for batch in model.batches]
    assert sizes[:2] == [4, 4], f"the test did not start with two cohorts: {sizes}"
    assert sizes[-6:-1].count(8) >= 4, f"the cohorts kept taking turns: {sizes}"


async def test_a_hold_never_outlasts_max_delay_past_the_model_call() -> None:
    # the hold for returning clients is bounded: clients that come back late do not stall the others
    # for longer than hold_fraction of a model call, and never longer than max_delay
    cfg = BatchingConfig(max_batch_rows=16, max_delay_s=0.01, max_queue_rows=64)
    assert cfg.hold_fraction == 0.5
    with pytest.raises(ValueError, match="hold_fraction"):
        BatchingConfig(max_batch_rows=16, max_delay_s=0.01, max_queue_rows=64, hold_fraction=2)
    model = RowModel(delay_s=0.02)
    b = await started(model, max_batch_rows=16, max_delay_s=0.01, max_queue_rows=256)

    prompt_done = 0.0

    async def client(n: int, late: float) -> None:
        nonlocal prompt_done
        for i in range(10):
            await b.submit(job(1, base=100 * n + i))
            await asyncio.sleep(late)
        prompt_done = max(prompt_done, time.monotonic()) if late < 0.01 else prompt_done

    started_at: list[float] = []
    original = model.predict

    def timed(jobs: list[Job]) -> list[Any]:
        started_at.append(time.monotonic())
        return original(jobs)

    b._predict = timed
    # 4 prompt clients teach it to hold; one client always comes back 60 ms late
    await asyncio.gather(*(client(n, 0.001) for n in range(4)), client(9, 0.06))
    await b.stop()
    busy = [t for t in started_at if t < prompt_done]  # while the prompt clients keep the model busy
    gaps = [t1 - t0 for t0, t1 in itertools.pairwise(busy)]
    # a call takes 20 ms; the next one starts at most max_delay (10 ms) after it ended, plus slack
    assert len(gaps) >= 5 and max(gaps) < 0.02 + 0.01 + 0.015, f"a hold outlasted its bound: {gaps}"


async def test_full_queue_fails_fast_with_queue_full() -> None:
    model = RowModel()
    model.gate.clear()
    b = await started(model, max_batch_rows=4, max_delay_s=0.0, max_queue_rows=8)
    running = asyncio.ensure_future(b.submit(job(4)))
    while not model.entered.is_set():
        await asyncio.sleep(0.001)
    queued = [asyncio.ensure_future(b.submit(job(4, base=100 * i))) for i in range(2)]
    await asyncio.sleep(0.01)
    assert b.queued_rows == 8
    t0 = time.monotonic()
    with pytest.raises(QueueFull, match="queue full"):
        await b.submit(job(1))
    assert time.monotonic() - t0 < 0.05, "QueueFull was not immediate"
    model.gate.set()
    results = await asyncio.gather(running, *queued)
    np.testing.assert_array_equal(results[2], 3 * np.arange(100, 104) + 1)
    assert b.queued_rows == 0
    await b.submit(job(1))  # accepted again once drained
    await b.stop()


async def test_predict_exception_fails_only_the_offending_request() -> None:
    model = RowModel()
    b = await started(model, max_batch_rows=3, max_delay_s=1.0, max_queue_rows=16)
    before = asyncio.ensure_future(b.submit(job(1, base=2, tag="before")))
    bad = asyncio.ensure_future(b.submit(job(1, boom=True, tag="bad")))
    after = asyncio.ensure_future(b.submit(job(1, base=4, tag="after")))  # same batch (3 rows: closes at once)
    done = await asyncio.gather(before, bad, after, return_exceptions=True)
    assert model.tags[0] == ["before", "bad", "after"]  # they really were one batch, which failed
    assert isinstance(done[1], ValueError) and "poisoned" in str(done[1])
    assert [int(r[0]) for r in (done[0], done[2]) if isinstance(r, np.ndarray)] == [7, 13]  # retried alone, scored
    assert sorted(t for batch in model.tags[1:] for t in batch) == ["after", "bad", "before"]
    later = await asyncio.gather(b.submit(job(1, base=5)), b.submit(job(1, base=6)))
    assert [int(r[0]) for r in later] == [16, 19]
    await b.stop()


async def test_a_failing_lone_request_is_not_retried() -> None:
    model = RowModel()
    b = await started(model, max_batch_rows=4, max_delay_s=0.0, max_queue_rows=16)
    with pytest.raises(ValueError, match="poisoned"):
        await b.submit(job(1, boom=True))
    assert len(model.batches) == 1
    await b.stop()


async def test_wrong_result_count_is_an_error_not_a_mixup() -> None:
    # always one result short: wrong for the batch, and still wrong for each request alone
    b: AdaptiveBatcher[Job, Any] = AdaptiveBatcher(lambda jobs: [0] * (len(jobs) - 1), BatchingConfig(2, 1.0, 16))
    await b.start()
    out = await asyncio.gather(b.submit(job(1)), b.submit(job(1)), return_exceptions=True)
    assert all(isinstance(e, RuntimeError) and "results for a batch of 1 requests" in str(e) for e in out), out
    await b.stop()


async def test_stop_timeout_fails_the_abandoned_batch_instead_of_hanging() -> None:
    model = RowModel()
    model.gate.clear()  # the model never finishes within stop()'s timeout
    b = await started(model, max_batch_rows=1, max_delay_s=0.0, max_queue_rows=16)
    running = asyncio.ensure_future(b.submit(job(1)))
    try:
        while not model.entered.is_set():
            await asyncio.sleep(0.001)
        await b.stop(timeout=0.05)
        with pytest.raises(BatcherClosed, match="shut down before the model finished"):
            await asyncio.wait_for(running, 5)
    finally:
        model.gate.set()  # let the inference thread end


async def test_stop_fails_queued_requests_and_finishes_the_running_batch() -> None:
    model = RowModel()
    model.gate.clear()
    b = await started(model, max_batch_rows=1, max_delay_s=0.0, max_queue_rows=16)
    running = asyncio.ensure_future(b.submit(job(1, base=7)))
    while not model.entered.is_set():
        await asyncio.sleep(0.001)
    queued = [asyncio.ensure_future(b.submit(job(1))) for _ in range(3)]
    await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(b.stop())
    await asyncio.sleep(0.01)
    for q in queued:
        assert q.done()
        assert isinstance(q.exception(), BatcherClosed)
    model.gate.set()
    await stopping
    assert int((await running)[0]) == 22
    with pytest.raises(BatcherClosed, match="shutting down"):
        await b.submit(job(1))


async def test_cancelled_request_leaves_the_queue() -> None:
    model = RowModel()
    model.gate.clear()
    b = await started(model, max_batch_rows=1, max_delay_s=0.0, max_queue_rows=16)
    running = asyncio.ensure_future(b.submit(job(1)))
    while not model.entered.is_set():
        await asyncio.sleep(0.001)
    gone = asyncio.ensure_future(b.submit(job(3)))
    await asyncio.sleep(0.01)
    assert b.queued_rows == 3
    gone.cancel()
    await asyncio.sleep(0.01)
    assert b.queued_rows == 0
    model.gate.set()
    await running
    await b.stop()
    assert model.batches == [[1]], "a cancelled request still reached the model"


async def test_metrics_record_rows_queue_wait_and_depth() -> None:
    reg = CollectorRegistry()
    model = RowModel()
    b = await started(model, BatchingMetrics(registry=reg, prefix="t"), max_batch_rows=8, max_delay_s=0.02,
                      max_queue_rows=64)
    await asyncio.gather(b.submit(job(3)), b.submit(job(5)))
    await b.stop()
    assert reg.get_sample_value("t_batch_rows_sum") == 8
    assert reg.get_sample_value("t_batch_rows_count") == 1
    assert reg.get_sample_value("t_batch_requests_sum") == 2
    assert reg.get_sample_value("t_batch_queue_wait_seconds_count") == 2
    assert reg.get_sample_value("t_batch_queue_rows") == 0


async def test_metrics_record_the_model_time_apart_from_the_queue() -> None:
    reg = CollectorRegistry()
    model = RowModel(delay_s=0.03)
    b = await started(model, BatchingMetrics(registry=reg, prefix="t"), max_batch_rows=1, max_delay_s=0.0,
                      max_queue_rows=64)
    # two one-row batches back to back: the second waits ~30 ms in the queue, but each model call takes ~30 ms
    await asyncio.gather(b.submit(job(1)), b.submit(job(1)))
    await b.stop()
    assert reg.get_sample_value("t_batch_seconds_count") == 2
    total = reg.get_sample_value("t_batch_seconds_sum")
    assert total is not None and 0.06 <= total < 0.5
    waited = reg.get_sample_value("t_batch_queue_wait_seconds_sum")
    assert waited is not None and waited >= 0.025  # the queue wait is counted there, not in the model time


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_queue_rows"):
        BatchingConfig(max_batch_rows=32, max_delay_s=0.01, max_queue_rows=8)
    with pytest.raises(ValueError, match="at least 1"):
        BatchingConfig(max_batch_rows=0, max_delay_s=0.01, max_queue_rows=8)


class ThreadRecorder(RowModel):
    """Records which thread ran each model call."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(delay_s)
        self.threads: list[str] = []

    def predict(self, jobs: list[Job]) -> list[Any]:
        self.threads.append(threading.current_thread().name)
        return super().predict(jobs)


async def test_a_lone_small_request_runs_on_the_loop_without_thread_hand_offs() -> None:
    model = ThreadRecorder()
    b = await started(model, max_batch_rows=8, max_delay_s=0.002, max_queue_rows=64, inline_max_rows=1)
    loop_thread = threading.current_thread().name
    for i in range(5):  # one client, closed loop
        r = await b.submit(job(1, base=i))
        assert int(r[0]) == 3 * i + 1
    assert model.threads == [loop_thread] * 5
    r = await b.submit(job(2, base=7))  # more rows than inline_max_rows: the inference thread
    assert [int(x) for x in r] == [22, 25]
    assert model.threads[-1].startswith("inference")
    await b.stop()


async def test_concurrent_requests_still_batch_on_the_inference_thread_with_inline_on() -> None:
    model = ThreadRecorder(delay_s=0.01)
    b = await started(model, max_batch_rows=8, max_delay_s=0.005, max_queue_rows=64, inline_max_rows=1)
    loop_thread = threading.current_thread().name

    async def client(n: int) -> None:
        for i in range(6):
            r = await b.submit(job(1, base=10 * n + i))
            assert int(r[0]) == 3 * (10 * n + i) + 1

    await asyncio.gather(*(client(n) for n in range(6)))
    await b.stop()
    assert max(sum(x) for x in model.batches) > 1, "no batch formed under load"
    multi = [t for t, batch in zip(model.threads, model.batches, strict=True) if sum(batch) > 1]
    assert multi and loop_thread not in multi, "a batch of several requests ran on the event loop"


async def test_a_lone_request_scored_without_the_queue_is_still_measured() -> None:
    # the lone request's shortcut (no queue, no collector) records the same metrics as a batch of one
    reg = CollectorRegistry()
    model = ThreadRecorder()
    b = await started(model, BatchingMetrics(registry=reg, prefix="t"), max_batch_rows=8, max_delay_s=0.002,
                      max_queue_rows=64, inline_max_rows=1)
    for i in range(3):
        assert int((await b.submit(job(1, base=i)))[0]) == 3 * i + 1
    await b.stop()
    assert model.threads == [threading.current_thread().name] * 3
    assert reg.get_sample_value("t_batch_rows_count") == 3
    assert reg.get_sample_value("t_batch_requests_sum") == 3
    assert reg.get_sample_value("t_batch_queue_wait_seconds_count") == 3
    assert reg.get_sample_value("t_batch_queue_wait_seconds_sum") == 0
    assert reg.get_sample_value("t_batch_seconds_count") == 3
    assert reg.get_sample_value("t_batch_queue_rows") == 0


async def test_requests_read_in_the_same_turn_as_a_lone_one_are_batched_with_it() -> None:
    # the lone request takes one turn of the loop before running inline: requests whose handlers run in
    # that turn queue behind it, and all go together in one batch (first come first), on the thread
    model = ThreadRecorder()
    b = await started(model, max_batch_rows=8, max_delay_s=0.05, max_queue_rows=64, inline_max_rows=1)
    # three request handlers ready in the same turn (as the server starts them for requests read together)
    tasks = [asyncio.ensure_future(b.submit(job(1, base=n, tag=t))) for n, t in ((1, "a"), (2, "b"), (3, "c"))]
    out = await asyncio.gather(*tasks)
    await b.stop()
    assert [int(r[0]) for r in out] == [4, 7, 10]
    assert model.tags == [["a", "b", "c"]], f"not one batch in arrival order: {model.tags}"
    assert model.threads[0].startswith("inference")


async def test_a_lone_request_taking_its_turn_during_stop_is_refused() -> None:
    model = RowModel()
    b = await started(model, max_batch_rows=8, max_delay_s=0.002, max_queue_rows=64, inline_max_rows=1)
    lone = asyncio.ensure_future(b.submit(job(1)))
    await asyncio.sleep(0)
    await b.stop()
    with pytest.raises(BatcherClosed):
        await lone
    assert model.batches == []


def test_inline_is_off_by_default() -> None:
    assert BatchingConfig(max_batch_rows=4, max_delay_s=0.001, max_queue_rows=8).inline_max_rows == 0
