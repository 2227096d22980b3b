"""Translators of the `translate` transform: a local seq2seq model (MarianMT, NLLB, M2M100) or `self`.

A translator turns texts from one language into another; the stage calls it twice per request
(prompt: source → target; answer: target → source). Seq2seq models run on one worker thread of
their own, never on the event loop; ``self`` asks the serving local model, under a fixed
instruction, through an async ``complete`` callable the stage wires to the local provider.

How each family is named and driven:

- Marian (opus-mt): one checkpoint per direction, so the translator is a template with ``{src}``
  and ``{tgt}`` (``Helsinki-NLP/opus-mt-{src}-{tgt}``, ``/models/opus-mt-{src}-{tgt}``) filled with
  ISO 639-1 codes; a multi-target checkpoint gets its ``>>xx<<`` (or ``>>xxx<<``) token.
- M2M100: one checkpoint, ISO 639-1 codes (``__fr__`` tokens; the target forced as first token).
- NLLB: one checkpoint, FLORES-200 codes (``fra_Latn``; ISO codes of ``LANGUAGES`` are mapped).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.stages.conjugate.languages import FLORES_CODE, canonical, english_name, flores, iso3
from gateway.types import ChatMessage, GatewayRequest

__all__ = [
    "INSTRUCTION",
    "TRANSLATOR_PARAM",
    "Complete",
    "SelfTranslator",
    "Seq2SeqTranslator",
    "Translator",
    "TranslatorError",
    "TranslatorUnavailable",
    "UnknownLanguage",
    "provider_complete",
    "segments",
]

logger = logging.getLogger(__name__)

TRANSLATOR_PARAM = "stages.conjugate.translator"
LANGUAGE_PARAM = "promptwire.conjugate.language"
Family = Literal["marian", "m2m100", "nllb"]

INSTRUCTION = (
    "You are a translator. Translate the user's message from {source} to {target}. "
    "Reply with the translation only: no notes, no quotes, no explanations."
)
"""The fixed instruction of the ``self`` translator (a system message before the text)."""

Complete = Callable[[list[dict[str, str]], int], Awaitable[str]]
"""``await complete(messages, max_tokens)`` -> the serving model's greedy answer text."""


