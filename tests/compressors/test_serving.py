"""The compressor service's scheduler: cross-request calls, length grouping, policy, overload,
cancellation, error isolation and shutdown, on a scripted compressor (synchronised with events)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from compressors.llmlingua2.model import Inference
from compressors.llmlingua2.serving import (
    CPU_POLICY,
    GPU_POLICY,
    BatcherClosed,
    BatcherConfig,
    CompressJob,
    CompressorOverloaded,
    CompressorService,
)


class Classifier:
    """keep_probs stand-in: a window's 'probability' is the sum of its ids; records every call."""

    def __init__(self) -> None:
        self.calls: list[list[list[int]]] = []
        self.threads: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def keep_probs(
        self, seqs: Sequence[Sequence[int]], *, masks: Any = None, pad_to: int | None = None, pad_id: int = 0
    ) -> list[np.ndarray]:
        self.entered.set()
        assert self.gate.wait(10), "gate never opened"
        self.threads.add(threading.get_ident())
        self.calls.append([list(s) for s in seqs])
        if any(-1 in s for s in seqs):
            raise RuntimeError("bad window")
        return [np.full(len(s), float(sum(s)), dtype=np.float32) for s in seqs]


class Scripted:
    """A compressor whose `compress_steps` yields windows of the given lengths (ids = the request's
    tag) once or twice and returns the sums it was sent."""

    provider = "CPUExecutionProvider"

    def __init__(self) -> None:
        self.classifier = Classifier()

    def compress_steps(self, payload: tuple[int, list[int]], *, rounds: int = 1) -> Any:
        tag, lengths = payload
        if tag < 0 and not lengths:
            raise ValueError("bad request")
        out: list[float] = []
        for _ in range(rounds):
            probs = yield Inference([[tag] * n for n in lengths], pad_id=0)
            out.extend(float(p[0]) for p in probs)
        return out


def job(tag: int, lengths: list[int], **opts: Any) -> CompressJob:
    return CompressJob("compress", (tag, lengths), opts)


def expected(tag: int, lengths: list[int], rounds: int = 1) -> list[float]:
    return [float(tag * n) for n in lengths] * rounds


async def blocked(svc: CompressorService, comp: Scripted) -> asyncio.Task[Any]:
    """Start a request whose call holds the only worker until `comp.classifier.gate` is set."""
    comp.classifier.gate.clear()
    comp.classifier.entered.clear()
    task = asyncio.create_task(svc.run(job(1, [3])))
    assert await asyncio.to_thread(comp.classifier.entered.wait, 10)
    return task


async def test_windows_of_concurrent_requests_share_calls() -> None:
    comp = Scripted()
    svc = CompressorService(comp, BatcherConfig(max_batch_windows=8, max_batch_tokens=10_000, max_wait_ms=10_000))
    first = await blocked(svc, comp)
    reqs = [(t, [5, 7]) for t in range(2, 10)]  # 8 requests, 16 windows
    tasks = [asyncio.create_task(svc.run(job(t, ls))) for t, ls in reqs]
    await asyncio.sleep(0)  # let the tasks enqueue before the worker is released
    comp.classifier.gate.set()
    assert await first == expected(1, [3])
    assert [await t for t in tasks] == [expected(t, ls) for t, ls in reqs]
    await svc.aclose()
    later = comp.classifier.calls[1:]
    assert len(later) == 2 and all(len(c) == 8 for c in later)  # 16 windows in two full calls
    assert svc.stats.shared_batches == 2 and svc.stats.largest_batch == 8
    assert svc.stats.requests == 9 and svc.stats.windows == 17


async def test_calls_group_windows_by_length() -> None:
    comp = Scripted()
    svc = CompressorService(comp, BatcherConfig(max_batch_windows=3, max_batch_tokens=1000, max_wait_ms=10_000))
    first = await blocked(svc, comp)
    tasks = [asyncio.create_task(svc.run(job(t, ls))) for t, ls in ((2, [10, 500]), (3, [12, 490]))]
    await asyncio.sleep(0)
    comp.classifier.gate.set()
    await first
    assert [await t for t in tasks] == [expected(2, [10, 500]), expected(3, [12, 490])]
    await svc.aclose()
    calls = [sorted((len(s), s[0]) for s in call) for call in comp.classifier.calls[1:]]
    # the oldest window, then its closest neighbours in length while the padded size fits
    assert calls == [[(10, 2), (12, 3)], [(490, 3), (500, 2)]]
    assert svc.stats.padded_positions == 3 + 2 * 12 + 2 * 500 and svc.stats.shared_batches == 2


