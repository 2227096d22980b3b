"""Routing: which backends serve a model (routes, listed and discovered models), decoder availability,
and calling them with failover (whole responses, and streams until their first chunk)."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.schema import GatewayConfig, StageSpec
from gateway.errors import (
    InvalidRequest,
    NoBackend,
    NotFound,
    PromptwireError,
    UpstreamError,
    UpstreamStatusError,
)
from gateway.observe.metrics import Metrics
from gateway.providers.base import Provider, ProviderFactory
from gateway.stages.table import DecoderEntry, OptionError, check_option_values
from gateway.types import Completion, GatewayRequest, ModelInfo, StreamChunk

if TYPE_CHECKING:
    from gateway.observe.tracing import RequestTrace

__all__ = ["NO_BACKEND_MESSAGE", "Route", "Router", "aclose_stream"]

logger = logging.getLogger(__name__)

NO_BACKEND_MESSAGE = (
    "no backend is configured for generation. Start the gateway with an OpenAI-compatible upstream "
    "(`promptwire serve --upstream http://HOST:PORT/v1`), a local model (`promptwire serve --model PATH`), "
    "or a config file with a `backends:` section (`promptwire serve --config FILE`; see docs/gateway.md)."
)
_MODELS_CACHE_S = 5.0
_MAX_ROUTES = 10_000  # model names come from clients: the cache of resolved routes is bounded
_P = "promptwire.decoder."


@dataclass(frozen=True, slots=True)
class Route:
    """Where one model's requests go and which stages they pass."""

    providers: tuple[Provider, ...]
    """In failover order."""
    upstream_model: str | None
    specs: tuple[StageSpec, ...]
    openai_limits: bool = True
    """Whether OpenAI's value limits apply: unless every backend of the route opted out."""


def _failover_ok(err: PromptwireError) -> bool:
    """Whether another upstream might succeed where this one failed."""
    if isinstance(err, UpstreamStatusError):
        return err.upstream_status == 429 or err.upstream_status >= 500
    return isinstance(err, UpstreamError)


