"""The `compress` pipeline stage: LLMLingua-2 compression of the allowed prompt spans, micro-batched."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from compressors.llmlingua2.serving import (
    BatcherClosed,
    BatcherConfig,
    CompressorOverloaded,
    CompressorService,
)
from gateway.config.stages import CompressConfig
from gateway.errors import InvalidRequest, Overloaded, PromptwireError, ShuttingDown
from gateway.stages.base import StageDeps, StageResult, check_options
from gateway.tokens import count_tokens
from gateway.types import ChatMessage, GatewayRequest, StageStats

__all__ = [
    "COMPAT_MODES",
    "OPTION_TYPES",
    "PROTECTIONS",
    "CompressStage",
    "compressor_errors",
    "make_compress_stage",
    "validate_compress_options",
]

logger = logging.getLogger(__name__)

STAGE = "compress"
MAX_FORCE_TOKENS = 100
COMPAT_MODES = ("none", "llmlingua")
PROTECTIONS = ("code_blocks", "json", "urls", "identifiers", "numbers")
"""Protection names as the API spells them (the proto's field names)."""
_PROTECTION_ALIASES = {"code": "code_blocks"}
_LIBRARY_PROTECTION = {"code_blocks": "code"}  # API name -> compressors.llmlingua2 Protections field

OPTION_TYPES: dict[str, type | tuple[type, ...]] = {
    "rate": (int, float),
    "target_token": int,
    "force_tokens": list,
    "roles": list,
    "protections": dict,
    "compat": (str, type(None)),
    "force_reserve_digit": bool,
    "drop_consecutive": bool,
}
"""Per-request options of the stage (the same names in YAML defaults, HTTP and gRPC)."""


def _param(name: str, prefix: str) -> str:
    return f"{prefix}{name}"


def validate_compress_options(options: Mapping[str, Any], prefix: str = "promptwire.compress.") -> dict[str, Any]:
    """Check and normalise compress options; errors are InvalidRequest naming ``prefix + option``.

    Returns a dict with every key present: rate (float), target_token (int | None), force_tokens
    (list[str]), roles (tuple[str, ...] | None = library default), protections (dict name -> bool),
    compat ("none" | "llmlingua"), force_reserve_digit, drop_consecutive (bool).
    """
    if prefix == "promptwire.compress.":
        check_options(STAGE, options, OPTION_TYPES)
    else:
        for key, value in options.items():
            want = OPTION_TYPES.get(key)
            if want is None:
                raise InvalidRequest(f"unknown compress option {key!r}", param=_param(key, prefix))
            if isinstance(value, bool) and want is not bool:
                raise InvalidRequest(f"{key} must not be a boolean", param=_param(key, prefix))
            if not isinstance(value, want):
                raise InvalidRequest(f"{key} has the wrong type ({type(value).__name__})", param=_param(key, prefix))
    out: dict[str, Any] = {
        "rate": 0.5,
        "target_token": None,
        "force_tokens": [],
        "roles": None,
        "protections": {},
        "compat": "none",
        "force_reserve_digit": False,
        "drop_consecutive": False,
    }
    rate = options.get("rate")
    if rate is not None:
        if not (math.isfinite(rate) and 0 < rate <= 1):
            raise InvalidRequest(f"rate must be in (0, 1], got {rate!r}", param=_param("rate", prefix))
        out["rate"] = float(rate)
    tt = options.get("target_token")
    if tt is not None:
        if tt <= 0:
            raise InvalidRequest(f"target_token must be > 0, got {tt!r}", param=_param("target_token", prefix))
        out["target_token"] = int(tt)
    ft = options.get("force_tokens")
    if ft is not None:
        if len(ft) > MAX_FORCE_TOKENS:
            raise InvalidRequest(
                f"at most {MAX_FORCE_TOKENS} force tokens, got {len(ft)}", param=_param("force_tokens", prefix)
            )
        for i, t in enumerate(ft):
            if not isinstance(t, str) or not t:
                raise InvalidRequest(
                    f"force_tokens[{i}] must be a non-empty string", param=_param("force_tokens", prefix)
                )
        out["force_tokens"] = list(ft)
    roles = options.get("roles")
    if roles is not None:
        for i, r in enumerate(roles):
            if not isinstance(r, str) or not r:
                raise InvalidRequest(f"roles[{i}] must be a non-empty string", param=_param("roles", prefix))
        out["roles"] = tuple(roles)
    prot = options.get("protections")
    if prot is not None:
        norm: dict[str, bool] = {}
        for key, value in prot.items():
            name = _PROTECTION_ALIASES.get(key, key)
            if name not in PROTECTIONS:
                raise InvalidRequest(
                    f"unknown protection {key!r} (known: {', '.join(PROTECTIONS)})",
                    param=_param(f"protections.{key}", prefix),
                )
            if not isinstance(value, bool):
                raise InvalidRequest(
                    f"protection {key!r} must be true or false", param=_param(f"protections.{key}", prefix)
                )
            norm[name] = value
        out["protections"] = norm
    compat = options.get("compat")
    if compat is not None:
        if compat not in COMPAT_MODES:
            raise InvalidRequest(
                f"compat must be one of {', '.join(COMPAT_MODES)}, got {compat!r}", param=_param("compat", prefix)
            )
        out["compat"] = compat
    for flag in ("force_reserve_digit", "drop_consecutive"):
        if options.get(flag) is not None:
            out[flag] = bool(options[flag])
    if out["compat"] == "none":
        for flag in ("force_reserve_digit", "drop_consecutive"):
            if out[flag]:
                raise InvalidRequest(f"{flag} needs compat 'llmlingua'", param=_param(flag, prefix))
    return out


def library_protections(names: Mapping[str, bool]) -> Any:
    """compressors.llmlingua2 Protections from API names (unset ones keep the library default: on)."""
    from compressors.llmlingua2.structure import Protections

    return Protections(**{_LIBRARY_PROTECTION.get(k, k): v for k, v in names.items()})


def default_mode_kwargs(opts: Mapping[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "rate": opts["rate"],
        "target_token": opts["target_token"],
        "force_tokens": opts["force_tokens"],
        "protections": library_protections(opts["protections"]),
    }
    return kw


def compat_kwargs(opts: Mapping[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "rate": opts["rate"],
        "force_tokens": opts["force_tokens"],
        "force_reserve_digit": opts["force_reserve_digit"],
        "drop_consecutive": opts["drop_consecutive"],
    }
    if opts["target_token"] is not None:
        kw["target_token"] = opts["target_token"]
    return kw


@contextlib.contextmanager
def compressor_errors(prefix: str = "promptwire.compress.") -> Iterator[None]:
    """Map compressor-library errors to the gateway hierarchy (the one boundary for them)."""
    try:
        yield
    except PromptwireError:
        raise
    except CompressorOverloaded as exc:
        raise Overloaded(f"compressor overloaded: {exc}", retry_after=exc.retry_after) from exc
    except BatcherClosed as exc:
        raise ShuttingDown("compressor is shutting down") from exc
    except ValueError as exc:  # compressors raise ValueError subclasses carrying `param`
        param = getattr(exc, "param", None)
        message = getattr(exc, "message", None) or str(exc)
        raise InvalidRequest(message, param=f"{prefix}{param}" if param else prefix.rstrip(".")) from exc


class CompressStage:
    """Compresses system/context messages (chat) or the prompt (completions); see validate_compress_options."""

    name = STAGE

    def __init__(self, service: CompressorService, defaults: Mapping[str, Any] | None = None,
                 model_name: str = "") -> None:
        self.service = service
        self.defaults = dict(defaults or {})
        """Operator defaults from ``stages.compress.defaults`` (merged under the request's options)."""
        self.model_name = model_name

    def validate(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        return validate_compress_options({**self.defaults, **options})

    async def apply(self, req: GatewayRequest, options: Mapping[str, Any]) -> StageResult:
        t0 = time.perf_counter()
        before = count_tokens(req.prompt_text())
        mode = options["compat"]
        with compressor_errors():
            if req.kind == "chat":
                new_req = await self._chat(req, options)
            else:
                new_req = await self._completion(req, options)
        after = count_tokens(new_req.prompt_text()) if new_req is not req else before
        choice = (f"target_token={options['target_token']}" if options["target_token"] is not None
                  else f"rate={options['rate']:g}")
        stats = StageStats(
            stage=STAGE,
            tokens_before=before,
            tokens_after=after,
            ms=(time.perf_counter() - t0) * 1000,
            choice=choice,
            extra={"mode": mode, "provider": self.service.provider},
        )
        return StageResult(new_req, stats)

    async def _chat(self, req: GatewayRequest, options: Mapping[str, Any]) -> GatewayRequest:
        if options["compat"] == "llmlingua":
            return await self._chat_compat(req, options)
        dicts: list[dict[str, Any]] = []
        multipart: dict[int, Any] = {}
        for i, m in enumerate(req.messages):
            d = {"role": m.role, "content": m.content}
            if m.content is not None and not isinstance(m.content, str):
                multipart[i] = m.content  # structured content is passed through untouched
                d["content"] = None
            dicts.append(d)
        kw = default_mode_kwargs(options)
        if options["roles"] is not None:
            kw["roles"] = options["roles"]
        res = await self.service.compress_messages(dicts, **kw)
        new_msgs = []
        changed = False
        for i, (m, d) in enumerate(zip(req.messages, res.messages, strict=True)):
            if i in multipart or d.get("content") == m.content:
                new_msgs.append(m)
            else:
                new_msgs.append(ChatMessage(role=m.role, content=d["content"], extra=m.extra))
                changed = True
        return dataclasses.replace(req, messages=tuple(new_msgs)) if changed else req

    async def _chat_compat(self, req: GatewayRequest, options: Mapping[str, Any]) -> GatewayRequest:
        from compressors.llmlingua2.compressor import DEFAULT_ROLES

        roles = options["roles"] if options["roles"] is not None else DEFAULT_ROLES
        last_user = max((i for i, m in enumerate(req.messages) if m.role == "user"), default=-1)
        new_msgs = list(req.messages)
        changed = False
        for i, m in enumerate(req.messages):
            if i == last_user or m.role not in roles or not isinstance(m.content, str) or not m.content.strip():
                continue
            res = await self.service.compress_llmlingua(m.content, **compat_kwargs(options))
            if res["compressed_prompt"] != m.content:
                new_msgs[i] = ChatMessage(role=m.role, content=res["compressed_prompt"], extra=m.extra)
                changed = True
        return dataclasses.replace(req, messages=tuple(new_msgs)) if changed else req

    async def _completion(self, req: GatewayRequest, options: Mapping[str, Any]) -> GatewayRequest:
        prompt = req.prompt
        if isinstance(prompt, str):
            texts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            texts = list(prompt)
        else:
            return req  # token-id prompts are not compressed
        out = []
        for text in texts:
            if not text.strip():
                out.append(text)
            elif options["compat"] == "llmlingua":
                res = await self.service.compress_llmlingua(text, **compat_kwargs(options))
                out.append(res["compressed_prompt"])
            else:
                r = await self.service.compress(text, **default_mode_kwargs(options))
                out.append(r.text)
        if out == texts:
            return req
        return dataclasses.replace(req, prompt=out[0] if isinstance(prompt, str) else out)

    async def aclose(self) -> None:
        await self.service.aclose()


def make_compress_stage(config: CompressConfig, deps: StageDeps | None = None) -> CompressStage:
    """The table's factory for ``stages.compress`` (gateway/config/stages.py: CompressConfig)."""
    from compressors.llmlingua2.compressor import Compressor
    from compressors.llmlingua2.tiny import is_standin

    defaults = dict(config.defaults)
    validate_compress_options(defaults, prefix="stages.compress.defaults.")
    if is_standin(config.model):
        logger.warning(
            "stages.compress serves %s, a tiny randomly initialised STAND-IN classifier built locally (which "
            "words it keeps is arbitrary). For real compression set stages.compress.model in your --config file "
            "to an LLMLingua-2 checkpoint or export, e.g. microsoft/llmlingua-2-bert-base-multilingual-cased-"
            "meetingbank (docs/compress-serving.md)",
            config.model,
        )
    try:
        compressor = Compressor(config.model, int8=config.int8, intra_op_threads=config.threads,
                                spinning=config.spinning)
    except ValueError as e:  # an unknown stand-in name
        raise ValueError(f"stages.compress.model: {e}") from None
    batcher = BatcherConfig(
        max_batch_windows=config.max_batch_windows,
        max_batch_tokens=config.max_batch_tokens,
        max_wait_ms=config.max_wait_ms,
        batching=config.batching,
        max_batch_size=config.max_batch_size,
        workers=config.workers,
        max_queue=config.max_queue,
    )
    logger.info("compress stage: model %s on %s", config.model, compressor.provider)
    return CompressStage(CompressorService(compressor, batcher), defaults, model_name=Path(config.model).name)
