"""Asyncio micro-batcher: concurrent compress requests share model batches run in a thread pool."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = [
    "BatcherClosed",
    "BatcherConfig",
    "BatcherStats",
    "CompressJob",
    "CompressorOverloaded",
    "CompressorService",
    "MicroBatcher",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class CompressorOverloaded(RuntimeError):
    """The batcher's queue is full; the caller should retry later (the gateway answers 429)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatcherClosed(RuntimeError):
    """The batcher was closed (shutdown) before the request ran."""


@dataclass(frozen=True)
class BatcherConfig:
    """How requests are grouped and where inference runs."""

    max_batch_size: int = 16
    """Most requests in one call of the batch function."""
    max_wait_ms: float = 2.0
    """How long the oldest queued request may wait for others to join its batch."""
    workers: int = 1
    """Batches run at once, each in its own thread (onnxruntime releases the GIL while it runs)."""
    max_queue: int = 1024
    """Requests waiting (not yet running) beyond which `submit` raises CompressorOverloaded."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.max_queue < 1:
            raise ValueError("max_queue must be >= 1")


@dataclass
class BatcherStats:
    """Counters for metrics and tests."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    rejected: int = 0
    cancelled_before_run: int = 0


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float


class MicroBatcher(Generic[T, R]):
    """Groups concurrent `submit` calls into calls of ``fn(items) -> results`` (same order, same length).

    ``fn`` runs in a thread pool, never on the event loop, and must be thread-safe when
    ``workers > 1``. An element of the returned list that is an exception instance fails only its
    own request. If ``fn`` raises for a batch of several items, each item is retried alone so that
    one bad request does not fail the others. A caller that is cancelled while queued is skipped;
    one cancelled while its batch runs simply does not receive the result.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R | BaseException]],
        config: BatcherConfig | None = None,
        *,
        name: str = "batcher",
    ) -> None:
        self.fn = fn
        self.config = config or BatcherConfig()
        self.name = name
        self.stats = BatcherStats()
        self._pending: deque[_Pending[T, R]] = deque()
        self._executor = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix=name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._collector: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (cancelled ones not yet skipped included)."""
        return len(self._pending)

    async def submit(self, item: T) -> R:
        """Run ``item`` in the next batch and return its result (or raise its exception)."""
        if self._closed:
            raise BatcherClosed(f"{self.name} is closed")
        loop = self._start()
        if len(self._pending) >= self.config.max_queue:
            self.stats.rejected += 1
            raise CompressorOverloaded(
                f"{self.name}: {len(self._pending)} requests queued (max_queue {self.config.max_queue})",
                retry_after=max(0.1, self.config.max_wait_ms / 1000.0 * 4),
            )
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append(_Pending(item, fut, time.monotonic()))
        self.stats.requests += 1
        assert self._wakeup is not None
        self._wakeup.set()
        return await fut

    async def aclose(self) -> None:
        """Stop accepting, fail queued requests with BatcherClosed, wait for running batches."""
        if self._closed:
            return
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
        while self._pending:
            p = self._pending.popleft()
            if not p.future.done():
                p.future.set_exception(BatcherClosed(f"{self.name} closed before the request ran"))
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        self._executor.shutdown(wait=False)

    # -- internals ---------------------------------------------------------------------------------

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._slots = asyncio.Semaphore(self.config.workers)
            self._collector = loop.create_task(self._collect(), name=f"{self.name}-collector")
        elif self._loop is not loop:
            raise RuntimeError(f"{self.name} is bound to another event loop")
        return loop

    def _drop_cancelled_head(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
            self.stats.cancelled_before_run += 1

    def _live(self) -> int:
        return sum(1 for p in self._pending if not p.future.done())

    async def _collect(self) -> None:
        """Forms batches: waits for a free worker, then up to max_wait_ms for the batch to fill."""
        assert self._wakeup is not None and self._slots is not None
        wakeup, slots = self._wakeup, self._slots
        cfg = self.config
        while True:
            self._drop_cancelled_head()
            if not self._pending:
                wakeup.clear()
                await wakeup.wait()
                continue
            await slots.acquire()
            try:
                # the oldest request's own wait counts: after a busy period a batch leaves at once
                self._drop_cancelled_head()
                if self._pending:
                    deadline = self._pending[0].enqueued + cfg.max_wait_ms / 1000.0
                    while self._live() < cfg.max_batch_size:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        wakeup.clear()
                        try:
                            await asyncio.wait_for(wakeup.wait(), left)
                        except TimeoutError:
                            break
                batch: list[_Pending[T, R]] = []
                while self._pending and len(batch) < cfg.max_batch_size:
                    p = self._pending.popleft()
                    if p.future.done():
                        self.stats.cancelled_before_run += 1
                        continue
                    batch.append(p)
            except BaseException:
                slots.release()
                raise
            if not batch:
                slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._dispatch(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _dispatch(self, batch: list[_Pending[T, R]]) -> None:
        assert self._slots is not None and self._wakeup is not None
        loop = asyncio.get_running_loop()
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        items = [p.item for p in batch]
        try:
            try:
                results = await loop.run_in_executor(self._executor, self._call, items)
            except Exception as exc:  # the executor itself failed (e.g. shut down)
                results = [exc] * len(batch)
            for p, res in zip(batch, results, strict=True):
                if p.future.done():  # its caller was cancelled while the batch ran
                    continue
                if isinstance(res, BaseException):
                    p.future.set_exception(res)
                else:
                    p.future.set_result(res)
        finally:
            self._slots.release()
            self._wakeup.set()

    def _call(self, items: list[T]) -> list[Any]:
        """Runs in a worker thread."""
        t0 = time.perf_counter()
        try:
            out = list(self.fn(items))
            if len(out) != len(items):
                raise RuntimeError(
                    f"{self.name}: batch function returned {len(out)} results for {len(items)} items"
                )
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            logger.debug("%s: batch of %d failed (%s); retrying items one by one", self.name, len(items), exc)
            out = []
            for it in items:
                try:
                    out.extend(self.fn([it]))
                except Exception as one:
                    out.append(one)
        logger.debug("%s: batch of %d in %.1f ms", self.name, len(items), (time.perf_counter() - t0) * 1000)
        return out


@dataclass(frozen=True)
class CompressJob:
    """One call of a Compressor method: ``compress``, ``compress_messages`` or ``compress_llmlingua``."""

    method: str
    payload: Any
    """The text, the list of contexts, or the list of message dicts."""
    options: dict[str, Any]


_METHODS = ("compress", "compress_messages", "compress_llmlingua")


class CompressorService:
    """A Compressor behind a MicroBatcher: async calls, batched, run in worker threads.

    ``compressor`` is a ``compressors.llmlingua2.Compressor`` (anything with its three methods).
    Concurrent calls that arrive within ``max_wait_ms`` of each other run in one batch.
    """

    def __init__(self, compressor: Any, config: BatcherConfig | None = None) -> None:
        self.compressor = compressor
        self.batcher: MicroBatcher[CompressJob, Any] = MicroBatcher(
            self._run_batch, config, name="compressor"
        )

    def _run_batch(self, jobs: Sequence[CompressJob]) -> list[Any]:
        out: list[Any] = []
        for job in jobs:
            try:
                out.append(getattr(self.compressor, job.method)(job.payload, **job.options))
            except Exception as exc:  # fails this job only
                out.append(exc)
        return out

    async def run(self, job: CompressJob) -> Any:
        if job.method not in _METHODS:
            raise ValueError(f"unknown compressor method {job.method!r}")
        return await self.batcher.submit(job)

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

    @property
    def provider(self) -> str:
        return str(getattr(self.compressor, "provider", "unknown"))

    async def aclose(self) -> None:
        await self.batcher.aclose()