async def aclose_stream(it: AsyncIterator[StreamChunk]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


class Router:
    """The backends of one gateway and the routes to them."""

    def __init__(self, config: GatewayConfig, factories: Mapping[str, ProviderFactory], metrics: Metrics,
                 decoders: Mapping[str, DecoderEntry]) -> None:
        self.config = config
        self.metrics = metrics
        self.providers: dict[str, Provider] = {}
        self._factories = factories
        self._decoders = decoders
        self._routes: dict[str, Route] = {}
        self._discovered: dict[str, frozenset[str]] = {}
        self._models_cache: tuple[float, list[ModelInfo]] | None = None

    async def start(self) -> None:
        """Build every backend's provider (a local model loads here)."""
        for name, bc in self.config.backends.items():
            factory = self._factories.get(bc.type)
            if factory is None:
                raise NoBackend(
                    f"backend {name!r} has type {bc.type!r}, which this build does not provide "
                    f"(available: {', '.join(sorted(self._factories)) or 'none'})"
                )
            self.providers[name] = factory(name, self.config.backend(name), self.metrics)
        # Decoder sections (decoders.<name>) go to every provider that runs decoders in-process.
        sections = {n: s.model_dump() for n, s in self.config.decoders if s is not None}
        for prov in self.providers.values():
            prepare = getattr(prov, "prepare_decoders", None)
            if prepare is not None:
                await asyncio.to_thread(prepare, sections)

    async def discover(self) -> None:
        """Ask upstreams without a configured model list what they serve (failures are logged, not fatal)."""
        for name, prov in self.providers.items():
            if self.config.backends[name].models is None:
                try:
                    self._discovered[name] = frozenset(m.id for m in await prov.list_models())
                except PromptwireError as e:
                    logger.warning("backend %s: model discovery failed: %s", name, e.message)
        self.metrics.known_models(self.served_names(limit=None))  # their labels never fall into "other"

    async def aclose(self) -> None:
        for prov in self.providers.values():
            await prov.aclose()
        self.providers.clear()

    async def ready(self) -> bool:
        """Some backend ready (failover covers the others); no backend at all counts as ready."""
        if not self.providers:
            return True
        return any(await asyncio.gather(*(p.ready() for p in self.providers.values())))

    # ----- routes --------------------------------------------------------------------------------

    def route(self, model: str) -> Route:
        route = self._routes.get(model)
        if route is not None:
            return route
        if not self.providers:
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
                               f"{', '.join(self.served_names()) or 'none'})", param="model")
            names = [default]
        limits = any(getattr(self.config.backends.get(n), "openai_limits", True) for n in names)
        route = Route(tuple(self.providers[n] for n in names), upstream_model, specs, limits)
        if len(self._routes) < _MAX_ROUTES:
            self._routes[model] = route
        return route

    def served_names(self, limit: int | None = 20) -> list[str]:
        names = {m for ms in self._discovered.values() for m in ms}
        names.update(m for bc in self.config.backends.values() for m in (bc.models or ()))
        names.update(r.match for r in self.config.models if not any(c in r.match for c in "*?["))
        return sorted(names)[:limit]

    def check_decoder(self, req: GatewayRequest, route: Route) -> None:
        """The request's decoder exists, is built, its options fit the table, and the route can run it."""
        d = req.decoder
        if d is None:
            return
        name = d.get("name")
        entry = self._decoders.get(name) if isinstance(name, str) else None
        if entry is None:
            raise InvalidRequest(
                f"promptwire.decoder.name must be one of {', '.join(self._decoders)}, got {name!r}", param=_P + "name")
        if entry.factory is None:
            built = ", ".join(n for n, e in self._decoders.items() if e.factory is not None)
            raise InvalidRequest(f"decoder {name!r} is reserved but not available in this version of promptwire "
                                 f"(available: {built})", param=_P + "name", code="decoder_not_available")
        try:
            check_option_values(entry.options, {k: v for k, v in d.items() if k != "name"}, f"decoder {name!r}")
        except OptionError as e:
            raise InvalidRequest(str(e), param=_P + e.option) from None
        for prov in route.providers:
            if name in prov.decoders:
                continue
            why = entry.local_only or f"backend {prov.name!r} cannot run it"
            raise InvalidRequest(
                f"decoder {name!r} is not available for model {req.model!r}: {why}, so it runs only on a "
                f"backend of type 'local' (the model served in-process); backend {prov.name!r} is an "
                "OpenAI-compatible upstream", param=_P + "name", code="decoder_not_available")

    # ----- calls with failover -------------------------------------------------------------------

    def _note_failover(self, req: GatewayRequest, route: Route, prov: Provider, e: PromptwireError) -> None:
        if prov is not route.providers[-1]:  # the last one has nowhere to fail over to
            logger.warning("request %s: backend %s failed (%s); failing over", req.request_id, prov.name, e.message,
                           extra={"request_id": req.request_id})
            self.metrics.child(self.metrics.upstream_retries, prov.name, "failover").inc()

    async def call(self, req: GatewayRequest, route: Route, rt: RequestTrace | None = None) -> Completion:
        """One whole response from the first backend that gives one."""
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

    async def open_stream(
        self, req: GatewayRequest, route: Route, rt: RequestTrace | None = None
    ) -> tuple[AsyncIterator[StreamChunk], StreamChunk | None]:
        """A stream from the first backend that gives a first chunk (failover until then)."""
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
                await aclose_stream(it)
                if not _failover_ok(e):
                    raise
                last = e
                self._note_failover(req, route, prov, e)
            except BaseException:
                await aclose_stream(it)
                raise
            finally:  # every attempt, until its first chunk, under the backend that made it
                self.metrics.child(self.metrics.upstream_seconds, prov.name).observe(time.perf_counter() - ta)
        assert last is not None
        raise last

    async def list_models(self) -> list[ModelInfo]:
        """Models of every backend (cached a few seconds); a backend that fails is left out."""
        now = time.monotonic()
        if self._models_cache is not None and now - self._models_cache[0] < _MODELS_CACHE_S:
            return self._models_cache[1]
        seen: dict[str, ModelInfo] = {}
        for name, prov in self.providers.items():
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
