"""Plain frozen dataclasses the gateway core, its front ends, stages and providers exchange."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ChatMessage",
    "Completion",
    "GatewayRequest",
    "ModelInfo",
    "RequestKind",
    "StageOptions",
    "StageStats",
    "StreamChunk",
    "Usage",
]

RequestKind = Literal["chat", "completion"]
StageOptions = Mapping[str, Any]
"""One stage's per-request options; ``False`` in GatewayRequest.stage_options turns the stage off."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat message; keys other than role/content (name, tool_calls, ...) are kept verbatim."""

    role: str
    content: str | list[dict[str, Any]] | None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Every other key of the OpenAI message object, passed through untouched."""
    content_given: bool = True
    """False when the client's message had no ``content`` key at all (an assistant turn with only
    tool_calls): it is then left out upstream too, not sent as null."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChatMessage:
        extra = {k: v for k, v in d.items() if k != "role" and k != "content"}
        return cls(role=d["role"], content=d.get("content"), extra=extra, content_given="content" in d)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role}
        if self.content is not None or self.content_given:
            out["content"] = self.content
        if self.extra:
            out.update(self.extra)
        return out

    def text(self) -> str:
        """The message's text: the string content, or the text parts of a multi-part content."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(t for p in self.content if p.get("type") == "text" and isinstance(t := p.get("text"), str))


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    """A generation request as the core sees it, independent of HTTP/gRPC wire formats."""

    request_id: str
    kind: RequestKind
    model: str
    messages: tuple[ChatMessage, ...] = ()
    """Chat requests only."""
    prompt: str | list[Any] | None = None
    """Completion requests only: a string, a list of strings, or token ids, as OpenAI allows."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Every other OpenAI body field (n, stop, max_tokens, temperature, tools, stream_options, unknown
    fields, ...) passed through verbatim to the provider."""
    stream: bool = False
    stage_options: Mapping[str, StageOptions | Literal[False]] = field(default_factory=dict)
    """Per-request overrides from the ``promptwire`` extension object: stage name -> options or False."""
    decoder: Mapping[str, Any] | None = None
    """``{"name": "trie" | "uscd" | "decog", ...}`` or None."""
    api_key_id: str | None = None
    """The authenticated key's id (never the secret), None when auth is off."""
    deadline: float | None = None
    """Absolute time.monotonic() after which the request fails with RequestTimeout."""
    received_at: float = 0.0
    """time.perf_counter() when the front end received the request (for the overhead figure)."""
    soft_prompt: Any = None
    """A (n, d) tensor of input embeddings to place before the prompt's token embeddings (the
    select_prompt stage's chosen soft prompt); only the ``local`` provider can honour it."""

    def prompt_text(self) -> str:
        """All prompt text concatenated (for size limits and token counts)."""
        if self.kind == "chat":
            return "\n".join(m.text() for m in self.messages)
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt, list):
            return "\n".join(p for p in self.prompt if isinstance(p, str))
        return ""

    def prompt_token_ids(self) -> int:
        """How many token ids a completion prompt gives directly (``[1, 2]`` or ``[[1, 2], [3]]``)."""
        p = self.prompt
        if self.kind != "completion" or not isinstance(p, list) or not p:
            return 0
        if all(isinstance(t, int) for t in p):
            return len(p)
        return sum(len(x) for x in p if isinstance(x, list))

    def upstream_body(self) -> dict[str, Any]:
        """The OpenAI request body to send upstream (extension object removed)."""
        body: dict[str, Any] = {"model": self.model}
        if self.kind == "chat":
            body["messages"] = [m.to_dict() for m in self.messages]
        else:
            body["prompt"] = self.prompt
        body.update(self.params)
        if self.stream:
            body["stream"] = True
        return body


@dataclass(frozen=True, slots=True)
class StageStats:
    """What one stage did to one request."""

    stage: str
    tokens_before: int
    tokens_after: int
    ms: float
    choice: str | None = None
    """What the stage chose (a pool entry, a rate, "skipped: <reason>"), for logs and headers."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "stage": self.stage,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "ms": round(self.ms, 3),
        }
        if self.choice is not None:
            d["choice"] = self.choice
        if self.extra:
            d["extra"] = dict(self.extra)
        return d


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    aux_prompt_tokens: int = 0
    """Local backends: an auxiliary stream's prefilled prompt (USCD's lame prompt)."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Usage | None:
        if not d:
            return None
        p = int(d.get("prompt_tokens") or 0)
        c = int(d.get("completion_tokens") or 0)
        return cls(p, c, int(d.get("total_tokens") or p + c), int(d.get("aux_prompt_tokens") or 0))


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole (non-streamed) OpenAI response: chat.completion or text_completion object."""

    body: dict[str, Any]
    raw: bytes | None = None
    """The upstream's exact response bytes when nothing changed them; front ends send these as-is."""

    @property
    def usage(self) -> Usage | None:
        return Usage.from_dict(self.body.get("usage"))

    def to_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()


class StreamChunk:
    """One streamed OpenAI chunk (chat.completion.chunk or text_completion).

    Built from a dict (``StreamChunk(data)``) or from the upstream's bytes (``StreamChunk(raw=payload)``);
    ``data`` is parsed from ``raw`` only when someone reads it, so pass-through streams never parse.
    Treat it as immutable."""

    __slots__ = ("_data", "raw")

    def __init__(self, data: dict[str, Any] | None = None, raw: bytes | None = None) -> None:
        assert data is not None or raw is not None, "StreamChunk needs data or raw"
        self._data = data
        self.raw = raw
        """The upstream's exact ``data:`` payload (no prefix, no blank line) when unchanged."""

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            assert self.raw is not None
            parsed = json.loads(self.raw.decode())
            if not isinstance(parsed, dict):
                raise ValueError("stream chunk is not a JSON object")
            self._data = parsed
        return self._data

    def has_usage(self) -> bool:
        """Cheap check: does this chunk carry a non-null usage object?"""
        if self._data is None and self.raw is not None:
            return b'"usage":{' in self.raw or b'"usage": {' in self.raw
        return bool(self.data.get("usage"))

    @property
    def usage(self) -> Usage | None:
        return Usage.from_dict(self.data.get("usage"))

    def to_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.data, separators=(",", ":"), ensure_ascii=False).encode()

    def text(self) -> str:
        """Concatenated text deltas of all choices in this chunk."""
        out = []
        for ch in self.data.get("choices") or ():
            delta = ch.get("delta")
            if isinstance(delta, dict):
                c = delta.get("content")
                if isinstance(c, str):
                    out.append(c)
            elif isinstance(ch.get("text"), str):
                out.append(ch["text"])
        return "".join(out)

    def __repr__(self) -> str:
        return f"StreamChunk({self.to_bytes()[:80]!r})"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One entry of GET /v1/models."""

    id: str
    owned_by: str = "promptwire"
    created: int = 0
    provider: str = ""
    """Name of the configured backend serving it (not exposed in the OpenAI object)."""

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}
