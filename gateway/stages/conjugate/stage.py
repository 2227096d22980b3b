"""The `conjugate` stage: allow-list check, prompt transform, and the hook that back-transforms and audits."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.config.base import ConfigError
from gateway.errors import AuditUnavailable, ConjugateNotAllowed, InvalidRequest, TranslatorFailed
from gateway.stages.base import StageDeps, StageResult, TextHook
from gateway.stages.conjugate import leet, pig_latin
from gateway.stages.conjugate.audit import AuditError, AuditWriter
from gateway.stages.conjugate.grants import ANONYMOUS, Grants, parse_grant
from gateway.stages.conjugate.translate import (
    SelfTranslator,
    Seq2SeqTranslator,
    Translator,
    TranslatorError,
    provider_complete,
)
from gateway.tokens import count_tokens
from gateway.types import Completion, GatewayRequest, StageStats

__all__ = ["TRANSFORMS", "ConjugateHook", "ConjugateStage", "make_conjugate_stage"]

logger = logging.getLogger(__name__)

STAGE = "conjugate"
TRANSFORMS = ("leet", "pig_latin", "translate")
ROLES = ("system", "user")
"""Chat roles whose text is transformed."""
_P = "promptwire.conjugate."
_CODECS: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "leet": (leet.encode, leet.decode),
    "pig_latin": (pig_latin.encode, pig_latin.decode),
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class ConjugateStage:
    """Shared by all requests; per-request state lives in :class:`ConjugateHook`."""

    name = STAGE

    def __init__(
        self,
        *,
        audit: AuditWriter,
        allow: Grants,
        translator: Translator | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.audit = audit
        self.allow = allow
        self.translator = translator
        self.defaults = dict(defaults or {})

    # ----- options -------------------------------------------------------------------------------

    def validate(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """Defaults merged under ``options``; each value checked on its own (``apply`` checks how they
        combine, since a client may set one option and the route the other)."""
        out = {**self.defaults, **options}
        for key in out:
            if key not in ("transform", "language"):
                raise InvalidRequest(f"unknown option {key!r} for stage 'conjugate' (known: language, transform)",
                                     param=_P + key)
        transform = out.get("transform")
        if transform is not None and transform not in TRANSFORMS:
            raise InvalidRequest(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}",
                                 param=_P + "transform")
        language = out.get("language")
        if language is not None:
            if not isinstance(language, str):
                raise InvalidRequest("language must be a string", param=_P + "language")
            if self.translator is None:
                raise InvalidRequest("language needs transform translate, and this gateway has no translator "
                                     "(stages.conjugate.translator)", param=_P + "language")
            try:
                out["language"] = self.translator.language(language)
            except TranslatorError as e:
                raise InvalidRequest(str(e), param=e.param) from None
        return out

    def _combined(self, options: Mapping[str, Any]) -> tuple[str, str | None]:
        transform = options.get("transform")
        language = options.get("language")
        if transform is None:
            raise InvalidRequest("the conjugate stage needs a transform: leet, pig_latin or translate",
                                 param=_P + "transform")
        if transform == "translate":
            if self.translator is None:
                raise InvalidRequest("transform translate needs a translator, and none is configured "
                                     "(stages.conjugate.translator)", param=_P + "transform")
            if language is None:
                raise InvalidRequest("transform translate needs a language (e.g. \"fr\")", param=_P + "language")
            return transform, language
        if language is not None:
            raise InvalidRequest(f"language applies to transform translate only, not {transform}",
                                 param=_P + "language")
        return transform, None

    # ----- the prompt ----------------------------------------------------------------------------

    async def apply(self, req: GatewayRequest, options: Mapping[str, Any]) -> StageResult:
        start = time.perf_counter()
        transform, language = self._combined(options)
        key_id = req.api_key_id or ANONYMOUS
        what = transform if language is None else f"{transform}:{language}"
        if not self.allow.allows(key_id, transform, language):
            raise ConjugateNotAllowed(f"API key {key_id!r} may not use conjugate transform {what!r} "
                                      "(stages.conjugate.allow)", param=_P + "transform")
        texts, rebuild = _prompt_texts(req)
        if not any(t.strip() for t in texts):
            param = "messages" if req.kind == "chat" else "prompt"
            raise InvalidRequest(f"conjugate: the prompt has no text to transform (no {', '.join(ROLES)} text)"
                                 if req.kind == "chat" else "conjugate: the prompt has no text to transform",
                                 param=param)
        new_texts = await self.forward(transform, language, texts)
        new_req = rebuild(new_texts)
        done = time.perf_counter()
        logger.info("conjugate %s for key %s (request %s)", what, key_id, req.request_id)
        hook = ConjugateHook(self, req, new_req, transform, language, key_id, (done - start) * 1000, done)
        before, after = count_tokens("\n".join(texts)), count_tokens("\n".join(new_texts))
        stats = StageStats(STAGE, before, after, (time.perf_counter() - start) * 1000, choice=what)
        return StageResult(new_req, stats, hook)

    async def forward(self, transform: str, language: str | None, texts: Sequence[str]) -> list[str]:
        if transform in _CODECS:
            encode = _CODECS[transform][0]
            return [encode(t) for t in texts]
        assert self.translator is not None and language is not None
        return await self._translate(texts, self.translator.source_language, language)

    async def backward(self, transform: str, language: str | None, texts: Sequence[str]) -> list[str]:
        if transform in _CODECS:
            decode = _CODECS[transform][1]
            return [decode(t) for t in texts]
        assert self.translator is not None and language is not None
        return await self._translate(texts, language, self.translator.source_language)

    async def _translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        assert self.translator is not None
        try:
            return await self.translator.translate(texts, src, tgt)
        except TranslatorError as e:
            raise InvalidRequest(str(e), param=e.param) from None
        except Exception as e:  # the model failed (out of memory, a broken checkpoint, ...)
            logger.exception("conjugate translator %s failed", self.translator.name)
            raise TranslatorFailed(f"the conjugate translator failed: {type(e).__name__}") from None

    async def aclose(self) -> None:
        if self.translator is not None:
            await self.translator.aclose()
        await self.audit.aclose()


def _prompt_texts(req: GatewayRequest) -> tuple[list[str], Callable[[Sequence[str]], GatewayRequest]]:
    """Every transformable text of the request, and a function that puts new texts in their place."""
    if req.kind == "chat":
        slots: list[tuple[int, int | None]] = []  # (message index, content part index or None)
        texts: list[str] = []
        for i, m in enumerate(req.messages):
            if m.role not in ROLES:
                continue
            if isinstance(m.content, str):
                slots.append((i, None))
                texts.append(m.content)
            elif isinstance(m.content, list):
                for j, part in enumerate(m.content):
                    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                        slots.append((i, j))
                        texts.append(part["text"])

        def rebuild_chat(new: Sequence[str]) -> GatewayRequest:
            messages = list(req.messages)
            contents: dict[int, Any] = {}
            for (i, j), text in zip(slots, new, strict=True):
                if j is None:
                    contents[i] = text
                else:
                    parts = contents.get(i) or [dict(p) if isinstance(p, dict) else p
                                                for p in messages[i].content or ()]
                    parts[j] = {**parts[j], "text": text}
                    contents[i] = parts
            for i, content in contents.items():
                messages[i] = dataclasses.replace(messages[i], content=content)
            return dataclasses.replace(req, messages=tuple(messages))

        return texts, rebuild_chat
    prompt = req.prompt
    if isinstance(prompt, str):
        return [prompt], lambda new: dataclasses.replace(req, prompt=new[0])
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt), lambda new: dataclasses.replace(req, prompt=list(new))
    if isinstance(prompt, list) and prompt:
        raise InvalidRequest("conjugate cannot transform a token-id prompt; send text", param="prompt")
    return [], lambda new: req


def _messages(req: GatewayRequest) -> dict[str, Any]:
    if req.kind == "chat":
        return {"messages": [m.to_dict() for m in req.messages]}
    return {"prompt": req.prompt}


class ConjugateHook(TextHook):
    """One request's answer: back-transform each choice's text, audit, then let it go (buffered)."""

    def __init__(
        self,
        stage: ConjugateStage,
        original: GatewayRequest,
        transformed: GatewayRequest,
        transform: str,
        language: str | None,
        key_id: str,
        transform_ms: float,
        sent_at: float,
    ) -> None:
        self.stage = stage
        self.original = original
        self.transformed = transformed
        self.transform_name = transform
        self.language = language
        self.key_id = key_id
        self.transform_ms = transform_ms
        self.sent_at = sent_at
        self.audited = False
        self._stats: StageStats | None = None

    async def transform(self, texts: dict[int, str]) -> dict[int, str]:
        model_ms = (time.perf_counter() - self.sent_at) * 1000
        start = time.perf_counter()
        order = sorted(texts)
        back = dict(zip(order, await self.stage.backward(self.transform_name, self.language,
                                                         [texts[i] for i in order]), strict=True))
        back_ms = (time.perf_counter() - start) * 1000
        await self._audit(texts, back, model_ms, back_ms)
        before, after = count_tokens("\n".join(texts.values())), count_tokens("\n".join(back.values()))
        self._stats = StageStats(STAGE, before, after, (time.perf_counter() - start) * 1000, choice="answer",
                                 extra={"back_transform_ms": round(back_ms, 3)})
        return back

    async def _audit(self, raw: Mapping[int, str], back: Mapping[int, str], model_ms: float | None,
                     back_ms: float | None) -> None:
        translator = self.stage.translator.name if self.transform_name == "translate" and self.stage.translator else None
        record = {
            "time": _now(),
            "request_id": self.original.request_id,
            "key_id": self.key_id,
            "model": self.original.model,
            "kind": self.original.kind,
            "stream": self.original.stream,
            "transform": self.transform_name,
            "language": self.language,
            "translator": translator,
            "original": _messages(self.original),
            "transformed": _messages(self.transformed),
            "raw_output": [{"index": i, "text": raw[i]} for i in sorted(raw)],
            "output": [{"index": i, "text": back[i]} for i in sorted(back)],
            "timings_ms": {
                "transform": round(self.transform_ms, 3),
                "model": None if model_ms is None else round(model_ms, 3),
                "back_transform": None if back_ms is None else round(back_ms, 3),
            },
        }
        try:
            await self.stage.audit.write(record)
        except AuditError as e:
            logger.error("conjugate audit failed for request %s: %s", self.original.request_id, e)
            raise AuditUnavailable("the conjugate audit log cannot be written; the answer is withheld") from None
        self.audited = True

    async def completion(self, completion: Completion) -> Completion:
        out = await super().completion(completion)
        if not self.audited:  # a body without choices: still one line before it leaves
            await self._audit({}, {}, (time.perf_counter() - self.sent_at) * 1000, None)
        return out

    def stats(self) -> StageStats | None:
        return self._stats


def _grants(config: Any, deps: StageDeps, translator: Translator | None) -> Grants:
    keys = [k.id for k in deps.config.auth.keys]
    for key_id, entries in config.allow.items():
        where = f"stages.conjugate.allow.{key_id}"
        if keys and key_id not in keys:
            raise ConfigError(f"{where}: {key_id!r} is not the id of a key in auth.keys "
                              f"(known: {', '.join(keys)})")
        if not keys and key_id != ANONYMOUS:
            raise ConfigError(f"{where}: auth.keys is empty, so every request's key id is {ANONYMOUS!r}")
        for i, entry in enumerate(entries):
            try:
                grant = parse_grant(entry)
            except ValueError as e:
                raise ConfigError(f"{where}[{i}]: {e}") from None
            if grant.startswith("translate:"):
                if translator is None:
                    raise ConfigError(f"{where}[{i}]: {entry!r} needs stages.conjugate.translator")
                if grant != "translate:*":
                    try:
                        translator.language(grant.partition(":")[2])
                    except TranslatorError as e:
                        raise ConfigError(f"{where}[{i}]: {e}") from None
    return Grants({k: list(v) for k, v in config.allow.items()})


def _translator(config: Any, deps: StageDeps) -> Translator | None:
    source = config.translator
    if source is None:
        return None
    try:
        if source == "self":
            backend = config.translator_backend
            if backend is None:
                local = [n for n, b in deps.config.backends.items() if b.type == "local"]
                if len(local) != 1:
                    raise ConfigError("stages.conjugate.translator_backend: translator self needs the local backend "
                                      f"that translates (local backends: {', '.join(local) or 'none'})")
                backend = local[0]
            deps.model(backend, "stages.conjugate.translator_backend")  # a local backend, or a clear error
            return SelfTranslator(provider_complete(deps.providers[backend], None), backend=backend,
                                  source_language=config.source_language, languages=config.languages,
                                  max_tokens=config.self_max_tokens)
        return Seq2SeqTranslator(source, source_language=config.source_language, languages=config.languages,
                                 device=config.translator_device)
    except TranslatorError as e:
        raise ConfigError(f"{e.param}: {e}") from None


def make_conjugate_stage(config: Any, deps: StageDeps) -> ConjugateStage:
    """Build the stage from ``stages.conjugate`` (:class:`gateway.config.stages.ConjugateConfig`)."""
    translator = _translator(config, deps)
    allow = _grants(config, deps, translator)
    try:
        audit = AuditWriter(config.audit_path, max_bytes=config.audit_max_bytes, keep=config.audit_keep)
    except AuditError as e:
        raise ConfigError(f"stages.conjugate.audit_path: {e.strerror or e}") from None
    return ConjugateStage(audit=audit, allow=allow, translator=translator, defaults=config.defaults)

