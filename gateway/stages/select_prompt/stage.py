"""The `select_prompt` stage: one prompt per request from a named pool — IDP (soft) or IDP-text (text)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.config.base import ConfigError
from gateway.errors import InvalidRequest
from gateway.stages.base import StageResult
from gateway.stages.select_prompt.errors import SelectPromptError
from gateway.stages.select_prompt.text import TextSelector, query_text, with_instruction
from gateway.tokens import count_tokens
from gateway.types import GatewayRequest, StageStats

if TYPE_CHECKING:
    from gateway.config.stages import SelectPromptConfig, SoftPoolConfig, TextPoolConfig
    from gateway.stages.base import ModelAccess, StageDeps

__all__ = ["STAGE", "SelectPromptStage", "SoftPoolRunner", "TextPoolRunner", "make_select_prompt_stage"]

logger = logging.getLogger(__name__)

STAGE = "select_prompt"
_PARAM = "promptwire.select_prompt.pool"
_KEY = "stages.select_prompt"


def _scores(names: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    return {n: round(float(v), 6) for n, v in zip(names, values, strict=True)}


class SoftPoolRunner:
    """IDP over one pool of soft prompts, on its backend's local model."""

    method = "idp"

    def __init__(self, name: str, prompts: Any, names: Sequence[str], access: ModelAccess,
                 layers: Sequence[int] | None) -> None:
        self.name = name
        self.prompts = prompts  # (m, n, d) float32, CPU
        self.names = tuple(names)
        self.access = access
        self.layers = None if layers is None else tuple(layers)

    def _input_ids(self, req: GatewayRequest) -> list[int]:
        """The prompt's token ids exactly as the local provider will tokenise them for generation."""
        if req.kind == "chat":
            if not req.messages:
                raise InvalidRequest("messages must not be empty", param="messages")
            return list(self.access.chat_prompt([{"role": m.role, "content": m.text()} for m in req.messages]))
        p = req.prompt
        if isinstance(p, str):
            return list(self.access.encode(p))
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            return [int(t) for t in p]
        if isinstance(p, list) and len(p) == 1:
            only = p[0]
            if isinstance(only, str):
                return list(self.access.encode(only))
            if isinstance(only, list) and all(isinstance(t, int) for t in only):
                return [int(t) for t in only]
        raise InvalidRequest(
            f"pool {self.name!r} chooses one soft prompt per request: send a single prompt", param="prompt"
        )

    async def apply(self, req: GatewayRequest) -> StageResult:
        from gateway.stages.select_prompt.attention import choose, idp_scores

        started = time.perf_counter()
        ids = self._input_ids(req)
        if not ids:
            raise InvalidRequest("the prompt has no tokens to select a soft prompt for", param="prompt")
        prompts, layers = self.prompts, self.layers
        scores = await self.access.run_exclusive(lambda model: idp_scores(model, prompts, ids, layers))
        i = choose(scores)
        n = int(prompts.shape[1])
        stats = StageStats(
            stage=STAGE, tokens_before=len(ids), tokens_after=len(ids) + n,
            ms=(time.perf_counter() - started) * 1000, choice=self.names[i],
            extra={"method": self.method, "index": i, "scores": _scores(self.names, scores.tolist())},
        )
        return StageResult(dataclasses.replace(req, soft_prompt=prompts[i]), stats)


class TextPoolRunner:
    """IDP-text over one pool of text instructions (any backend)."""

    method = "idp-text"

    def __init__(self, name: str, selector: TextSelector) -> None:
        self.name = name
        self.selector = selector
        self.names = tuple(e.name for e in selector.entries)

    async def apply(self, req: GatewayRequest) -> StageResult:
        started = time.perf_counter()
        before = count_tokens(req.prompt_text())
        query = query_text(req)
        if query is None:
            stats = StageStats(STAGE, before, before, (time.perf_counter() - started) * 1000,
                               choice="skipped: no user message", extra={"method": self.method})
            return StageResult(req, stats)
        # one MiniLM pass (~5 ms of CPU): off the event loop
        choice = await asyncio.to_thread(self.selector.select, query)
        extra: dict[str, Any] = {"method": self.method, "index": choice.index,
                                 "scores": _scores(self.names, choice.scores)}
        if choice.fallback:
            extra["fallback"] = True
        out = req
        if choice.index is not None:
            out = with_instruction(req, self.selector.entries[choice.index].text)
        after = before if out is req else count_tokens(out.prompt_text())
        name = self.names[choice.index] if choice.index is not None else "none: below threshold"
        return StageResult(out, StageStats(STAGE, before, after, (time.perf_counter() - started) * 1000,
                                           choice=name, extra=extra))


