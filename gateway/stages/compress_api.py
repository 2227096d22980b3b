"""Handler logic of HTTP `POST /v1/compress` and gRPC `Compress`: wire format -> CompressCall -> result."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from compressors.llmlingua2.serving import CompressorService
from gateway.errors import InvalidRequest, NotFound
from gateway.stages.compress import (
    CompressStage,
    compat_kwargs,
    compressor_errors,
    default_mode_kwargs,
    validate_compress_options,
)
from gateway.tokens import count_tokens

__all__ = ["CompressAPI", "CompressCall", "CompressOutcome", "WordLabel"]

logger = logging.getLogger(__name__)

_STAGE_OPTIONS = ("rate", "target_token", "force_tokens", "roles", "protections", "compat",
                  "force_reserve_digit", "drop_consecutive")
_COMPAT_ONLY = ("token_to_word", "chunk_end_tokens", "force_context_ids", "context_level_rate")
_INPUTS = ("text", "contexts", "messages")
_BODY_KEYS = frozenset((*_INPUTS, "model", "return_word_labels", *_STAGE_OPTIONS, *_COMPAT_ONLY))


@dataclass(frozen=True)
class CompressCall:
    """One compress request, independent of the wire format (options already validated)."""

    input_kind: str
    """"text", "contexts" or "messages"."""
    payload: Any
    """str, list[str] or list of message dicts ({"role", "content", ...})."""
    model: str
    options: Mapping[str, Any]
    """validate_compress_options output."""
    return_word_labels: bool = False
    compat_extra: Mapping[str, Any] = field(default_factory=dict)
    """token_to_word, chunk_end_tokens, force_context_ids, context_level_rate (compat mode only)."""


@dataclass(frozen=True)
class WordLabel:
    word: str
    keep: bool


@dataclass
class CompressOutcome:
    compressed_text: str
    origin_tokens: int
    compressed_tokens: int
    ms: float
    model: str
    execution_provider: str
    compressed_contexts: list[str] | None = None
    messages: list[dict[str, Any]] | None = None
    word_labels: list[WordLabel] | None = None

    @property
    def ratio(self) -> float:
        return self.origin_tokens / self.compressed_tokens if self.compressed_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "compressed_text": self.compressed_text,
            "origin_tokens": self.origin_tokens,
            "compressed_tokens": self.compressed_tokens,
            "ratio": round(self.ratio, 4),
            "ms": round(self.ms, 3),
            "model": self.model,
            "execution_provider": self.execution_provider,
        }
        if self.compressed_contexts is not None:
            d["compressed_contexts"] = self.compressed_contexts
        if self.messages is not None:
            d["messages"] = self.messages
        if self.word_labels is not None:
            d["word_labels"] = [{"word": w.word, "keep": w.keep} for w in self.word_labels]
        return d


class CompressAPI:
    """Compress requests against named compressor services (the first one is the default)."""

    def __init__(self, services: Mapping[str, CompressorService]) -> None:
        if not services:
            raise ValueError("CompressAPI needs at least one compressor service")
        self.services = dict(services)
        self.default = next(iter(self.services))

    @classmethod
    def from_stage(cls, stage: CompressStage) -> CompressAPI:
        """Serve /v1/compress with the compress stage's compressor (one model, shared batcher)."""
        return cls({stage.model_name or "default": stage.service})

    # -- wire formats ------------------------------------------------------------------------------

    def parse_json(self, body: Any) -> CompressCall:
        """An HTTP JSON body -> CompressCall; InvalidRequest naming the body field on bad input."""
        if not isinstance(body, Mapping):
            raise InvalidRequest("the request body must be a JSON object")
        unknown = sorted(set(body) - _BODY_KEYS)
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}", param=unknown[0])
        given = [k for k in _INPUTS if body.get(k) is not None]
        if len(given) != 1:
            raise InvalidRequest("give exactly one of text, contexts, messages", param="text")
        kind = given[0]
        payload = body[kind]
        if kind == "text":
            if not isinstance(payload, str):
                raise InvalidRequest("text must be a string", param="text")
        elif kind == "contexts":
            if not isinstance(payload, list):
                raise InvalidRequest("contexts must be a list of strings", param="contexts")
            for i, c in enumerate(payload):
                if not isinstance(c, str):
                    raise InvalidRequest(f"contexts[{i}] must be a string", param=f"contexts[{i}]")
        else:
            payload = _check_messages(payload)
        options = {k: body[k] for k in _STAGE_OPTIONS if body.get(k) is not None}
        extra = {k: body[k] for k in _COMPAT_ONLY if body.get(k) is not None}
        rwl = body.get("return_word_labels", False)
        if not isinstance(rwl, bool):
            raise InvalidRequest("return_word_labels must be true or false", param="return_word_labels")
        model = body.get("model") or ""
        if not isinstance(model, str):
            raise InvalidRequest("model must be a string", param="model")
        return self._call(kind, payload, model, options, rwl, extra)

    async def handle_json(self, body: Any) -> dict[str, Any]:
        """HTTP: JSON body in, JSON body out (errors raise PromptwireError subclasses)."""
        return (await self.compress(self.parse_json(body))).to_dict()

    def parse_proto(self, req: Any) -> CompressCall:
        """A promptwire.v1.CompressRequest -> CompressCall."""
        kind = req.WhichOneof("input")
        if kind is None:
            raise InvalidRequest("give exactly one of text, contexts, messages", param="text")
        if kind == "text":
            payload: Any = req.text
        elif kind == "contexts":
            payload = list(req.contexts.items)
        else:
            payload = []
            for m in req.messages.messages:
                d: dict[str, Any] = {"role": m.role, "content": m.content}
                if m.HasField("name"):
                    d["name"] = m.name
                if m.HasField("tool_call_id"):
                    d["tool_call_id"] = m.tool_call_id
                payload.append(d)
        options: dict[str, Any] = {}
        for name in ("rate", "target_token", "force_reserve_digit", "drop_consecutive"):
            if req.HasField(name):
                options[name] = getattr(req, name)
        if req.force_tokens:
            options["force_tokens"] = list(req.force_tokens)
        if req.roles:
            options["roles"] = list(req.roles)
        if req.HasField("protections"):
            p = req.protections
            options["protections"] = {
                n: getattr(p, n) for n in ("code_blocks", "json", "urls", "identifiers", "numbers") if p.HasField(n)
            }
        if req.compat == 2:  # COMPAT_MODE_LLMLINGUA
            options["compat"] = "llmlingua"
        extra: dict[str, Any] = {}
        if req.token_to_word:
            extra["token_to_word"] = "first" if req.token_to_word == 2 else "mean"
        if req.chunk_end_tokens:
            extra["chunk_end_tokens"] = list(req.chunk_end_tokens)
        if req.force_context_ids:
            extra["force_context_ids"] = [int(i) for i in req.force_context_ids]
        if req.HasField("context_level_rate"):
            extra["context_level_rate"] = req.context_level_rate
        return self._call(kind, payload, req.model, options, bool(req.return_word_labels), extra)

    async def handle_proto(self, req: Any) -> Any:
        """gRPC: CompressRequest in, CompressResponse out (errors raise PromptwireError subclasses)."""
        from protos.promptwire.v1 import common_pb2, compress_pb2

        out = await self.compress(self.parse_proto(req))
        resp = compress_pb2.CompressResponse(
            compressed_text=out.compressed_text,
            origin_tokens=out.origin_tokens,
            compressed_tokens=out.compressed_tokens,
            ratio=out.ratio,
            ms=out.ms,
            model=out.model,
            execution_provider=out.execution_provider,
        )
        if out.compressed_contexts is not None:
            resp.compressed_contexts.extend(out.compressed_contexts)
        for m in out.messages or ():
            pm = common_pb2.ChatMessage(role=m["role"], content=m.get("content") or "")
            if m.get("name") is not None:
                pm.name = m["name"]
            if m.get("tool_call_id") is not None:
                pm.tool_call_id = m["tool_call_id"]
            resp.messages.append(pm)
        for w in out.word_labels or ():
            resp.word_labels.append(compress_pb2.WordLabel(word=w.word, keep=w.keep))
        return resp

    # -- core --------------------------------------------------------------------------------------

    def _call(self, kind: str, payload: Any, model: str, options: dict[str, Any], rwl: bool,
              extra: dict[str, Any]) -> CompressCall:
        opts = validate_compress_options(options, prefix="")
        if extra and opts["compat"] != "llmlingua":
            name = next(iter(extra))
            raise InvalidRequest(f"{name} needs compat 'llmlingua'", param=name)
        _check_compat_extra(extra)
        if model and model not in self.services:
            raise NotFound(f"unknown compressor model {model!r} (known: {', '.join(self.services)})", param="model")
        return CompressCall(kind, payload, model or self.default, opts, rwl, extra)

    async def compress(self, call: CompressCall) -> CompressOutcome:
        service = self.services[call.model]
        t0 = time.perf_counter()
        with compressor_errors(prefix=""):
            if call.options["compat"] == "llmlingua":
                out = await self._compat(service, call)
            else:
                out = await self._default(service, call)
        out.ms = (time.perf_counter() - t0) * 1000
        out.model = call.model
        out.execution_provider = service.provider
        return out

    async def _default(self, service: CompressorService, call: CompressCall) -> CompressOutcome:
        kw = default_mode_kwargs(call.options)
        if call.input_kind == "text":
            r = await service.compress(call.payload, return_word_labels=call.return_word_labels, **kw)
            labels = [WordLabel(w, bool(k)) for w, k in r.word_labels] if r.word_labels is not None else None
            return CompressOutcome(r.text, r.origin_tokens, r.compressed_tokens, 0.0, "", "", word_labels=labels)
        if call.return_word_labels:
            raise InvalidRequest("return_word_labels is available for text input, or with compat 'llmlingua'",
                                 param="return_word_labels")
        if call.options["roles"] is not None:
            kw["roles"] = call.options["roles"]
        if call.input_kind == "contexts":
            # contexts share one token budget, like messages of the role "context"
            msgs = [{"role": "context", "content": c} for c in call.payload]
            kw.setdefault("roles", ("context",))
            m = await service.compress_messages(msgs, **kw)
            texts = [d["content"] for d in m.messages]
            return CompressOutcome("\n\n".join(texts), m.origin_tokens, m.compressed_tokens, 0.0, "", "",
                                   compressed_contexts=texts)
        m = await service.compress_messages(call.payload, **kw)
        text = "\n\n".join(d["content"] for d in m.messages if isinstance(d.get("content"), str))
        return CompressOutcome(text, m.origin_tokens, m.compressed_tokens, 0.0, "", "", messages=list(m.messages))

    async def _compat(self, service: CompressorService, call: CompressCall) -> CompressOutcome:
        kw = {**compat_kwargs(call.options), **call.compat_extra}
        if call.input_kind == "messages":
            return await self._compat_messages(service, call, kw)
        if call.return_word_labels:
            kw["return_word_label"] = True
        res = await service.compress_llmlingua(call.payload, **kw)
        labels = _parse_word_labels(res.get("fn_labeled_original_prompt")) if call.return_word_labels else None
        return CompressOutcome(
            res["compressed_prompt"], int(res["origin_tokens"]), int(res["compressed_tokens"]), 0.0, "", "",
            compressed_contexts=list(res["compressed_prompt_list"]) if call.input_kind == "contexts" else None,
            word_labels=labels,
        )

    async def _compat_messages(self, service: CompressorService, call: CompressCall,
                               kw: dict[str, Any]) -> CompressOutcome:
        from compressors.llmlingua2.compressor import DEFAULT_ROLES

        if call.return_word_labels:
            raise InvalidRequest("return_word_labels is available for text or contexts input",
                                 param="return_word_labels")
        roles = call.options["roles"] if call.options["roles"] is not None else DEFAULT_ROLES
        msgs = [dict(m) for m in call.payload]
        last_user = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=-1)
        n0 = n1 = 0
        for i, m in enumerate(msgs):
            content = m.get("content")
            if not isinstance(content, str):
                continue
            if i == last_user or m.get("role") not in roles or not content.strip():
                n = count_tokens(content)
                n0 += n
                n1 += n
                continue
            res = await service.compress_llmlingua(content, **kw)
            m["content"] = res["compressed_prompt"]
            n0 += int(res["origin_tokens"])
            n1 += int(res["compressed_tokens"])
        text = "\n\n".join(m["content"] for m in msgs if isinstance(m.get("content"), str))
        return CompressOutcome(text, n0, n1, 0.0, "", "", messages=msgs)