async def test_token_limit_splits_calls_and_a_long_window_runs_alone() -> None:
    comp = Scripted()
    svc = CompressorService(comp, BatcherConfig(max_batch_windows=16, max_batch_tokens=100, max_wait_ms=10_000))
    assert await svc.run(job(2, [30, 30, 30, 30, 200])) == expected(2, [30, 30, 30, 30, 200])
    await svc.aclose()
    assert [sorted(len(s) for s in c) for c in comp.classifier.calls] == [[30, 30, 30], [30], [200]]


async def test_a_lone_request_does_not_wait_for_others() -> None:
    comp = Scripted()
    svc = CompressorService(comp, BatcherConfig(max_wait_ms=60_000))
    t0 = time.perf_counter()
    assert await svc.run(job(3, [4, 4], rounds=2)) == expected(3, [4, 4], 2)
    await svc.aclose()
    assert time.perf_counter() - t0 < 30  # nothing could join it, so max_wait_ms did not apply
    assert svc.stats.batches == 2


class Holding(Scripted):
    """Scripted, but tokenizing the request tagged 99 blocks until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.release = threading.Event()

    def compress_steps(self, payload: tuple[int, list[int]], *, rounds: int = 1) -> Any:
        if payload[0] == 99:
            self.holding.set()
            assert self.release.wait(10), "never released"
        return (yield from super().compress_steps(payload, rounds=rounds))


async def test_a_window_nothing_could_join_does_not_wait() -> None:
    # two workers: one is held tokenizing another request (which could otherwise join), the other has
    # a 60-token window that no second window fits beside under max_batch_tokens=100: it runs at once
    comp = Holding()
    svc = CompressorService(comp, BatcherConfig(max_batch_tokens=100, max_wait_ms=60_000, workers=2))
    held = asyncio.create_task(svc.run(job(99, [5])))
    assert await asyncio.to_thread(comp.holding.wait, 10)
    try:
        assert await asyncio.wait_for(svc.run(job(2, [60])), 30) == expected(2, [60])
        # a narrow window could share a call: it waits for the request being tokenized
        narrow = asyncio.create_task(svc.run(job(3, [10])))
        for _ in range(1000):  # until its window is in the pool, waiting
            if any(w.job.job.payload[0] == 3 for w in svc._pool):
                break
            await asyncio.sleep(0.01)
        assert not narrow.done()
    finally:
        comp.release.set()
    assert await held == expected(99, [5]) and await narrow == expected(3, [10])
    await svc.aclose()
    assert sorted(sorted(s[0] for s in c) for c in comp.classifier.calls) == [[2], [3, 99]]


async def test_inference_runs_off_the_event_loop() -> None:
    comp = Scripted()
    svc = CompressorService(comp)
    await svc.run(job(2, [3]))
    await svc.aclose()
    assert comp.classifier.threads and threading.get_ident() not in comp.classifier.threads


async def test_batching_off_runs_one_request_at_a_time() -> None:
    comp = Scripted()
    svc = CompressorService(comp, BatcherConfig(batching=False))
    first = await blocked(svc, comp)
    tasks = [asyncio.create_task(svc.run(job(t, [5, 6]))) for t in range(2, 6)]
    await asyncio.sleep(0)
    comp.classifier.gate.set()
    await first
    assert [await t for t in tasks] == [expected(t, [5, 6]) for t in range(2, 6)]
    await svc.aclose()
    assert svc.stats.shared_batches == 0
    assert [sorted({s[0] for s in c}) for c in comp.classifier.calls[1:]] == [[2], [3], [4], [5]]


async def test_full_queue_raises_overloaded() -> None:
    comp = Scripted()
    svc = CompressorService(comp, BatcherConfig(max_queue=1))
    first = await blocked(svc, comp)
    queued = asyncio.create_task(svc.run(job(2, [2])))
    await asyncio.sleep(0)
    with pytest.raises(CompressorOverloaded, match="max_queue 1") as ei:
        await svc.run(job(3, [2]))
    assert ei.value.retry_after > 0 and svc.stats.rejected == 1
    comp.classifier.gate.set()
    assert await first == expected(1, [3]) and await queued == expected(2, [2])
    await svc.aclose()


async def test_cancelled_queued_request_is_skipped() -> None:
    comp = Scripted()
    svc = CompressorService(comp)
    first = await blocked(svc, comp)
    doomed = asyncio.create_task(svc.run(job(7, [2])))
    kept = asyncio.create_task(svc.run(job(8, [2])))
    await asyncio.sleep(0)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    comp.classifier.gate.set()
    assert await first == expected(1, [3]) and await kept == expected(8, [2])
    await svc.aclose()
    assert all(s[0] != 7 for c in comp.classifier.calls for s in c)
    assert svc.stats.cancelled_before_run == 1


async def test_cancelled_while_running_does_not_disturb_others() -> None:
    comp = Scripted()
    svc = CompressorService(comp)
    comp.classifier.gate.clear()
    a = asyncio.create_task(svc.run(job(2, [3], rounds=2)))
    c = asyncio.create_task(svc.run(job(3, [3])))
    assert await asyncio.to_thread(comp.classifier.entered.wait, 10)
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    comp.classifier.gate.set()
    assert await c == expected(3, [3])
    assert await svc.run(job(4, [1])) == expected(4, [1])  # still serving
    await svc.aclose()
    assert sum(1 for call in comp.classifier.calls for s in call if s[0] == 2) == 1  # no second round


async def test_a_bad_request_fails_alone() -> None:
    comp = Scripted()
    svc = CompressorService(comp, BatcherConfig(max_wait_ms=10_000))
    first = await blocked(svc, comp)
    tasks = [asyncio.create_task(svc.run(j)) for j in (job(2, [4]), job(-1, [4]), job(-2, []), job(5, [4]))]
    await asyncio.sleep(0)
    comp.classifier.gate.set()
    await first
    good, bad_call, bad_steps, good2 = await asyncio.gather(*tasks, return_exceptions=True)
    await svc.aclose()
    assert good == expected(2, [4]) and good2 == expected(5, [4])
    assert isinstance(bad_call, RuntimeError) and "bad window" in str(bad_call)
    assert isinstance(bad_steps, ValueError) and "bad request" in str(bad_steps)
    assert [[-1] * 4] in comp.classifier.calls  # the failing call was retried per request


async def test_close_fails_queued_and_rejects_new() -> None:
    comp = Scripted()
    svc = CompressorService(comp)
    first = await blocked(svc, comp)
    queued = asyncio.create_task(svc.run(job(2, [2])))
    await asyncio.sleep(0)
    closing = asyncio.create_task(svc.aclose())
    with pytest.raises(BatcherClosed):
        await queued
    comp.classifier.gate.set()
    await closing
    assert await first == expected(1, [3])  # the started request finished
    with pytest.raises(BatcherClosed):
        await svc.run(job(3, [2]))


async def test_unknown_method_is_rejected() -> None:
    svc = CompressorService(Scripted())
    with pytest.raises(ValueError, match="unknown compressor method"):
        await svc.run(CompressJob("keep_probs", [], {}))
    await svc.aclose()


def test_policy_defaults_follow_the_provider() -> None:
    cpu = BatcherConfig().resolved("CPUExecutionProvider")
    gpu = BatcherConfig(max_wait_ms=0).resolved("CUDAExecutionProvider")
    assert (cpu.max_batch_windows, cpu.max_batch_tokens, cpu.max_wait_ms) == (
        CPU_POLICY.max_batch_windows, CPU_POLICY.max_batch_tokens, CPU_POLICY.max_wait_ms)
    assert (gpu.max_batch_windows, gpu.max_batch_tokens, gpu.max_wait_ms) == (
        GPU_POLICY.max_batch_windows, GPU_POLICY.max_batch_tokens, 0)
    assert GPU_POLICY.max_batch_windows > CPU_POLICY.max_batch_windows  # type: ignore[operator]
    for bad in ({"max_batch_windows": 0}, {"max_batch_tokens": 0}, {"max_wait_ms": -1}, {"workers": 0},
                {"max_queue": 0}, {"max_batch_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BatcherConfig(**bad)  # type: ignore[arg-type]