class SelectPromptStage:
    """Runs the pool the request names (option ``pool``), else the default pool."""

    name = STAGE

    def __init__(self, pools: Mapping[str, SoftPoolRunner | TextPoolRunner], default_pool: str | None,
                 defaults: Mapping[str, Any] | None = None) -> None:
        self.pools = dict(pools)
        self.default_pool = default_pool
        self.defaults = dict(defaults or {})

    def validate(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        merged = {**self.defaults, **options}
        unknown = sorted(set(merged) - {"pool"})
        if unknown:
            raise InvalidRequest(f"unknown option {unknown[0]!r} for stage 'select_prompt' (known: pool)",
                                 param=f"promptwire.select_prompt.{unknown[0]}")
        pool = merged.get("pool", self.default_pool)
        known = ", ".join(sorted(self.pools)) or "none"
        if pool is None:
            raise InvalidRequest(f"no prompt pool chosen: set pool (pools: {known})", param=_PARAM)
        if not isinstance(pool, str) or pool not in self.pools:
            raise InvalidRequest(f"unknown prompt pool {pool!r} (pools: {known})", param=_PARAM)
        return {"pool": pool}

    async def apply(self, req: GatewayRequest, options: Mapping[str, Any]) -> StageResult:
        return await self.pools[options["pool"]].apply(req)


def _soft_runner(name: str, pool: SoftPoolConfig, deps: StageDeps) -> SoftPoolRunner:
    from gateway.providers.local import resolve_model_source
    from gateway.stages.select_prompt.attention import resolve_layers
    from gateway.stages.select_prompt.pool import SoftPool

    key = f"{_KEY}.pools.{name}"
    access = deps.model(pool.backend, f"{key}.backend")
    try:
        loaded = SoftPool.load(pool.path, fingerprint=access.fingerprint, hidden_size=access.hidden_size)
    except SelectPromptError as exc:
        raise ConfigError(f"{key}.{exc.param}: {exc.message}") from None
    if pool.layers is not None:
        from transformers import AutoConfig

        model_path = getattr(deps.config.backend(pool.backend), "model_path", "")
        layers = int(AutoConfig.from_pretrained(resolve_model_source(model_path)).num_hidden_layers)
        try:
            resolve_layers(pool.layers, layers)
        except ValueError as exc:
            raise ConfigError(f"{key}.layers: {exc}") from None
    return SoftPoolRunner(name, loaded.prompts, loaded.names, access, pool.layers)


def _text_runner(name: str, pool: TextPoolConfig, encoders: dict[str | None, Any]) -> TextPoolRunner:
    from gateway.stages.select_prompt.encoder import SentenceEncoder, ensure_encoder
    from gateway.stages.select_prompt.text import TextEntry

    try:
        if pool.encoder not in encoders:  # one encoder per source, shared by the pools that use it
            encoders[pool.encoder] = SentenceEncoder(ensure_encoder(pool.encoder))
        entries = [TextEntry(e.name, e.text, e.description) for e in pool.entries]
        selector = TextSelector(entries, encoders[pool.encoder], threshold=pool.threshold, fallback=pool.fallback)
    except SelectPromptError as exc:
        raise ConfigError(f"{_KEY}.pools.{name}.{exc.param}: {exc.message}") from None
    return TextPoolRunner(name, selector)


def make_select_prompt_stage(config: SelectPromptConfig, deps: StageDeps) -> SelectPromptStage:
    """The table's factory for ``stages.select_prompt`` (gateway/config/stages.py: SelectPromptConfig)."""
    if not config.pools:
        raise ConfigError(f"{_KEY}.pools: the stage is used but has no pools")
    pools: dict[str, SoftPoolRunner | TextPoolRunner] = {}
    encoders: dict[str | None, Any] = {}
    for name, pool in config.pools.items():
        if pool.type == "soft":
            pools[name] = _soft_runner(name, pool, deps)
        else:
            pools[name] = _text_runner(name, pool, encoders)
        logger.info("select_prompt: pool %s (%s, %d prompts)", name, pools[name].method, len(pools[name].names))
    default = config.default_pool or config.defaults.get("pool") or (next(iter(pools)) if len(pools) == 1 else None)
    return SelectPromptStage(pools, default, config.defaults)