def _check_messages(payload: Any) -> list[dict[str, Any]]:
    if not isinstance(payload, list):
        raise InvalidRequest("messages must be a list of objects", param="messages")
    out = []
    for i, m in enumerate(payload):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string role", param=f"messages[{i}]")
        c = m.get("content")
        if c is not None and not isinstance(c, str):
            raise InvalidRequest(f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        out.append(dict(m))
    return out


def _check_compat_extra(extra: Mapping[str, Any]) -> None:
    ttw = extra.get("token_to_word")
    if ttw is not None and ttw not in ("mean", "first"):
        raise InvalidRequest("token_to_word must be 'mean' or 'first'", param="token_to_word")
    cet = extra.get("chunk_end_tokens")
    if cet is not None and (not isinstance(cet, list) or not all(isinstance(t, str) and t for t in cet)):
        raise InvalidRequest("chunk_end_tokens must be a list of non-empty strings", param="chunk_end_tokens")
    fci = extra.get("force_context_ids")
    if fci is not None and (
        not isinstance(fci, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in fci)
    ):
        raise InvalidRequest("force_context_ids must be a list of context indexes", param="force_context_ids")
    clr = extra.get("context_level_rate")
    if clr is not None and (
        isinstance(clr, bool) or not isinstance(clr, (int, float)) or not math.isfinite(clr) or not 0 < clr <= 1
    ):
        raise InvalidRequest("context_level_rate must be in (0, 1]", param="context_level_rate")


def _parse_word_labels(labelled: str | None, word_sep: str = "\t\t|\t\t") -> list[WordLabel]:
    out = []
    for item in labelled.split(word_sep) if labelled else []:
        word, _, lab = item.rpartition(" ")
        out.append(WordLabel(word, lab == "1"))
    return out