class TranslatorError(ValueError):
    """A translator problem; ``param`` names the request option or config key at fault."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class UnknownLanguage(TranslatorError):
    """The language is not a code, or this translator cannot translate to and from it."""


class TranslatorUnavailable(TranslatorError):
    """The translator cannot be loaded or cannot serve (missing checkpoint, wrong family, ...)."""


class Translator(Protocol):
    name: str
    """What the audit records: the checkpoint or template, or ``self:<backend>``."""
    source_language: str

    def language(self, code: str) -> str:
        """The canonical code when this translator translates source <-> ``code``; else UnknownLanguage."""
        ...

    async def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]: ...

    async def aclose(self) -> None: ...


_SEGMENT = re.compile(r"(\s*\n\s*|(?<=[.!?。！？])[ \t]+)")


def segments(text: str) -> list[str]:
    """``text`` cut into lines and sentences: even items are text, odd items the separators between
    them, kept verbatim so that ``"".join(segments(t)) == t``."""
    return _SEGMENT.split(text)


def _chunks(text: str, limit: int) -> list[str]:
    """A segment longer than ``limit`` characters cut at spaces (the models have a position limit)."""
    if len(text) <= limit:
        return [text]
    out: list[str] = []
    cur = ""
    for word in text.split(" "):
        if cur and len(cur) + 1 + len(word) > limit:
            out.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    out.append(cur)
    return out


def _unknown(code: str, why: str) -> UnknownLanguage:
    return UnknownLanguage(f"language {code!r}: {why}", param=LANGUAGE_PARAM)


def _check_code(code: str, source_language: str) -> str:
    c = canonical(code)
    if not c:
        raise _unknown(code, "not a language code (ISO 639-1 such as 'fr', or the translator's own code)")
    if c == source_language:
        raise _unknown(code, f"it is the clients' language (stages.conjugate.source_language: {source_language})")
    return c


@dataclass
class _Model:
    family: Family
    tokenizer: Any
    model: Any
    char_limit: int
    """Longest segment sent in one piece (characters; safely under the position limit)."""
    positions: int
    lang_ids: frozenset[int]


def _load(source: str, device: str) -> _Model:
    import transformers

    if source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().is_dir():
        raise TranslatorUnavailable(f"translator {source!r}: no such directory", param=TRANSLATOR_PARAM)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(source)
    except Exception as e:  # OSError (missing), ValueError (not seq2seq), ImportError (backend) ...
        raise TranslatorUnavailable(
            f"cannot load translator {source!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            param=TRANSLATOR_PARAM,
        ) from None
    kind = getattr(model.config, "model_type", "")
    family: Family
    if kind == "marian":
        family = "marian"
    elif kind == "m2m_100":
        family = "nllb" if "nllb" in type(tokenizer).__name__.lower() else "m2m100"
    else:
        raise TranslatorUnavailable(
            f"translator {source!r} is a {kind or 'unknown'} model; MarianMT, NLLB or M2M100 expected",
            param=TRANSLATOR_PARAM,
        )
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model.to(device).eval()
    except (RuntimeError, AssertionError, ValueError) as e:  # no such device, CUDA not compiled in, ...
        raise TranslatorUnavailable(f"translator {source!r}: device {device!r}: {str(e).splitlines()[0]}",
                                    param=TRANSLATOR_PARAM) from None
    positions = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    # M2M100's language tokens are not skipped by batch_decode: drop them by id
    lang_ids = frozenset(getattr(tokenizer, "lang_code_to_id", {}).values()) if family == "m2m100" else frozenset()
    return _Model(family, tokenizer, model, char_limit=max(32, positions), positions=positions, lang_ids=lang_ids)


class Seq2SeqTranslator:
    """A local MarianMT / NLLB / M2M100 translator (module docstring), loaded when built."""

    def __init__(
        self,
        source: str,
        *,
        source_language: str = "en",
        languages: Sequence[str] = (),
        device: str = "cpu",
        max_batch: int = 16,
    ) -> None:
        self.name = source
        self.source_language = canonical(source_language) or source_language
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="conjugate-translator")
        self._offered = frozenset(canonical(lang) or lang for lang in languages) or None
        self._models: dict[tuple[str, str], _Model] = {}
        self._shared: _Model | None = None
        start = time.perf_counter()
        if "{src}" in source or "{tgt}" in source:
            if not self._offered:
                raise TranslatorUnavailable(
                    f"translator {source!r} is a per-direction template: list its languages in "
                    "stages.conjugate.languages", param=TRANSLATOR_PARAM,
                )
            for lang in sorted(self._offered):
                for a, b in ((self.source_language, lang), (lang, self.source_language)):
                    self._models[(a, b)] = _load(source.format(src=a, tgt=b), device)
        else:
            self._shared = _load(source, device)
            if self._shared.family == "marian":
                raise TranslatorUnavailable(
                    f"translator {source!r} is a MarianMT checkpoint, which translates one way only; name "
                    "both directions with a template such as Helsinki-NLP/opus-mt-{src}-{tgt}",
                    param=TRANSLATOR_PARAM,
                )
            for lang in sorted(self._offered or ()):
                try:
                    self._codes(self._shared, lang)
                except UnknownLanguage as e:
                    raise TranslatorUnavailable(f"stages.conjugate.languages: {e}", param=TRANSLATOR_PARAM) from None
        logger.info("translator %s loaded in %.1f s", source, time.perf_counter() - start)

    def _model(self, src: str, tgt: str) -> _Model:
        if self._shared is not None:
            return self._shared
        found = self._models.get((src, tgt))
        if found is None:
            raise _unknown(tgt if src == self.source_language else src, f"translator {self.name!r} has no such model")
        return found

    def _codes(self, m: _Model, lang: str) -> tuple[str, str]:
        """(source code, target code) in the family's spelling, checked against the tokenizer."""
        tok = m.tokenizer
        if m.family == "m2m100":
            for code in (self.source_language, lang):
                if code not in tok.lang_code_to_id:
                    raise _unknown(code, f"translator {self.name!r} (M2M100) has no language token __{code}__")
            return self.source_language, lang
        if m.family == "nllb":
            out = []
            for code in (self.source_language, lang):
                fl = flores(code)
                if fl is None or tok.convert_tokens_to_ids(fl) in (None, tok.unk_token_id):
                    raise _unknown(code, f"translator {self.name!r} (NLLB) has no FLORES-200 code for it "
                                   "(e.g. fra_Latn)")
                out.append(fl)
            return out[0], out[1]
        return self.source_language, lang

    def language(self, code: str) -> str:
        c = _check_code(code, self.source_language)
        if self._offered is not None and c not in self._offered:
            offered = ", ".join(sorted(self._offered))
            raise _unknown(code, f"not among the configured languages ({offered})")
        if self._shared is not None:
            self._codes(self._shared, c)
        else:
            self._model(self.source_language, c)
        return c

    async def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        m = self._model(src, tgt)
        parts = [segments(t) for t in texts]
        todo: list[str] = []
        for p in parts:
            for i in range(0, len(p), 2):
                if p[i].strip():
                    todo.extend(_chunks(p[i], m.char_limit))
        if not todo:
            return list(texts)
        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(self._executor, self._run, m, todo, src, tgt)
        it = iter(done)
        out = []
        for p in parts:
            for i in range(0, len(p), 2):
                if p[i].strip():
                    p[i] = " ".join(next(it) for _ in _chunks(p[i], m.char_limit))
            out.append("".join(p))
        return out

    def _run(self, m: _Model, texts: list[str], src: str, tgt: str) -> list[str]:
        import torch

        tok, kwargs = m.tokenizer, {}
        lang = tgt if src == self.source_language else src
        if m.family == "marian":
            codes = list(getattr(tok, "supported_language_codes", None) or ())
            if codes:  # a multi-target checkpoint: the target language is a >>xx<< token
                token = next((t for t in (f">>{tgt}<<", f">>{iso3(tgt)}<<") if t in codes), None)
                if token is None:
                    raise _unknown(tgt, f"translator {self.name!r} has no target token >>{tgt}<<")
                texts = [f"{token} {t}" for t in texts]
        else:
            a, b = self._codes(m, lang)
            s, t = (a, b) if src == self.source_language else (b, a)
            tok.src_lang = s
            kwargs["forced_bos_token_id"] = tok.get_lang_id(t) if m.family == "m2m100" else tok.convert_tokens_to_ids(t)
        out: list[str] = [""] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        for start in range(0, len(order), self.max_batch):
            idx = order[start : start + self.max_batch]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True)
            enc = {k: v.to(m.model.device) for k, v in enc.items()}
            longest = int(enc["input_ids"].shape[1])  # (B, T)
            budget = max(1, min(2 * longest + 16, m.positions - 2))
            with torch.inference_mode():
                ids = m.model.generate(**enc, **kwargs, do_sample=False, num_beams=1, max_new_tokens=budget)  # (B, T')
            rows = [[t for t in row if t not in m.lang_ids] for row in ids.tolist()]
            for i, text in zip(idx, tok.batch_decode(rows, skip_special_tokens=True), strict=True):
                out[i] = text.strip()
        return out

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class SelfTranslator:
    """The serving model translating under ``INSTRUCTION`` (greedy), one call per text."""

    def __init__(
        self,
        complete: Complete,
        *,
        backend: str,
        source_language: str = "en",
        languages: Sequence[str] = (),
        max_tokens: int = 1024,
    ) -> None:
        self.name = f"self:{backend}"
        self.source_language = canonical(source_language) or source_language
        self._complete = complete
        self._offered = frozenset(canonical(lang) or lang for lang in languages) or None
        self.max_tokens = max_tokens
        for lang in sorted(self._offered or ()):
            if english_name(lang) is None:
                raise TranslatorUnavailable(
                    f"stages.conjugate.languages: the self translator names languages in its instruction and "
                    f"knows no name for {lang!r}", param=TRANSLATOR_PARAM,
                )

    def language(self, code: str) -> str:
        c = _check_code(code, self.source_language)
        if FLORES_CODE.match(code.strip()) and c == code.strip():
            raise _unknown(code, "the self translator knows no name for it")
        if english_name(c) is None:
            raise _unknown(code, "the self translator knows no name for it (it names languages in its instruction)")
        if self._offered is not None and c not in self._offered:
            raise _unknown(code, f"not among the configured languages ({', '.join(sorted(self._offered))})")
        return c

    async def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        instruction = INSTRUCTION.format(source=english_name(src) or src, target=english_name(tgt) or tgt)

        async def one(text: str) -> str:
            if not text.strip():
                return text
            messages = [{"role": "system", "content": instruction}, {"role": "user", "content": text}]
            return (await self._complete(messages, self.max_tokens)).strip()

        return list(await asyncio.gather(*(one(t) for t in texts)))

    async def aclose(self) -> None:
        return None


def provider_complete(provider: Any, model: str | None = None) -> Complete:
    """A ``Complete`` over a provider (the local one): a greedy chat request for ``model`` (None: the
    first model the provider lists)."""
    names: list[str] = [model] if model is not None else []

    async def complete(messages: list[dict[str, str]], max_tokens: int) -> str:
        if not names:
            names.append((await provider.list_models())[0].id)
        req = GatewayRequest(
            request_id=f"conjugate-self-{uuid.uuid4().hex[:12]}", kind="chat", model=names[0],
            messages=tuple(ChatMessage.from_dict(m) for m in messages),
            params={"max_tokens": max_tokens, "temperature": 0},
        )
        body = (await provider.generate(req)).body
        content = body["choices"][0]["message"].get("content")
        return content if isinstance(content, str) else ""

    return complete

