"""The pipeline: which stages run for a request (route config, per-request overrides, key permissions),
running them, and running their response hooks over the answer (whole or streamed)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gateway.config.base import ConfigError
from gateway.config.schema import GatewayConfig
from gateway.core.policy import ApiKey
from gateway.core.routing import Route
from gateway.errors import InvalidRequest, OptionNotAllowed, PermissionDenied
from gateway.observe.metrics import Metrics
from gateway.stages.base import ResponseHook, Stage, StageDeps
from gateway.stages.table import OptionError, StageEntry, check_option_values, load_factory
from gateway.types import Completion, GatewayRequest, StageStats, StreamChunk

if TYPE_CHECKING:
    from gateway.observe.tracing import RequestTrace

__all__ = ["Pending", "Pipeline", "Plan", "hook_stats", "hooked_completion", "hooked_stream"]

logger = logging.getLogger(__name__)

Plan = tuple[tuple[Stage, Mapping[str, Any]], ...]
"""The stages to run for one request, in order, each with its validated options."""

Pending = list[tuple[int, "asyncio.Future[StageStats]"]]
"""(position in the request's stats, the future of that stage's final stats) for stages whose stats are
completed off the request path."""


class Pipeline:
    """The stages of one gateway, built from the table at start."""

    def __init__(self, config: GatewayConfig, table: Mapping[str, StageEntry], metrics: Metrics) -> None:
        self.config = config
        self.table = table
        self.metrics = metrics
        self.stages: dict[str, Stage] = {}
        self._plans: dict[tuple[int, frozenset[str] | None], Plan] = {}
        self._background: set[asyncio.Task[None]] = set()

    def used(self) -> list[str]:
        """Stages the config mentions (routes, default stages, ``stages.<name>`` sections), in table order."""
        names = {s.name for s in self.config.default_stages}
        names.update(k for k in type(self.config.stages).model_fields if getattr(self.config.stages, k) is not None)
        for route in self.config.models:
            names.update(s.name for s in route.stages or ())
        return [n for n in self.table if n in names] + sorted(names - set(self.table))

    async def start(self, deps: StageDeps) -> None:
        """Build every stage the config uses (a model-bound stage gets its backend through ``deps``)."""
        for name in self.used():
            entry = self.table.get(name)
            if entry is None or entry.factory is None:
                raise InvalidRequest(f"stage {name!r} is reserved but not available in this version of promptwire",
                                     param=f"promptwire.{name}", code="stage_not_available")
            factory = load_factory(entry.factory)
            self.stages[name] = factory(self._stage_config(entry), deps)

    def _stage_config(self, entry: StageEntry) -> Any:
        conf = getattr(self.config.stages, entry.name, None)
        if conf is not None:
            return conf
        try:
            return entry.config.model_validate({})
        except ValidationError as e:
            missing = ", ".join(str(err["loc"][0]) for err in e.errors() if err["loc"])
            raise ConfigError(f"stages.{entry.name}: the stage is used but not configured ({missing} required)") from None

    async def aclose(self) -> None:
        await self.settled()
        for stage in self.stages.values():
            close = getattr(stage, "aclose", None)  # stages holding workers (compress's batcher)
            if close is not None:
                await close()
        self.stages.clear()

    # ----- per request ---------------------------------------------------------------------------

    def plan(self, req: GatewayRequest, route: Route, key: ApiKey | None) -> Plan:
        """The stages to run, with validated options, for this request."""
        allowed = key.stages if key is not None else None
        if not req.stage_options:
            cache_key = (id(route.specs), allowed)
            cached = self._plans.get(cache_key)
            if cached is None:
                cached = tuple(
                    (self.stages[s.name], self.stages[s.name].validate(s.options))
                    for s in route.specs
                    if s.enabled and (allowed is None or s.name in allowed)
                )
                self._plans[cache_key] = cached
            return cached
        by_name = {s.name: s for s in route.specs}
        for name, opts in req.stage_options.items():
            self._check_override(req, name, opts, by_name.get(name), key)
        plan: list[tuple[Stage, Mapping[str, Any]]] = []
        for spec in route.specs:
            client = req.stage_options.get(spec.name)
            if client is False or (allowed is not None and spec.name not in allowed):
                continue
            stage = self.stages[spec.name]
            if client is None:
                if spec.enabled:
                    plan.append((stage, stage.validate(spec.options)))
            else:
                plan.append((stage, stage.validate({**spec.options, **client})))
        return tuple(plan)

    def _check_override(self, req: GatewayRequest, name: str, opts: Any, spec: Any, key: ApiKey | None) -> None:
        """One ``promptwire.<stage>`` entry of a request: a known, built, enabled, permitted stage, with
        options the table accepts and the operator lets clients set."""
        param = f"promptwire.{name}"
        entry = self.table.get(name)
        if entry is None:
            raise InvalidRequest(
                f"unknown promptwire option {name!r} (stages: {', '.join(self.table)}; and 'decoder')", param=param)
        if opts is not False and not isinstance(opts, Mapping):
            raise InvalidRequest(f"{param} must be an object of options or false", param=param)
        if entry.factory is None:
            raise InvalidRequest(f"stage {name!r} is reserved but not available in this version of promptwire",
                                 param=param, code="stage_not_available")
        if spec is None:
            raise OptionNotAllowed(f"stage {name!r} is not enabled for model {req.model!r}", param=param)
        if key is not None and not key.allows_stage(name) and opts is not False:
            raise PermissionDenied(f"this API key may not use stage {name!r}", param=param)
        if opts is False:
            if spec.enabled and not spec.client_can_disable:
                raise OptionNotAllowed(f"stage {name!r} cannot be turned off for this model", param=param)
            return
        if not spec.enabled and not spec.client_can_enable:
            raise OptionNotAllowed(f"stage {name!r} cannot be turned on for this model", param=param)
        try:
            check_option_values(entry.options, opts, f"stage {name!r}")
        except OptionError as e:
            raise InvalidRequest(str(e), param=f"{param}.{e.option}") from None
        self.stages[name].validate(opts)  # values that only the stage can judge, before permissions
        if "*" not in spec.client_options:
            for opt in opts:
                if opt not in spec.client_options:
                    raise OptionNotAllowed(
                        f"option {opt!r} of stage {name!r} may not be set by clients for this model",
                        param=f"{param}.{opt}")

    async def run(
        self, req: GatewayRequest, plan: Plan, rt: RequestTrace | None = None
    ) -> tuple[GatewayRequest, list[StageStats], list[ResponseHook], Pending]:
        """Run the plan; returns the rewritten request, each stage's stats, the response hooks, and the
        stats still being completed off the request path (see :meth:`settle`)."""
        stats: list[StageStats] = []
        hooks: list[ResponseHook] = []
        pending: Pending = []
        try:
            for stage, opts in plan:
                result = await (stage.apply(req, opts) if rt is None else rt.stage(stage, req, opts))
                req = result.request
                if result.settle is not None:
                    pending.append((len(stats), result.settle))  # observed once settled
                else:
                    self.observe(result.stats)
                stats.append(result.stats)
                if result.hook is not None:
                    hooks.append(result.hook)
        except BaseException:
            self.settle_later(stats, pending)
            raise
        return req, stats, hooks, pending

    def settle_later(self, stats: list[StageStats], pending: Pending) -> None:
        """The request failed after stages deferred their stats: complete them in the background for the
        metrics, which count every request that reached a stage (its time, the tokens it saved)."""
        if not pending:
            return
        task = asyncio.get_running_loop().create_task(self.settle(list(stats), pending))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settled(self) -> None:
        """Wait for :meth:`settle_later` work still running (shutdown, tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def settle(self, stats: list[StageStats], pending: Pending, rt: RequestTrace | None = None) -> None:
        """Put each pending stage's final stats in its place in ``stats`` (``StageResult.settle``)."""
        for i, future in pending:
            try:
                st = await future
            except Exception:
                logger.warning("stage %s: its stats could not be completed; reporting what it knew when it ran",
                               stats[i].stage, exc_info=True)
                st = stats[i]
            stats[i] = st
            self.observe(st)
            if rt is not None:
                rt.settled(st)

    def observe(self, st: StageStats) -> None:
        self.metrics.child(self.metrics.stage_seconds, st.stage).observe(st.ms / 1000)
        if st.tokens_saved > 0:  # a stage may add tokens (conjugate); the counter only counts savings
            self.metrics.child(self.metrics.tokens_saved, st.stage).inc(st.tokens_saved)


async def hooked_completion(completion: Completion, hooks: Sequence[ResponseHook]) -> Completion:
    """The whole response through every hook, last stage's first."""
    for hook in reversed(hooks):
        completion = await hook.completion(completion)
    return completion


def hooked_stream(chunks: AsyncIterator[StreamChunk], hooks: Sequence[ResponseHook]) -> AsyncIterator[StreamChunk]:
    """The stream through every hook, last stage's first (the first stage's hook is outermost)."""
    for hook in reversed(hooks):
        chunks = hook.stream(chunks)
    return chunks


def hook_stats(hooks: Sequence[ResponseHook]) -> list[StageStats]:
    """What the hooks report once the answer has gone through, in stage order."""
    out = []
    for hook in hooks:
        st = hook.stats()
        if st is not None:
            out.append(st)
    return out
