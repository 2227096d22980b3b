"""The stage protocol: a prompt transformation, its per-request response hook, and what a stage may use.

A stage rewrites the request (``apply``) and may return a :class:`ResponseHook` holding that
request's state; the pipeline runs the hooks over the answer in reverse stage order, for whole
responses and for streams, on HTTP and gRPC alike. A hook either transforms a stream chunk by chunk
(``buffers = False``) or needs it whole (``buffers = True``: the gateway holds the response until the
upstream's stream ends, then sends what the hook produced; its stats then also join the response
headers). A hook that changes the body makes the gateway send the new body, never the upstream's
raw bytes.

Stats of a hook that streams chunk by chunk are known only at the end: they reach the final gRPC
message and trailers, and over HTTP the final SSE chunk's ``promptwire.stats``.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from gateway.config.base import ConfigError
from gateway.errors import InvalidRequest
from gateway.types import Completion, GatewayRequest, StageStats, StreamChunk

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig
    from gateway.observe.metrics import Metrics
    from gateway.providers.base import Provider

__all__ = [
    "ModelAccess",
    "ResponseHook",
    "Stage",
    "StageDeps",
    "StageFactory",
    "StageResult",
    "TextHook",
    "check_options",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StageResult:
    """What a stage did to one request."""

    request: GatewayRequest
    """The rewritten request; the same object when nothing changed (nothing is re-serialised then)."""
    stats: StageStats
    hook: ResponseHook | None = None
    """Per-request state that rewrites the answer (None: the answer passes untouched)."""
    settle: asyncio.Future[StageStats] | None = None
    """Stats still being completed off the request path (token counts in a worker thread, say):
    ``stats`` holds what is known when ``apply`` returns, and the gateway awaits this future once the
    upstream has answered (its first chunk, for a stream), then reports its result in their place, in
    headers, trailers, metrics and traces. Whatever it still has to wait for then counts as gateway
    overhead. A future, not a coroutine: it runs whether or not the request gets that far (when the
    request fails first, the pipeline completes it in the background for the metrics). If it fails,
    the provisional ``stats`` stand (a warning is logged)."""


@runtime_checkable
class Stage(Protocol):
    """A prompt stage. Instances are shared by all requests: keep per-request state in the hook."""

    name: str

    def validate(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """Check (operator defaults merged with client) options and return them normalised.

        The table has already checked each value's type and range; this checks what ties options
        together. Raises InvalidRequest with ``param="promptwire.<stage>.<option>"``. Called on the
        request path before ``apply``; keep it cheap."""
        ...

    async def apply(self, req: GatewayRequest, options: Mapping[str, Any]) -> StageResult:
        """Rewrite the request; optionally return a hook for its answer."""
        ...


class ResponseHook:
    """One request's pass over the answer. Subclass and override what you need; the defaults pass
    everything through unchanged."""

    buffers: bool = False
    """True: :meth:`stream` consumes the whole upstream stream before yielding anything (the gateway
    then holds the response until the end, and the hook's stats join the response headers)."""

    async def completion(self, completion: Completion) -> Completion:
        """A whole response. Return a new :class:`Completion` (``raw`` None) when the body changes."""
        return completion

    def stream(self, chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        """A streamed response: yield the chunks to send (build new StreamChunk objects for changed ones;
        never mutate a chunk's ``data`` in place)."""
        return chunks

    def stats(self) -> StageStats | None:
        """Called once the answer has gone through: what the hook did (None: nothing to report)."""
        return None


class TextHook(ResponseHook):
    """A hook that rewrites each choice's final text (``n > 1`` included), whole or streamed.

    Implement :meth:`transform`. Streams are buffered to the end: the rewritten text of each choice is
    sent in that choice's first content chunk, roles, finish reasons, tool calls and usage keep their
    chunks, and chunks left empty are dropped. A rewritten choice's ``logprobs`` are dropped (they
    describe tokens that are no longer sent)."""

    buffers = True

    async def transform(self, texts: dict[int, str]) -> dict[int, str]:
        """Choice index -> text the model produced; return choice index -> text to send (missing: kept)."""
        raise NotImplementedError

    async def completion(self, completion: Completion) -> Completion:
        body = completion.body
        choices = body.get("choices")
        if not isinstance(choices, list):
            return completion
        texts: dict[int, str] = {}
        for i, ch in enumerate(choices):
            text = _choice_text(ch)
            if text is not None:
                texts[_index(ch, i)] = text
        new = await self.transform(dict(texts))
        changed = {k: v for k, v in new.items() if k in texts and v != texts[k]}
        if not changed:
            return completion
        out = dict(body)
        out["choices"] = []
        for i, ch in enumerate(choices):
            idx = _index(ch, i)
            if idx in changed and isinstance(ch, dict):
                ch = copy.deepcopy(ch)
                if isinstance(ch.get("message"), dict):
                    ch["message"]["content"] = changed[idx]
                else:
                    ch["text"] = changed[idx]
                if "logprobs" in ch:
                    ch["logprobs"] = None
            out["choices"].append(ch)
        return Completion(out)

    async def stream(self, chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        held = [c async for c in chunks]
        texts: dict[int, str] = {}
        for chunk in held:
            for i, ch in enumerate(chunk.data.get("choices") or ()):
                piece = _choice_text(ch, "delta")
                if piece is not None:
                    idx = _index(ch, i)
                    texts[idx] = texts.get(idx, "") + piece
        new = await self.transform(dict(texts))
        changed = {k: v for k, v in new.items() if k in texts and v != texts[k]}
        if not changed:
            for chunk in held:
                yield chunk
            return
        sent: set[int] = set()
        for chunk in held:
            out = _rewrite_chunk(chunk, changed, sent)
            if out is not None:
                yield out


def _index(choice: Any, position: int) -> int:
    idx = choice.get("index") if isinstance(choice, dict) else None
    return idx if isinstance(idx, int) and not isinstance(idx, bool) else position


def _choice_text(choice: Any, part: str = "message") -> str | None:
    """A choice's text: ``message.content`` (whole chat), ``delta.content`` (``part="delta"``: a chat
    chunk), or ``text`` (completions); None when it has none."""
    if not isinstance(choice, dict):
        return None
    inner = choice.get(part)
    value = inner.get("content") if isinstance(inner, dict) else choice.get("text")
    return value if isinstance(value, str) else None


def _rewrite_chunk(chunk: StreamChunk, changed: Mapping[int, str], sent: set[int]) -> StreamChunk | None:
    """The chunk with each changed choice's text moved into its first content piece; None if nothing
    is left to send."""
    data = chunk.data
    choices = data.get("choices")
    if not isinstance(choices, list) or not any(_index(ch, i) in changed for i, ch in enumerate(choices)):
        return chunk
    kept: list[Any] = []
    for i, ch in enumerate(choices):
        idx = _index(ch, i)
        piece = _choice_text(ch, "delta")
        if idx not in changed or piece is None or not isinstance(ch, dict):
            kept.append(ch)
            continue
        ch = copy.deepcopy(ch)
        text = "" if idx in sent else changed[idx]
        sent.add(idx)
        if isinstance(ch.get("delta"), dict):
            ch["delta"]["content"] = text
            if not text:
                del ch["delta"]["content"]
        else:
            ch["text"] = text
        if "logprobs" in ch:
            ch["logprobs"] = None
        empty = (not text and not ch.get("finish_reason")
                 and not (isinstance(ch.get("delta"), dict) and ch["delta"]))
        if not empty:
            kept.append(ch)
    if not kept and not data.get("usage") and not data.get("promptwire"):
        return None
    return StreamChunk({**data, "choices": kept})


@runtime_checkable
class ModelAccess(Protocol):
    """What a model-bound stage may use of a local model (the ``local`` provider implements it)."""

    backend: str
    """The backend's name in config."""
    tokenizer: Any
    hidden_size: int
    fingerprint: str
    """A stable identity of the weights and tokenizer (artifacts made for one model check it)."""

    def encode(self, text: str) -> list[int]:
        """Tokenise like a completion prompt."""
        ...

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The chat template applied and tokenised, as the provider does for generation."""
        ...

    def embed(self, ids: Sequence[int]) -> Any:
        """The model's input embeddings of ``ids``: a (T, d) tensor on the model's device and dtype."""
        ...

    async def run_exclusive(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(model)`` on the engine's thread between two decode steps (inference mode), so no
        other thread uses the model at the same time; returns its result."""
        ...


@dataclass(frozen=True)
class StageDeps:
    """What a stage factory is given besides its own config: the gateway's backends and metrics."""

    providers: Mapping[str, Provider]
    config: GatewayConfig
    metrics: Metrics | None = None

    def model(self, backend: str, key: str) -> ModelAccess:
        """The local model of ``backend`` for a model-bound stage; ``key`` is the config key path that
        named it (for the error when that backend cannot run the stage)."""
        prov = self.providers.get(backend)
        if prov is None:
            known = ", ".join(sorted(self.providers)) or "none"
            raise ConfigError(f"{key}: {backend!r} is not a key of backends (known: {known})")
        if isinstance(prov, ModelAccess):  # the local provider is its own ModelAccess
            return prov
        kind = self.config.backend(backend).type if backend in self.config.backends else "?"
        raise ConfigError(f"{key}: backend {backend!r} has type {kind!r}; this needs a backend of type 'local'")


StageFactory = Callable[[Any, StageDeps], Stage]
"""``factory(stage_config, deps) -> Stage``: stage_config is the typed ``stages.<name>`` section (the
table's config class; its defaults when the section is absent)."""


def check_options(
    stage: str, options: Mapping[str, Any], schema: Mapping[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    """Type-check ``options`` against ``{option: type}``; unknown names and wrong types are 400s (for
    stages outside the table, e.g. in tests; table stages are checked by the pipeline)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        want = schema.get(key)
        if want is None:
            known = ", ".join(sorted(schema)) or "none"
            raise InvalidRequest(
                f"unknown option {key!r} for stage {stage!r} (known: {known})",
                param=f"promptwire.{stage}.{key}",
            )
        # bool is an int subclass; an option typed int/float must not accept true/false
        if isinstance(value, bool) and bool not in (want if isinstance(want, tuple) else (want,)):
            ok = False
        else:
            ok = isinstance(value, want)
        if not ok:
            names = want.__name__ if isinstance(want, type) else " or ".join(t.__name__ for t in want)
            raise InvalidRequest(
                f"option {key!r} of stage {stage!r} must be {names}, got {type(value).__name__}",
                param=f"promptwire.{stage}.{key}",
            )
        out[key] = value
    return out
