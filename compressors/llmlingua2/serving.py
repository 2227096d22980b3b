"""Cross-request batching: the windows of concurrent compress requests share ONNX Runtime calls."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .model import Inference, Steps

__all__ = [
    "CPU_POLICY",
    "GPU_POLICY",
    "BatcherClosed",
    "BatcherConfig",
    "BatcherStats",
    "CompressJob",
    "CompressorOverloaded",
    "CompressorService",
]

logger = logging.getLogger(__name__)


class CompressorOverloaded(RuntimeError):
    """The service's queue is full; the caller should retry later (the gateway answers 429)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatcherClosed(RuntimeError):
    """The service was closed (shutdown) before the request ran."""


@dataclass(frozen=True)
class BatcherConfig:
    """The batch policy: how windows of concurrent requests are packed into ONNX Runtime calls.

    None means the provider's default (`CPU_POLICY` or `GPU_POLICY`)."""

    max_batch_windows: int | None = None
    """Most windows (model inputs of up to 512 tokens) in one ONNX Runtime call."""
    max_batch_tokens: int | None = None
    """Most padded token positions in one call (a longer single window still runs alone)."""
    max_wait_ms: float | None = None
    """How long a call that is not full waits for the windows of requests still being tokenized.
    It never waits when no other request could join it, so a lone request does not pay it, nor when no
    second window would fit beside it under max_batch_tokens."""
    max_batch_size: int = 64
    """Requests in progress at once (tokenized, windows queued or running); later ones wait in line."""
    workers: int = 1
    """Threads preparing requests and running calls (onnxruntime releases the GIL while it runs)."""
    max_queue: int = 1024
    """Requests waiting to start beyond which `run` raises CompressorOverloaded."""
    batching: bool = True
    """False: one request at a time (its own windows still share calls): the baseline to compare with."""

    def __post_init__(self) -> None:
        for name in ("max_batch_windows", "max_batch_tokens", "max_batch_size", "workers", "max_queue"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_wait_ms is not None and self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")

    def resolved(self, provider: str) -> BatcherConfig:
        """This policy with every unset field taken from the defaults for PROVIDER."""
        base = GPU_POLICY if provider.startswith(("CUDA", "ROCM", "Tensorrt", "Dml")) else CPU_POLICY
        return replace(
            self,
            max_batch_windows=self.max_batch_windows or base.max_batch_windows,
            max_batch_tokens=self.max_batch_tokens or base.max_batch_tokens,
            max_wait_ms=base.max_wait_ms if self.max_wait_ms is None else self.max_wait_ms,
        )


CPU_POLICY = BatcherConfig(max_batch_windows=16, max_batch_tokens=768, max_wait_ms=2.0)
"""CPU: sharing a call pays for short windows only. Measured per window on bert-base dimensions
(one thread, CPU time): 32 tokens 47 ms alone, 31 ms in calls of 8; 128 tokens 156 -> 126 ms in
calls of 2-4; a full 512-token window is slower in company (536 ms alone, 560-670 ms in calls of
2-16: the activations outgrow the caches), so full windows run alone. Re-measured 2026-12-03 (one
thread, wall): equal-length windows gain a little in calls of 4-8 (64 tokens 73 -> 64 ms, 128 tokens
135 -> 128 ms per window), and mixed lengths of 40-128 tokens lose it to padding (16 windows 1,381 ms
one by one, 1,495 ms in calls of up to 768 tokens): on a CPU sharing calls is about even."""
GPU_POLICY = BatcherConfig(max_batch_windows=64, max_batch_tokens=32768, max_wait_ms=5.0)
"""GPU: one call costs about the same for 1 or 64 windows; wider calls are nearly free."""


@dataclass
class BatcherStats:
    """Counters for metrics, benchmarks and tests."""

    requests: int = 0
    batches: int = 0
    """ONNX Runtime calls."""
    windows: int = 0
    largest_batch: int = 0
    """Most windows in one call."""
    shared_batches: int = 0
    """Calls holding windows of more than one request."""
    positions: int = 0
    """Token positions scored."""
    padded_positions: int = 0
    """Positions computed including padding (positions / padded_positions = packing efficiency)."""
    rejected: int = 0
    cancelled_before_run: int = 0


@dataclass(frozen=True)
class CompressJob:
    """One call of a Compressor method: ``compress``, ``compress_messages`` or ``compress_llmlingua``."""

    method: str
    payload: Any
    """The text, the list of contexts, or the list of message dicts."""
    options: dict[str, Any]


_METHODS = ("compress", "compress_messages", "compress_llmlingua")


@dataclass(eq=False)
class _Job:
    """A request in the service: its step generator and the windows it waits for."""

    job: CompressJob
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    steps: Any = None
    request: Inference | None = None
    results: list[np.ndarray | None] = field(default_factory=list)
    missing: int = 0
    cancelled: bool = False
    """Set by the caller's task when it is cancelled (read by the workers)."""
    finished: bool = False
    """Left the service: result delivered, failed or cancelled (under the lock)."""


@dataclass(eq=False)
class _Window:
    job: _Job
    index: int
    length: int
    key: tuple[int, int | None]
    """(pad_id, pad_to): only windows with the same key share a call."""
    enqueued: float


class CompressorService:
    """A Compressor behind a scheduler: async calls, their windows packed across requests.

    Each request runs as the compressor's step generator (``compress_steps`` ...) in a worker
    thread: the generator tokenizes and yields windows; windows from every request in progress
    wait in one pool; a call takes the oldest window and the windows closest to it in length
    (limiting padding) up to the policy's limits. A request's result is delivered as soon as its
    own windows are done. Every window's keep-probabilities depend on its own tokens only (see
    `model.Inference`), so the results are the bits a request gets when it runs alone.
    """

    def __init__(self, compressor: Any, config: BatcherConfig | None = None) -> None:
        self.compressor = compressor
        self.config = (config or BatcherConfig()).resolved(self.provider)
        self.stats = BatcherStats()
        self._cond = threading.Condition()
        self._arrivals: deque[_Job] = deque()
        self._ready: deque[_Job] = deque()
        self._pool: list[_Window] = []
        self._active = 0
        self._stepping = 0
        self._closed = False
        self._threads: list[threading.Thread] = []

    @property
    def provider(self) -> str:
        return str(getattr(self.compressor, "provider", "unknown"))

    @property
    def queued(self) -> int:
        """Requests waiting to start."""
        return len(self._arrivals)

    # -- async API -------------------------------------------------------------------------------

    async def run(self, job: CompressJob) -> Any:
        """Run one compressor call through the scheduler and return its result."""
        if job.method not in _METHODS:
            raise ValueError(f"unknown compressor method {job.method!r}")
        if self._closed:
            raise BatcherClosed("compressor service is closed")
        loop = asyncio.get_running_loop()
        entry = _Job(job, loop.create_future(), loop)
        with self._cond:
            if len(self._arrivals) >= self.config.max_queue:
                self.stats.rejected += 1
                raise CompressorOverloaded(
                    f"compressor: {len(self._arrivals)} requests queued (max_queue {self.config.max_queue})",
                    retry_after=1.0,
                )
            self._arrivals.append(entry)
            self.stats.requests += 1
            self._start_workers()
            self._cond.notify()
        try:
            return await entry.future
        except asyncio.CancelledError:
            entry.cancelled = True  # its windows are dropped; a running call simply finishes
            raise

    async def compress(self, text: str | bytes, **options: Any) -> Any:
        """`Compressor.compress` (default mode) -> CompressResult."""
        return await self.run(CompressJob("compress", text, options))

    async def compress_messages(self, messages: Sequence[Any], **options: Any) -> Any:
        """`Compressor.compress_messages` -> MessagesResult."""
        return await self.run(CompressJob("compress_messages", list(messages), options))

    async def compress_llmlingua(self, context: str | list[str], **options: Any) -> dict[str, Any]:
        """`Compressor.compress_llmlingua` (compat mode) -> llmlingua's result dict."""
        result: dict[str, Any] = await self.run(CompressJob("compress_llmlingua", context, options))
        return result

    async def aclose(self) -> None:
        """Stop accepting, fail requests not yet started with BatcherClosed, let started ones finish."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            dropped = list(self._arrivals)
            self._arrivals.clear()
            self._cond.notify_all()
        for entry in dropped:
            _resolve(entry, BatcherClosed("compressor closed before the request ran"), failed=True)
        for t in self._threads:
            await asyncio.to_thread(t.join)

    # -- worker threads --------------------------------------------------------------------------

    def _start_workers(self) -> None:
        while len(self._threads) < self.config.workers:
            t = threading.Thread(target=self._work, name=f"compressor-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                task = self._next_task()
                if task is None:
                    return
            if isinstance(task, _Job):
                self._step(task)
            else:
                self._call(task)

    def _next_task(self) -> _Job | list[_Window] | None:
        """Under the lock: the next job to step or call to run; waits; None when closed and idle."""
        cfg = self.config
        assert cfg.max_wait_ms is not None and cfg.max_batch_windows is not None
        while True:
            self._drop_cancelled()
            due = False
            if self._pool:
                age = time.monotonic() - self._pool[0].enqueued
                full = len(self._pool) >= cfg.max_batch_windows
                joining = self._stepping > 0 or bool(self._ready) or self._admissible()
                due = (full or not cfg.batching or not joining or age * 1000 >= cfg.max_wait_ms
                       or not self._room_for_two(self._pool[0]))
            if due:
                return self._take_call()
            if self._ready:
                self._stepping += 1
                return self._ready.popleft()
            if self._admissible():
                self._active += 1
                self._stepping += 1
                return self._arrivals.popleft()
            if self._closed and not self._pool and self._active == 0:
                return None
            if self._pool:
                left = self._pool[0].enqueued + cfg.max_wait_ms / 1000 - time.monotonic()
                self._cond.wait(max(left, 0.0))
            else:
                self._cond.wait()

    def _room_for_two(self, window: _Window) -> bool:
        """Whether any other window could share a call with WINDOW under max_batch_tokens (a call is at
        least as wide as WINDOW); when none could, the call runs without waiting for joiners."""
        assert self.config.max_batch_tokens is not None
        width = window.key[1] or window.length
        return 2 * width <= self.config.max_batch_tokens

    def _admissible(self) -> bool:
        if not self._arrivals:
            return False
        limit = self.config.max_batch_size if self.config.batching else 1
        return self._active < limit

    def _drop_cancelled(self) -> None:
        while self._arrivals and (self._arrivals[0].cancelled or self._arrivals[0].future.done()):
            self._arrivals.popleft()
            self.stats.cancelled_before_run += 1
        for entry in {id(w.job): w.job for w in self._pool if w.job.cancelled}.values():
            self._finish(entry)

    def _take_call(self) -> list[_Window]:
        """The oldest window and those closest to it in length (same pad key), within the limits."""
        cfg = self.config
        assert cfg.max_batch_windows is not None and cfg.max_batch_tokens is not None
        anchor = self._pool[0]
        group = sorted((w for w in self._pool if w.key == anchor.key), key=lambda w: w.length)
        pad_to = anchor.key[1]
        i = group.index(anchor)
        lo, hi = i, i + 1  # the call is group[lo:hi]
        while hi - lo < cfg.max_batch_windows:
            below = group[lo - 1] if lo > 0 else None
            above = group[hi] if hi < len(group) else None
            if below is None and above is None:
                break
            pick_above = below is None or (above is not None and above.length - anchor.length
                                           <= anchor.length - below.length)
            width = pad_to or (above.length if pick_above and above else group[hi - 1].length)
            if (hi - lo + 1) * width > cfg.max_batch_tokens:
                break
            if pick_above:
                hi += 1
            else:
                lo -= 1
        chosen = group[lo:hi]
        ids = {id(w) for w in chosen}
        self._pool = [w for w in self._pool if id(w) not in ids]
        return chosen

    def _step(self, entry: _Job) -> None:
        """Advance one request's generator (outside the lock): windows to the pool, or its result."""
        request: Inference | None = None
        try:
            if entry.cancelled:
                raise asyncio.CancelledError
            if entry.steps is None:
                entry.steps = self._steps_of(entry.job)
                request = next(entry.steps)
            else:
                results = entry.results
                entry.results = []
                request = entry.steps.send(results)
            while request is not None and not request.seqs:  # nothing to score
                request = entry.steps.send([])
        except StopIteration as done:
            _resolve(entry, done.value)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # fails this request only
            _resolve(entry, exc, failed=True)
        with self._cond:
            self._stepping -= 1
            if request is None or entry.cancelled:
                if request is not None:
                    entry.steps.close()
                self._finish(entry)
            else:
                self._queue_windows(entry, request)
            self._cond.notify_all()

    def _steps_of(self, job: CompressJob) -> Any:
        steps_fn: Callable[..., Any] | None = getattr(self.compressor, f"{job.method}_steps", None)
        if steps_fn is not None:
            return steps_fn(job.payload, **job.options)
        # a compressor without step generators runs whole, alone
        return _plain(getattr(self.compressor, job.method), job.payload, job.options)

    def _queue_windows(self, entry: _Job, request: Inference) -> None:
        now = time.monotonic()
        entry.request = request
        entry.results = [None] * len(request.seqs)
        entry.missing = len(request.seqs)
        key = (request.pad_id, request.pad_to)
        for i, seq in enumerate(request.seqs):
            self._pool.append(_Window(entry, i, len(seq), key, now))

    def _finish(self, entry: _Job) -> None:
        """Under the lock: a request leaves the service (done, failed or cancelled); idempotent."""
        if entry.finished:
            return
        entry.finished = True
        self._active -= 1
        if any(w.job is entry for w in self._pool):
            self._pool = [w for w in self._pool if w.job is not entry]

    def _call(self, windows: list[_Window]) -> None:
        """Run one ONNX Runtime call (outside the lock) and hand each window its probabilities."""
        try:
            probs = self._score(windows)
        except Exception as exc:
            probs = None
            logger.debug("compressor call of %d windows failed (%s); retrying per request", len(windows), exc)
        results: list[tuple[_Window, np.ndarray | BaseException]] = []
        if probs is not None:
            results = list(zip(windows, probs, strict=True))
        else:  # one bad request must not fail the others: each request's windows alone
            for entry in {id(w.job): w.job for w in windows}.values():
                own = [w for w in windows if w.job is entry]
                try:
                    results.extend(zip(own, self._score(own), strict=True))
                except Exception as exc:
                    results.extend((w, exc) for w in own)
        with self._cond:
            for w, p in results:
                entry = w.job
                if entry.finished:
                    continue
                if entry.cancelled:
                    self._finish(entry)
                    continue
                if isinstance(p, BaseException):
                    _resolve(entry, p, failed=True)
                    self._finish(entry)
                    continue
                entry.results[w.index] = p
                entry.missing -= 1
                if entry.missing == 0:
                    self._ready.append(entry)
            self._cond.notify_all()

    def _score(self, windows: list[_Window]) -> list[np.ndarray]:
        reqs = [w.job.request for w in windows]
        assert all(r is not None for r in reqs)
        seqs = [r.seqs[w.index] for r, w in zip(reqs, windows, strict=True) if r is not None]
        masks = None
        if any(r is not None and r.masks is not None for r in reqs):
            masks = [
                r.masks[w.index] if r.masks is not None else [1] * w.length
                for r, w in zip(reqs, windows, strict=True)
                if r is not None
            ]
        pad_id, pad_to = windows[0].key
        out: list[np.ndarray] = self.compressor.classifier.keep_probs(
            seqs, masks=masks, pad_to=pad_to, pad_id=pad_id
        )
        width = pad_to or max(w.length for w in windows)
        with self._cond:
            st = self.stats
            st.batches += 1
            st.windows += len(windows)
            st.largest_batch = max(st.largest_batch, len(windows))
            st.shared_batches += len({id(w.job) for w in windows}) > 1
            st.positions += sum(w.length for w in windows)
            st.padded_positions += width * len(windows)
        return out


def _plain(fn: Callable[..., Any], payload: Any, options: dict[str, Any]) -> Steps[Any]:
    """A step generator around a plain call (no windows to share)."""
    yield from ()
    return fn(payload, **options)


def _resolve(entry: _Job, value: Any, *, failed: bool = False) -> None:
    """Deliver a result or an exception to the request's future, from any thread."""

    def deliver() -> None:
        if entry.future.done():
            return
        if failed:
            entry.future.set_exception(value)
        else:
            entry.future.set_result(value)

    try:
        entry.loop.call_soon_threadsafe(deliver)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
