"""The gateway core both front ends call: auth, admission, routing, stages, provider calls, stats."""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.config import GatewayConfig, StageSpec
from gateway.errors import (
    AuthenticationError,
    InvalidRequest,
    NoBackend,
    NotFound,
    OptionNotAllowed,
    Overloaded,
    PermissionDenied,
    PromptTooLarge,
    PromptwireError,
    RequestTimeout,
    ShuttingDown,
    UpstreamError,
    UpstreamStatusError,
)
from gateway.observe.metrics import Metrics
from gateway.providers.base import Provider, ProviderFactory
from gateway.stages.base import IMPLEMENTED_DECODERS, RESERVED_DECODERS, RESERVED_STAGES, Stage, StageFactory
from gateway.observe.tracing import RequestTrace, Tracer
from gateway.types import Completion, GatewayRequest, ModelInfo, StageStats, StreamChunk, Usage

if TYPE_CHECKING:
    from gateway.stages.compress_api import CompressAPI

T = TypeVar("T")

__all__ = ["NO_BACKEND_MESSAGE", "ApiKey", "Gateway", "GatewayStream"]

logger = logging.getLogger(__name__)

NO_BACKEND_MESSAGE = (
    "no backend is configured for generation. Start the gateway with an OpenAI-compatible upstream "
    "(`promptwire serve --upstream http://HOST:PORT/v1`), a local model (`promptwire serve --model PATH`), "
    "or a config file with a `backends:` section (`promptwire serve --config FILE`; see docs/gateway.md)."
)
_MODELS_CACHE_S = 5.0


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An authenticated client key (the secret itself is never kept)."""

    id: str
    models: tuple[str, ...]
    stages: frozenset[str] | None

    def allows_model(self, model: str) -> bool:
        return any(p == "*" or p == model or fnmatch.fnmatchcase(model, p) for p in self.models)


@dataclass(frozen=True, slots=True)
class _Route:
    providers: tuple[Provider, ...]
    upstream_model: str | None
    specs: tuple[StageSpec, ...]


_Plan = tuple[tuple[Stage, Mapping[str, Any]], ...]


def _failover_ok(err: PromptwireError) -> bool:
    """Whether another upstream might succeed where this one failed."""
    if isinstance(err, UpstreamStatusError):
        return err.upstream_status == 429 or err.upstream_status >= 500
    return isinstance(err, UpstreamError)


class Gateway:
    """One gateway instance: built from config, started once, shared by the HTTP and gRPC front ends."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        providers: Mapping[str, ProviderFactory] | None = None,
        stages: Mapping[str, StageFactory] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if providers is None:
            from gateway.providers import PROVIDERS

            providers = PROVIDERS
        if stages is None:
            from gateway.stages import STAGES

            stages = STAGES
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self._provider_factories = providers
        self._stage_factories = stages
        self._providers: dict[str, Provider] = {}
        self._stages: dict[str, Stage] = {}
        self._keys = tuple(
            (bytes.fromhex(k.sha256), ApiKey(k.id, k.models, None if k.stages is None else frozenset(k.stages)))
            for k in config.auth.keys
        )
        self._keys_by_id = {key.id: key for _, key in self._keys}
        self._routes: dict[str, _Route] = {}
        self._plans: dict[tuple[int, frozenset[str] | None], _Plan] = {}
        self._discovered: dict[str, frozenset[str]] = {}
        self._models_cache: tuple[float, list[ModelInfo]] | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down = False
        self._started = False
        self.tracer = Tracer(config.otel)
        self.metrics.in_flight.set_function(lambda: self._in_flight)  # read at scrape time: free per request
        self._log_prompts = config.server.log_prompts
        self.compress_api: CompressAPI | None = None
        """Serves POST /v1/compress and gRPC Compress; set at start when ``stages.compress`` is configured."""

    # ----- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build providers and stages, discover upstream models (failures are logged, not fatal)."""
        if self._started:
            return
        for name, bc in self.config.backends.items():
            factory = self._provider_factories.get(bc.type)
            if factory is None:
                raise NoBackend(
                    f"backend {name!r} has type {bc.type!r}, which this build does not provide "
                    f"(available: {', '.join(sorted(self._provider_factories)) or 'none'})"
                )
            self._providers[name] = factory(name, bc, self.metrics)
        used = {s.name for s in self.config.default_stages} | set(self.config.stages)
        for route in self.config.models:
            used.update(s.name for s in route.stages or ())
        for name in sorted(used):
            self._stages[name] = self._build_stage(name)
        compress = self._stages.get("compress")
        if compress is not None:
            from gateway.stages.compress_api import CompressAPI
            from gateway.stages.compress import CompressStage

            if isinstance(compress, CompressStage):
                self.compress_api = CompressAPI.from_stage(compress)
        for name, prov in self._providers.items():
            if self.config.backends[name].models is None:
                try:
                    self._discovered[name] = frozenset(m.id for m in await prov.list_models())
                except PromptwireError as e:
                    logger.warning("backend %s: model discovery failed: %s", name, e.message)
        self.metrics.known_models(self._served_names(limit=None))  # their labels never fall into "other"
        self._started = True

    def _build_stage(self, name: str) -> Stage:
        factory = self._stage_factories.get(name)
        if factory is None:
            raise InvalidRequest(
                f"stage {name!r} is reserved but not available in this version of promptwire",
                param=f"promptwire.{name}",
                code="stage_not_available",
            )
        return factory(self.config.stages.get(name, {}))

    async def aclose(self) -> None:
        for prov in self._providers.values():
            await prov.aclose()
        self._providers.clear()
        for stage in self._stages.values():
            close = getattr(stage, "aclose", None)  # stages holding workers (compress's batcher)
            if close is not None:
                await close()
        self._stages.clear()
        if self.tracer.enabled:
            await asyncio.to_thread(self.tracer.shutdown)  # flush spans (the exporter may block)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def begin_shutdown(self) -> None:
        """Stop admitting requests (readiness false); in-flight ones continue."""
        self._shutting_down = True

    async def drain(self, grace_s: float) -> bool:
        """Wait up to ``grace_s`` for in-flight requests to finish; True if all did."""
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def ready(self) -> bool:
        """Started, not shutting down, and some backend ready (failover covers the others; no backend
        at all counts as ready: health, models and metrics still work)."""
        if not self._started or self._shutting_down:
            return False
        if not self._providers:
            return True
        results = await asyncio.gather(*(p.ready() for p in self._providers.values()))
        return any(results)

    # ----- auth and admission ----------------------------------------------------------------------

    @property
    def auth_enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, api_key: str | None) -> ApiKey | None:
        """The key's record, None when auth is off; AuthenticationError for a missing/unknown key."""
        if not self._keys:
            return None
        if not api_key:
            raise AuthenticationError("missing API key (send `Authorization: Bearer <key>`)")
        digest = hashlib.sha256(api_key.encode()).digest()
        found: ApiKey | None = None
        for stored, key in self._keys:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(stored, digest):
                found = key
        if found is None:
            raise AuthenticationError("invalid API key")
        return found

    async def compress(self, key: ApiKey | None, handle: Callable[[CompressAPI], Awaitable[T]]) -> T:
        """Run a /v1/compress or gRPC Compress call under the same key permissions and in-flight limit."""
        if self.compress_api is None:
            raise NoBackend(
                "no compressor is configured: set stages.compress.model to an exported LLMLingua-2 model, a "
                "checkpoint directory or a Hugging Face id (see docs/compress-serving.md)",
                code="no_compressor",
            )
        if key is not None and key.stages is not None and "compress" not in key.stages:
            raise PermissionDenied(f"API key {key.id!r} may not use the compress stage", param="promptwire.compress")
        self._admit()
        try:
            return await handle(self.compress_api)
        finally:
            self._release()

    def _admit(self) -> None:
        if self._shutting_down:
            raise ShuttingDown("the gateway is shutting down; retry on another replica")
        limit = self.config.limits.max_in_flight
        if self._in_flight >= limit:
            raise Overloaded(
                f"too many requests in flight (limit {limit}); retry later",
                retry_after=self.config.limits.retry_after_s,
            )
        self._in_flight += 1
        self._idle.clear()

    def _release(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    # ----- routing and pipeline --------------------------------------------------------------------

    def _route(self, model: str) -> _Route:
        route = self._routes.get(model)
        if route is not None:
            return route
        if not self._providers:
            raise NoBackend(NO_BACKEND_MESSAGE)
        specs = self.config.default_stages
        names: Sequence[str] = ()
        upstream_model = None
        for r in self.config.models:
            if r.match == model or fnmatch.fnmatchcase(model, r.match):
                names, upstream_model = r.backends, r.upstream_model
                if r.stages is not None:
                    specs = r.stages
                break
        if not names:
            names = [n for n, bc in self.config.backends.items() if bc.models and model in bc.models]
        if not names:
            names = [n for n, ms in self._discovered.items() if model in ms]
        if not names:
            default = self.config.default_backend_name()
            assert default is not None  # providers non-empty implies a backend
            if self.config.backends[default].type == "local":
                # an upstream server answers for its own models; a local backend serves a fixed list
                raise NotFound(f"the model {model!r} does not exist (served here: "
                               f"{', '.join(self._served_names()) or 'none'})", param="model")
            names = [default]
        route = _Route(tuple(self._providers[n] for n in names), upstream_model, specs)
        if len(self._routes) < 10_000:  # bounded: model names come from clients
            self._routes[model] = route
        return route

    def _served_names(self, limit: int | None = 20) -> list[str]:
        names = {m for ms in self._discovered.values() for m in ms}
        names.update(m for bc in self.config.backends.values() for m in (bc.models or ()))
        names.update(r.match for r in self.config.models if not any(c in r.match for c in "*?["))
        return sorted(names)[:limit]

    def _plan(self, req: GatewayRequest, route: _Route, key: ApiKey | None) -> _Plan:
        """The stages to run, with validated options, for this request."""
        allowed = key.stages if key is not None else None
        if not req.stage_options:
            cache_key = (id(route.specs), allowed)
            cached = self._plans.get(cache_key)
            if cached is None:
                cached = tuple(
                    (self._stages[s.name], self._stages[s.name].validate(s.options))
                    for s in route.specs
                    if s.enabled and (allowed is None or s.name in allowed)
                )
                self._plans[cache_key] = cached
            return cached
        by_name = {s.name: s for s in route.specs}
        for name, opts in req.stage_options.items():
            param = f"promptwire.{name}"
            if name not in RESERVED_STAGES:
                raise InvalidRequest(
                    f"unknown promptwire option {name!r} (stages: {', '.join(RESERVED_STAGES)}; and 'decoder')",
                    param=param,
                )
            if opts is not False and not isinstance(opts, Mapping):
                raise InvalidRequest(f"{param} must be an object of options or false", param=param)
            if name not in self._stage_factories:
                raise InvalidRequest(
                    f"stage {name!r} is reserved but not available in this version of promptwire",
                    param=param,
                    code="stage_not_available",
                )
            spec = by_name.get(name)
            if spec is None:
                raise OptionNotAllowed(f"stage {name!r} is not enabled for model {req.model!r}", param=param)
            if allowed is not None and name not in allowed and opts is not False:
                raise PermissionDenied(f"this API key may not use stage {name!r}", param=param)
            if opts is False:
                if spec.enabled and not spec.client_can_disable:
                    raise OptionNotAllowed(f"stage {name!r} cannot be turned off for this model", param=param)
                continue
            if not spec.enabled and not spec.client_can_enable:
                raise OptionNotAllowed(f"stage {name!r} cannot be turned on for this model", param=param)
            stage = self._stages[name]
            stage.validate(opts)  # unknown option names / bad values first: 400 naming them
            if "*" not in spec.client_options:
                for opt in opts:
                    if opt not in spec.client_options:
                        raise OptionNotAllowed(
                            f"option {opt!r} of stage {name!r} may not be set by clients for this model",
                            param=f"{param}.{opt}",
                        )
        plan: list[tuple[Stage, Mapping[str, Any]]] = []
        for spec in route.specs:
            client = req.stage_options.get(spec.name)
            if client is False or (allowed is not None and spec.name not in allowed):
                continue
            if client is None:
                if not spec.enabled:
                    continue
                plan.append((self._stages[spec.name], self._stages[spec.name].validate(spec.options)))
            else:
                stage = self._stages[spec.name]
                plan.append((stage, stage.validate({**spec.options, **client})))
        return tuple(plan)

    def _check_decoder(self, req: GatewayRequest, route: _Route) -> None:
        d = req.decoder
        if d is None:
            return
        name = d.get("name")
        if name not in RESERVED_DECODERS:
            raise InvalidRequest(
                f"promptwire.decoder.name must be one of {', '.join(RESERVED_DECODERS)}, got {name!r}",
                param="promptwire.decoder.name",
            )
        if name not in IMPLEMENTED_DECODERS:
            raise InvalidRequest(
                f"decoder {name!r} is reserved but not available in this version of promptwire "
                f"(available: {', '.join(sorted(IMPLEMENTED_DECODERS))})",
                param="promptwire.decoder.name",
                code="decoder_not_available",
            )
        if not all(name in p.decoders for p in route.providers):
            raise InvalidRequest(
                f"decoder {name!r} is not available for model {req.model!r}: its backend cannot run it "
                "(the local provider runs every decoder; an openai backend runs 'trie' when "
                "structured_choice is configured)",
                param="promptwire.decoder.name",
                code="decoder_not_available",
            )

    def _check_limits(self, req: GatewayRequest) -> None:
        lim = self.config.limits
        if lim.max_prompt_chars is None and lim.max_prompt_tokens is None:
            return
        text = req.prompt_text()
        tools = req.params.get("tools")
        if tools:  # tool definitions are prompt too (the upstream renders them into it)
            text += "\n" + json.dumps(tools, ensure_ascii=False, separators=(",", ":"))
        ids = req.prompt_token_ids()  # completion prompts given as token ids: each is at least a character
        if lim.max_prompt_chars is not None and len(text) + ids > lim.max_prompt_chars:
            raise PromptTooLarge(
                f"prompt has {len(text) + ids} characters, over the limit of {lim.max_prompt_chars}",
                param="messages" if req.kind == "chat" else "prompt",
            )
        if lim.max_prompt_tokens is not None:
            from gateway.tokens import count_tokens

            n = ids + (count_tokens(text) if text else 0)
            if n > lim.max_prompt_tokens:
                raise PromptTooLarge(
                    f"prompt has {n} tokens, over the limit of {lim.max_prompt_tokens}",
                    param="messages" if req.kind == "chat" else "prompt",
                )

    async def _prepare(
        self, req: GatewayRequest, deadline: float | None, rt: RequestTrace | None = None
    ) -> tuple[GatewayRequest, _Route, list[StageStats]]:
        """Checks, routing and stages: everything before the provider call."""
        key = self._keys_by_id.get(req.api_key_id) if req.api_key_id is not None else None
        if self._keys and key is None:
            raise AuthenticationError("missing or invalid API key")
        if key is not None and not key.allows_model(req.model):
            raise PermissionDenied(f"this API key may not use model {req.model!r}", param="model")
        self._check_limits(req)
        route = self._route(req.model)
        self._check_decoder(req, route)
        plan = self._plan(req, route, key)
        if self._log_prompts and logger.isEnabledFor(logging.DEBUG):  # operator opted in (log_prompts)
            logger.debug("request %s prompt: %s", req.request_id, req.prompt_text(),
                         extra={"request_id": req.request_id})
        stats: list[StageStats] = []
        for stage, opts in plan:
            req, st = await (stage.apply(req, opts) if rt is None else rt.stage(stage, req, opts))
            stats.append(st)
            self.metrics.child(self.metrics.stage_seconds, st.stage).observe(st.ms / 1000)
            if st.tokens_saved:
                self.metrics.child(self.metrics.tokens_saved, st.stage).inc(st.tokens_saved)
        if route.upstream_model is not None or deadline != req.deadline:
            req = dataclasses.replace(req, model=route.upstream_model or req.model, deadline=deadline)
        return req, route, stats

    def _deadline(self, req: GatewayRequest) -> float | None:
        """Absolute monotonic deadline: the front end's (gRPC deadline) or the configured timeout."""
        deadline = req.deadline
        timeout = self.config.limits.request_timeout_s
        if timeout is not None:
            own = time.monotonic() + timeout
            deadline = own if deadline is None else min(deadline, own)
        return deadline

    # ----- generation ------------------------------------------------------------------------------

    async def generate(
        self, req: GatewayRequest, *, trace_headers: Iterable[tuple[Any, Any]] | None = None
    ) -> tuple[Completion, list[StageStats], float]:
        """One whole response, the stages' stats and the gateway's overhead in ms.

        ``trace_headers``: the client's request headers (ASGI) or gRPC metadata; with tracing on, a W3C
        ``traceparent`` there makes this request's spans part of the client's trace."""
        t0 = req.received_at or time.perf_counter()
        rt = self.tracer.request(req, trace_headers) if self.tracer.enabled else None
        completion, stats, _, t1, t2 = await self._admitted(
            req, rt, self._call, "request did not finish", hold=False)
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

    async def _admitted(
        self, req: GatewayRequest, rt: RequestTrace | None,
        upstream: Callable[[GatewayRequest, _Route, RequestTrace | None], Awaitable[T]], what: str, *, hold: bool,
    ) -> tuple[T, list[StageStats], float | None, float, float]:
        """Admit the request (in-flight limit), then within its deadline run the checks and stages and
        ``upstream``. Returns upstream's result, the stages' stats, the deadline, and when the
        upstream call began and ended (``perf_counter``). The in-flight slot is released on the way out,
        or kept on success when ``hold`` (a stream releases it at its end); failures reach the trace."""
        try:
            self._admit()
            try:
                deadline = self._deadline(req)
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    async with asyncio.timeout(remaining):
                        req2, route, stats = await self._prepare(req, deadline, rt)
                        t1 = time.perf_counter()
                        result = await upstream(req2, route, rt)
                        t2 = time.perf_counter()
                except TimeoutError:
                    raise RequestTimeout(f"{what} within {remaining:.3g} s") from None
            except BaseException:
                self._release()
                raise
        except BaseException as e:
            if rt is not None:
                rt.fail(e)
            raise
        if not hold:
            self._release()
        return result, stats, deadline, t1, t2

    def _note_failover(self, req: GatewayRequest, route: _Route, prov: Provider, e: PromptwireError) -> None:
        if prov is not route.providers[-1]:  # the last one has nowhere to fail over to
            logger.warning("request %s: backend %s failed (%s); failing over", req.request_id, prov.name, e.message,
                           extra={"request_id": req.request_id})
            self.metrics.child(self.metrics.upstream_retries, prov.name, "failover").inc()

    async def _call(self, req: GatewayRequest, route: _Route, rt: RequestTrace | None = None) -> Completion:
        last: PromptwireError | None = None
        for prov in route.providers:
            ta = time.perf_counter()
            try:
                if rt is None:
                    return await prov.generate(req)
                with rt.upstream(prov.name, req.model, stream=False):
                    return await prov.generate(req)
            except PromptwireError as e:
                if not _failover_ok(e):
                    raise
                last = e
                self._note_failover(req, route, prov, e)
            finally:  # every attempt, under the backend that made it
                self.metrics.child(self.metrics.upstream_seconds, prov.name).observe(time.perf_counter() - ta)
        assert last is not None
        raise last

    async def generate_stream(
        self, req: GatewayRequest, *, trace_headers: Iterable[tuple[Any, Any]] | None = None
    ) -> GatewayStream:
        """Run stages and connect upstream until the first chunk is in hand (errors until then are
        ordinary exceptions the front end maps to a status); then stream the rest. ``trace_headers``:
        as for :meth:`generate`."""
        t0 = req.received_at or time.perf_counter()
        rt = self.tracer.request(req, trace_headers) if self.tracer.enabled else None
        # held: the stream releases its in-flight slot when it ends
        (it, first), stats, deadline, t1, t2 = await self._admitted(
            req, rt, self._open_stream, "no response", hold=True)
        overhead_ms = (t1 - t0) * 1000
        m = self.metrics
        m.child(m.overhead_seconds, req.kind).observe(t1 - t0)
        m.child(m.ttft_seconds, m.model_label(req.model)).observe(t2 - t0)
        if rt is not None:
            rt.opened(overhead_ms, (t2 - t0) * 1000)
        return GatewayStream(self, req, it, first, stats, overhead_ms, deadline, t0, rt)

    async def _open_stream(
        self, req: GatewayRequest, route: _Route, rt: RequestTrace | None = None
    ) -> tuple[AsyncIterator[StreamChunk], StreamChunk | None]:
        last: PromptwireError | None = None
        for prov in route.providers:
            it = prov.generate_stream(req)
            ta = time.perf_counter()
            try:
                if rt is None:
                    first = await anext(it)
                else:
                    with rt.upstream(prov.name, req.model, stream=True):
                        first = await anext(it)
                return it, first
            except StopAsyncIteration:
                return it, None
            except PromptwireError as e:
                await _aclose(it)
                if not _failover_ok(e):
                    raise
                last = e
                self._note_failover(req, route, prov, e)
            except BaseException:
                await _aclose(it)
                raise
            finally:  # every attempt, until its first chunk, under the backend that made it
                self.metrics.child(self.metrics.upstream_seconds, prov.name).observe(time.perf_counter() - ta)
        assert last is not None
        raise last

    async def list_models(self, key: ApiKey | None = None) -> list[ModelInfo]:
        """Models of every backend (cached a few seconds); a backend that fails is left out. With a
        key, only the models that key may use."""
        models = await self._all_models()
        if key is None:
            return models
        return [m for m in models if key.allows_model(m.id)]

    async def _all_models(self) -> list[ModelInfo]:
        now = time.monotonic()
        if self._models_cache is not None and now - self._models_cache[0] < _MODELS_CACHE_S:
            return self._models_cache[1]
        seen: dict[str, ModelInfo] = {}
        for name, prov in self._providers.items():
            try:
                for m in await prov.list_models():
                    seen.setdefault(m.id, m)
            except PromptwireError as e:
                logger.warning("backend %s: listing models failed: %s", name, e.message)
        for route in self.config.models:
            if not any(c in route.match for c in "*?["):
                seen.setdefault(route.match, ModelInfo(route.match))
        models = list(seen.values())
        self._models_cache = (now, models)
        return models


async def _aclose(it: AsyncIterator[StreamChunk]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


class GatewayStream:
    """A started stream: stats and overhead are known (send them as headers), chunks follow.

    Iterate it once; always ``await stream.aclose()`` (the front end does it in ``finally``), which
    closes the upstream request and frees the in-flight slot. A failure after the first chunk raises
    a PromptwireError from the iteration; the front end ends the client's stream with an error."""

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
    ) -> None:
        self.request = req
        self.stats = stats
        self.overhead_ms = overhead_ms
        self.usage: Usage | None = None
        self._gw = gateway
        self._it = it
        self._first = first
        self._deadline = deadline
        self._t0 = t0
        self._closed = False
        self._ok = False
        self._trace = trace

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        if self._trace is None:
            return self._chunks()
        return self._traced(self._trace)

    async def _traced(self, trace: RequestTrace) -> AsyncIterator[StreamChunk]:
        """The chunks, noted in the request's trace (finish reasons; an error after the start)."""
        try:
            async for chunk in self._chunks():
                trace.chunk(chunk)
                yield chunk
        except Exception as e:
            trace.stream_error(e)
            raise

    async def _chunks(self) -> AsyncIterator[StreamChunk]:
        if self._first is None:
            self._ok = True
            return
        first, self._first = self._first, None
        self._note(first)
        yield first
        deadline = self._deadline
        it = self._it
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
            await _aclose(self._it)
        finally:
            self._gw._release()
            if self._trace is not None:
                self._trace.end_stream(self._ok, self.usage)
            m = self._gw.metrics
            m.child(m.total_seconds, self.request.kind).observe(time.perf_counter() - self._t0)
            if self.usage is not None:
                m.child(m.tokens_in, m.model_label(self.request.model)).inc(self.usage.prompt_tokens)
                m.child(m.tokens_out, m.model_label(self.request.model)).inc(self.usage.completion_tokens)
