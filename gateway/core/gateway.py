"""The Gateway both front ends call: it wires policy, routing and the pipeline into one request path."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.config.schema import GatewayConfig
from gateway.core.fields import check_fields
from gateway.core.pipeline import Pending, Pipeline, hook_stats, hooked_completion, hooked_stream
from gateway.core.policy import Admission, ApiKey, Keys, check_limits
from gateway.core.routing import NO_BACKEND_MESSAGE, Route, Router, aclose_stream
from gateway.errors import NoBackend, PermissionDenied, RequestTimeout
from gateway.observe.metrics import Metrics, multiprocess
from gateway.observe.tracing import RequestTrace, Tracer
from gateway.providers.base import ProviderFactory
from gateway.stages.base import ResponseHook, StageDeps
from gateway.stages.table import DECODERS, STAGES, DecoderEntry, StageEntry
from gateway.types import Completion, GatewayRequest, ModelInfo, StageStats, StreamChunk, Usage

if TYPE_CHECKING:
    from gateway.stages.compress_api import CompressAPI
    from gateway.stages.condense_history import CondenseOutcome

T = TypeVar("T")

__all__ = ["NO_BACKEND_MESSAGE", "ApiKey", "Gateway", "GatewayStream"]

logger = logging.getLogger(__name__)


class Gateway:
    """One gateway instance: built from config, started once, shared by the HTTP and gRPC front ends.

    ``providers`` maps backend types to provider factories (default: gateway.providers.PROVIDERS). Stage
    and decoder names come from the one table, gateway/stages/table.py."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        providers: Mapping[str, ProviderFactory] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if providers is None:
            from gateway.providers import PROVIDERS

            providers = PROVIDERS
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.stage_table: Mapping[str, StageEntry] = STAGES
        self.decoder_table: Mapping[str, DecoderEntry] = DECODERS
        self.keys = Keys(config.auth.keys)
        # several workers (serve --workers N) share the in-flight gauge: written at every change, not at scrapes
        shared = self.metrics.in_flight.set if multiprocess() else None
        self.admission = Admission(config.limits.max_in_flight, config.limits.retry_after_s, shared)
        self.router = Router(config, providers, self.metrics, self.decoder_table)
        self.pipeline = Pipeline(config, self.stage_table, self.metrics)
        self.tracer = Tracer(config.otel)
        self.metrics.in_flight.set_function(lambda: self.admission.in_flight)  # read at scrape time
        self._log_prompts = config.server.log_prompts
        self._started = False
        self.compress_api: CompressAPI | None = None
        """Serves POST /v1/compress and gRPC Compress; set at start when the compress stage is configured."""

    # ----- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build providers and stages, discover upstream models (failures there are logged, not fatal)."""
        if self._started:
            return
        await self.router.start()
        await self.pipeline.start(StageDeps(self.router.providers, self.config, self.metrics))
        compress = self.pipeline.stages.get("compress")
        if compress is not None:
            from gateway.stages.compress import CompressStage
            from gateway.stages.compress_api import CompressAPI

            if isinstance(compress, CompressStage):
                self.compress_api = CompressAPI.from_stage(compress)
        await self.router.discover()
        self._started = True

    async def aclose(self) -> None:
        await self.router.aclose()
        await self.pipeline.aclose()
        if self.tracer.enabled:
            await asyncio.to_thread(self.tracer.shutdown)  # flush spans (the exporter may block)

    @property
    def shutting_down(self) -> bool:
        return self.admission.shutting_down

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    def begin_shutdown(self) -> None:
        """Stop admitting requests (readiness false); in-flight ones continue."""
        self.admission.shutting_down = True

    async def drain(self, grace_s: float) -> bool:
        """Wait up to ``grace_s`` for in-flight requests to finish; True if all did."""
        return await self.admission.drain(grace_s)

    async def ready(self) -> bool:
        """Started, not shutting down, and some backend ready (no backend at all counts as ready: health,
        models and metrics still work)."""
        if not self._started or self.admission.shutting_down:
            return False
        return await self.router.ready()

    # ----- calls that are not generation -----------------------------------------------------------

    def authenticate(self, api_key: str | None) -> ApiKey | None:
        """The key's record, None when auth is off; AuthenticationError for a missing/unknown key."""
        return self.keys.authenticate(api_key)

    async def admitted(self, key: ApiKey | None, stage: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run a stage's own API call (``/v1/compress``, ``/v1/condense_history``...) under the key's stage
        permissions and the in-flight limit."""
        if key is not None and not key.allows_stage(stage):
            raise PermissionDenied(f"API key {key.id!r} may not use the {stage} stage", param=f"promptwire.{stage}")
        self.admission.admit()
        try:
            return await call()
        finally:
            self.admission.release()

    async def compress(self, key: ApiKey | None, handle: Callable[[CompressAPI], Awaitable[T]]) -> T:
        """Run a /v1/compress or gRPC Compress call (503 ``no_compressor`` on both when none is configured)."""
        api = self.compress_api
        if api is None:
            raise NoBackend(
                "no compressor is configured: set stages.compress.model to an exported LLMLingua-2 model, a "
                "checkpoint directory or a Hugging Face id (see docs/compress-serving.md)",
                code="no_compressor",
            )
        return await self.admitted(key, "compress", lambda: handle(api))

    async def condense_history(
        self, key: ApiKey | None, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any],
        option_prefix: str = "",
    ) -> CondenseOutcome:
        """Run a /v1/condense_history or gRPC CondenseHistory call: the stage's logic on ``messages`` with
        ``stages.condense_history.defaults`` under ``options``. Needs no configuration (the stage holds
        no model); option errors name ``option_prefix + option``."""
        from gateway.stages.condense_history import condense, validate_condense_options

        section = self.config.stages.condense_history
        defaults = dict(section.defaults) if section is not None else {}

        async def call() -> CondenseOutcome:
            opts = validate_condense_options({**defaults, **options}, prefix=option_prefix)
            return condense(messages, opts, prefix=option_prefix)

        return await self.admitted(key, "condense_history", call)

    async def list_models(self, key: ApiKey | None = None) -> list[ModelInfo]:
        """Models of every backend (cached a few seconds); with a key, only those it may use."""
        models = await self.router.list_models()
        return models if key is None else [m for m in models if key.allows_model(m.id)]

    # ----- generation ------------------------------------------------------------------------------

    async def _prepare(
        self, req: GatewayRequest, deadline: float | None, rt: RequestTrace | None = None
    ) -> tuple[GatewayRequest, Route, list[StageStats], list[ResponseHook], Pending]:
        """Checks, routing and stages: everything before the provider call."""
        key = self.keys.of_request(req)
        check_limits(req, self.config.limits)
        route = self.router.route(req.model)
        check_fields(req.kind, req.params, req.messages, openai_limits=route.openai_limits,
                     max_n=self.config.limits.max_n)
        self.router.check_decoder(req, route)
        plan = self.pipeline.plan(req, route, key)
        if self._log_prompts and logger.isEnabledFor(logging.DEBUG):  # operator opted in (log_prompts)
            logger.debug("request %s prompt: %s", req.request_id, req.prompt_text(),
                         extra={"request_id": req.request_id})
        req, stats, hooks, pending = await self.pipeline.run(req, plan, rt)
        if route.upstream_model is not None or deadline != req.deadline:
            req = dataclasses.replace(req, model=route.upstream_model or req.model, deadline=deadline)
        return req, route, stats, hooks, pending

    def _deadline(self, req: GatewayRequest) -> float | None:
        """Absolute monotonic deadline: the front end's (gRPC deadline) or the configured timeout."""
        deadline = req.deadline
        timeout = self.config.limits.request_timeout_s
        if timeout is not None:
            own = time.monotonic() + timeout
            deadline = own if deadline is None else min(deadline, own)
        return deadline

    async def generate(
        self, req: GatewayRequest, *, trace_headers: Iterable[tuple[Any, Any]] | None = None
    ) -> tuple[Completion, list[StageStats], float]:
        """One whole response, the stages' stats (response hooks' included) and the gateway's overhead in ms.

        ``trace_headers``: the client's request headers (ASGI) or gRPC metadata; with tracing on, a W3C
        ``traceparent`` there makes this request's spans part of the client's trace."""
        t0 = req.received_at or time.perf_counter()
        rt = self.tracer.request(req, trace_headers) if self.tracer.enabled else None
        completion, stats, _, t1, t2 = await self._admitted(req, rt, self._call, "request did not finish", hold=False)
        t3 = time.perf_counter()
        overhead_ms = ((t1 - t0) + (t3 - t2)) * 1000
        m = self.metrics
        m.child(m.overhead_seconds, req.kind).observe(overhead_ms / 1000)
        m.child(m.total_seconds, req.kind).observe(t3 - t0)
        usage = completion.usage
        if usage is not None:
            m.child(m.tokens_in, m.model_label(req.model)).inc(usage.prompt_tokens)
            m.child(m.tokens_out, m.model_label(req.model)).inc(usage.completion_tokens)
        if rt is not None:
            rt.end(completion, overhead_ms)
        return completion, stats, overhead_ms

    async def _call(self, req: GatewayRequest, route: Route, rt: RequestTrace | None,
                    hooks: list[ResponseHook], stats: list[StageStats]) -> Completion:
        completion = await self.router.call(req, route, rt)
        if hooks:
            completion = await hooked_completion(completion, hooks)
            self._hook_stats(hooks, stats)
        return completion

    def _hook_stats(self, hooks: list[ResponseHook], stats: list[StageStats]) -> None:
        for st in hook_stats(hooks):
            stats.append(st)
            self.pipeline.observe(st)

    async def _admitted(
        self, req: GatewayRequest, rt: RequestTrace | None,
        upstream: Callable[[GatewayRequest, Route, RequestTrace | None, list[ResponseHook], list[StageStats]],
                           Awaitable[T]],
        what: str, *, hold: bool, discard: Callable[[T], Awaitable[None]] | None = None,
    ) -> tuple[T, list[StageStats], float | None, float, float]:
        """Admit the request (in-flight limit), then within its deadline run the checks and stages and
        ``upstream``. Returns upstream's result, the stats, the deadline, and when the upstream call began
        and ended (``perf_counter``). The in-flight slot is released on the way out, or kept on success
        when ``hold`` (a stream releases it at its end); failures reach the trace."""
        try:
            self.admission.admit()
            try:
                deadline = self._deadline(req)
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    async with asyncio.timeout(remaining):
                        req2, route, stats, hooks, pending = await self._prepare(req, deadline, rt)
                        t1 = time.perf_counter()
                        try:
                            result = await upstream(req2, route, rt, hooks, stats)
                        except BaseException:
                            self.pipeline.settle_later(stats, pending)  # the stages ran: their metrics count
                            raise
                        t2 = time.perf_counter()
                        if pending:  # stats completed off the request path while the upstream worked
                            try:
                                await self.pipeline.settle(stats, pending, rt)
                            except BaseException:
                                if discard is not None:
                                    await discard(result)
                                raise
                            waited = time.perf_counter() - t2  # gateway overhead (and before a first chunk)
                            t1 += waited
                            t2 += waited
                except TimeoutError:
                    raise RequestTimeout(f"{what} within {remaining:.3g} s") from None
            except BaseException:
                self.admission.release()
                raise
        except BaseException as e:
            if rt is not None:
                rt.fail(e)
            raise
        if not hold:
            self.admission.release()
        return result, stats, deadline, t1, t2

    async def generate_stream(
        self, req: GatewayRequest, *, trace_headers: Iterable[tuple[Any, Any]] | None = None
    ) -> GatewayStream:
        """Run stages and connect upstream until the first chunk is in hand (errors until then are
        ordinary exceptions the front end maps to a status); then stream the rest. When a response hook
        buffers, the whole stream goes through the hooks first (errors then are ordinary exceptions too).
        ``trace_headers``: as for :meth:`generate`."""
        t0 = req.received_at or time.perf_counter()
        rt = self.tracer.request(req, trace_headers) if self.tracer.enabled else None
        # held: the stream releases its in-flight slot when it ends
        opened, stats, deadline, t1, t2 = await self._admitted(req, rt, self._open, "no response", hold=True,
                                                               discard=_discard_opened)
        it, first, hooks = opened
        overhead_ms = (t1 - t0) * 1000
        m = self.metrics
        m.child(m.overhead_seconds, req.kind).observe(t1 - t0)
        m.child(m.ttft_seconds, m.model_label(req.model)).observe(t2 - t0)
        if rt is not None:
            rt.opened(overhead_ms, (t2 - t0) * 1000)
        return GatewayStream(self, req, it, first, stats, overhead_ms, deadline, t0, rt, hooks)

    async def _open(
        self, req: GatewayRequest, route: Route, rt: RequestTrace | None, hooks: list[ResponseHook],
        stats: list[StageStats],
    ) -> tuple[AsyncIterator[StreamChunk], StreamChunk | None, list[ResponseHook]]:
        it, first = await self.router.open_stream(req, route, rt)
        if not hooks or not any(h.buffers for h in hooks):
            return it, first, hooks
        # A hook needs the whole answer: run the stream through the hooks now, within the deadline, so
        # that what they raise is still an ordinary error and their stats join the headers.
        try:
            held = [c async for c in hooked_stream(_prepend(first, it), hooks)]
        finally:
            await aclose_stream(it)
        self._hook_stats(hooks, stats)
        replay = _replay(held)
        return replay, await anext(replay, None), []


async def _prepend(first: StreamChunk | None, it: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
    if first is None:
        return
    yield first
    async for chunk in it:
        yield chunk


async def _replay(chunks: list[StreamChunk]) -> AsyncIterator[StreamChunk]:
    for chunk in chunks:
        yield chunk


class GatewayStream:
    """A started stream: stats and overhead are known (send them as headers), chunks follow.

    Iterate it once; always ``await stream.aclose()`` (the front end does it in ``finally``), which
    closes the upstream request and frees the in-flight slot. A failure after the first chunk raises
    a PromptwireError from the iteration; the front end ends the client's stream with an error.

    Response hooks that stream chunk by chunk report their stats at the end: they are appended to
    ``stats`` then (the gRPC front end's final message and trailers carry them) and the last chunk is
    held back one step so that they can ride on it as ``promptwire.stats`` (for SSE clients)."""

    def __init__(
        self,
        gateway: Gateway,
        req: GatewayRequest,
        it: AsyncIterator[StreamChunk],
        first: StreamChunk | None,
        stats: list[StageStats],
        overhead_ms: float,
        deadline: float | None,
        t0: float,
        trace: RequestTrace | None = None,
        hooks: list[ResponseHook] | None = None,
    ) -> None:
        self.request = req
        self.stats = stats
        self.overhead_ms = overhead_ms
        self.usage: Usage | None = None
        self._gw = gateway
        self._upstream = it
        self._hooks = hooks or []
        self._it = hooked_stream(_prepend(first, it), self._hooks) if self._hooks else it
        self._first = None if self._hooks else first
        self._no_first = first is None and not self._hooks  # the upstream's stream ended at once
        self._deadline = deadline
        self._t0 = t0
        self._closed = False
        self._ok = False
        self._trace = trace

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        chunks = self._with_stats() if self._hooks else self._chunks()
        if self._trace is None:
            return chunks
        return self._traced(self._trace, chunks)

    async def _traced(self, trace: RequestTrace, chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        """The chunks, noted in the request's trace (finish reasons; an error after the start)."""
        try:
            async for chunk in chunks:
                trace.chunk(chunk)
                yield chunk
        except Exception as e:
            trace.stream_error(e)
            raise

    async def _with_stats(self) -> AsyncIterator[StreamChunk]:
        """The hooked chunks, the last one held back to carry the hooks' stats."""
        last: StreamChunk | None = None
        async for chunk in self._chunks():
            if last is not None:
                yield last
            last = chunk
        extra = hook_stats(self._hooks)
        for st in extra:
            self.stats.append(st)
            self._gw.pipeline.observe(st)
        if last is not None:
            if extra:
                ext = dict(last.data.get("promptwire") or {})
                ext["stats"] = [s.to_dict() for s in self.stats]
                last = StreamChunk({**last.data, "promptwire": ext})
            yield last

    async def _chunks(self) -> AsyncIterator[StreamChunk]:
        it = self._it
        if self._first is not None:
            first, self._first = self._first, None
            self._note(first)
            yield first
        elif self._no_first:
            self._ok = True
            return
        deadline = self._deadline
        while True:
            # no timer per chunk (they cost more than the rest of the relay): the provider bounds its
            # reads by the request's deadline, and the clock is checked as each chunk arrives
            try:
                chunk = await anext(it)
            except StopAsyncIteration:
                self._ok = True
                return
            if deadline is not None and time.monotonic() > deadline:
                raise RequestTimeout("the request's time limit passed while streaming")
            self._note(chunk)
            yield chunk

    def _note(self, chunk: StreamChunk) -> None:
        if chunk.has_usage():
            self.usage = chunk.usage

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._it is not self._upstream:
                await aclose_stream(self._it)
            await aclose_stream(self._upstream)
        finally:
            self._gw.admission.release()
            if self._trace is not None:
                self._trace.end_stream(self._ok, self.usage)
            m = self._gw.metrics
            m.child(m.total_seconds, self.request.kind).observe(time.perf_counter() - self._t0)
            if self.usage is not None:
                m.child(m.tokens_in, m.model_label(self.request.model)).inc(self.usage.prompt_tokens)
                m.child(m.tokens_out, m.model_label(self.request.model)).inc(self.usage.completion_tokens)


async def _discard_opened(opened: tuple[AsyncIterator[StreamChunk], StreamChunk | None, list[ResponseHook]]) -> None:
    """Close a stream that was opened for a request that then failed before it started."""
    await aclose_stream(opened[0])
