"""Micro-batcher behaviour: batching, thread pool, overload, cancellation, error isolation, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from compressors.llmlingua2.serving import (
    BatcherClosed,
    BatcherConfig,
    CompressorOverloaded,
    MicroBatcher,
)


class Recorder:
    """A batch function that doubles numbers and records each batch and the thread it ran on."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self.delay = delay
        self.gate = gate
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                assert self.gate.wait(5), "gate never opened"
            if self.delay:
                time.sleep(self.delay)
            self.threads.add(threading.get_ident())
            self.batches.append(list(items))
            if any(i < 0 for i in items):
                raise ValueError(f"negative item in {list(items)}")
            return [ValueError("item 13 is unlucky") if i == 13 else 2 * i for i in items]
        finally:
            with self._lock:
                self.running -= 1


async def test_concurrent_requests_share_batches() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, BatcherConfig(max_batch_size=8, max_wait_ms=50))
    items = list(range(20, 40))
    out = await asyncio.gather(*(b.submit(i) for i in items))
    await b.aclose()
    assert out == [2 * i for i in items]
    assert sorted(x for batch in rec.batches for x in batch) == items
    assert max(len(batch) for batch in rec.batches) == 8
    assert len(rec.batches) == 3  # 8 + 8 + 4
    assert b.stats.batches == 3 and b.stats.largest_batch == 8 and b.stats.requests == 20


async def test_lone_request_waits_at_most_max_wait() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, BatcherConfig(max_batch_size=64, max_wait_ms=30))
    t0 = time.perf_counter()
    assert await b.submit(4) == 8
    elapsed = time.perf_counter() - t0
    await b.aclose()
    assert 0.025 <= elapsed < 1.0
    assert rec.batches == [[4]]


async def test_inference_runs_off_the_event_loop() -> None:
    rec = Recorder(delay=0.3)
    b: MicroBatcher[int, int] = MicroBatcher(rec, BatcherConfig(max_wait_ms=0))
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    hb = asyncio.create_task(heartbeat())
    assert await b.submit(1) == 2
    hb.cancel()
    await b.aclose()
    assert threading.get_ident() not in rec.threads
    assert ticks >= 10  # the loop kept running while the batch slept 0.3 s in a worker thread


async def test_workers_run_batches_in_parallel() -> None:
    rec = Recorder(delay=0.2)
    b: MicroBatcher[int, int] = MicroBatcher(rec, BatcherConfig(max_batch_size=1, max_wait_ms=0, workers=3))
    t0 = time.perf_counter()
    out = await asyncio.gather(*(b.submit(i) for i in range(3)))
    elapsed = time.perf_counter() - t0
    await b.aclose()
    assert out == [0, 2, 4]
    assert rec.max_running == 3
    assert elapsed < 0.5


async def test_requests_arriving_while_busy_form_the_next_batch() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b: MicroBatcher[int, int] = MicroBatcher(rec, BatcherConfig(max_batch_size=16, max_wait_ms=1))
    first = asyncio.create_task(b.submit(0))
    await asyncio.sleep(0.05)  # batch [0] is now blocked in the worker
    rest = [asyncio.create_task(b.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.05)
    gate.set()
    assert await first == 0
    assert [await t for t in rest] == [2, 4, 6, 8, 10]
    await b.aclose()
    assert rec.batches == [[0], [1, 2, 3, 4, 5]]


async def test_full_queue_raises_overloaded() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b: MicroBatcher[int, int] = MicroBatcher(rec, BatcherConfig(max_batch_size=1, max_wait_ms=0, max_queue=2))
    running = asyncio.create_task(b.submit(0))
    await asyncio.sleep(0.05)
    queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    with pytest.raises(CompressorOverloaded, match="max_queue 2") as ei:
        await b.submit(3)
    assert ei.value.retry_after > 0
    assert b.stats.rejected == 1
    gate.set()
    assert await running == 0
    assert [await q for q in queued] == [2, 4]
    await b.aclose()


async def test_cancelled_queued_request_is_skipped() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b: MicroBatcher[int, int] = MicroBatcher(rec, BatcherConfig(max_batch_size=8, max_wait_ms=1))
    running = asyncio.create_task(b.submit(0))
    await asyncio.sleep(0.05)
    doomed = asyncio.create_task(b.submit(7))
    kept = asyncio.create_task(b.submit(8))
    await asyncio.sleep(0.01)
    doomed.cancel()
    gate.set()
    assert await running == 0
    assert await kept == 16
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await b.aclose()
    assert 7 not in [x for batch in rec.batches for x in batch]
    assert b.stats.cancelled_before_run == 1


async def test_cancelled_while_running_does_not_disturb_others() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b: MicroBatcher[int, int] = MicroBatcher(rec, BatcherConfig(max_batch_size=8, max_wait_ms=20))
    a = asyncio.create_task(b.submit(1))
    c = asyncio.create_task(b.submit(2))
    await asyncio.sleep(0.1)  # both are in the running batch
    a.cancel()
    gate.set()
    assert await c == 4
    with pytest.raises(asyncio.CancelledError):
        await a
    await b.aclose()
    assert rec.batches == [[1, 2]]
    # the batcher still works afterwards
    b2: MicroBatcher[int, int] = MicroBatcher(Recorder())
    assert await b2.submit(5) == 10
    await b2.aclose()


async def test_bad_item_fails_alone() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, BatcherConfig(max_batch_size=8, max_wait_ms=30))
    results = await asyncio.gather(b.submit(1), b.submit(-1), b.submit(13), b.submit(3), return_exceptions=True)
    await b.aclose()
    assert results[0] == 2 and results[3] == 6
    assert isinstance(results[1], ValueError) and "negative" in str(results[1])
    assert isinstance(results[2], ValueError) and "unlucky" in str(results[2])
    # the failing batch was retried item by item
    assert [1, -1, 13, 3] in rec.batches and [1] in rec.batches and [-1] in rec.batches


async def test_wrong_result_count_is_an_error() -> None:
    b: MicroBatcher[int, int] = MicroBatcher(lambda items: [], BatcherConfig(max_wait_ms=0))
    with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
        await b.submit(1)
    await b.aclose()


async def test_close_fails_queued_and_rejects_new() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b: MicroBatcher[int, int] = MicroBatcher(rec, BatcherConfig(max_batch_size=1, max_wait_ms=0))
    running = asyncio.create_task(b.submit(0))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(b.submit(1))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(b.aclose())
    await asyncio.sleep(0.01)
    with pytest.raises(BatcherClosed):
        await queued
    gate.set()
    await closing
    assert await running == 0  # the running batch finished
    with pytest.raises(BatcherClosed):
        await b.submit(2)


def test_config_is_validated() -> None:
    for bad in ({"max_batch_size": 0}, {"max_wait_ms": -1}, {"workers": 0}, {"max_queue": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BatcherConfig(**bad)  # type: ignore[arg-type]
