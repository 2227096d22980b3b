"""What the engine hands back: stream deltas, whole results, usage and token log-probabilities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GenerationResult", "StreamDelta", "TokenLogprob", "Usage"]


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability (after processors, before temperature) and alternatives."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    """Prompt positions: the prompt's token ids plus any soft-prompt vectors before them."""
    completion_tokens: int
    """Every sampled token, EOS and a stop string's tokens included."""
    aux_prompt_tokens: int = 0
    """Auxiliary-stream prompt tokens prefilled (a USCD lame prompt); 0 when none ran (a lazy
    stream that never contrasted prefills nothing)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class StreamDelta:
    """One step's output for one request. The last delta carries finish_reason, usage and processor stats."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None
    """None while running; then "stop" (EOS, stop string, decoder done), "length", "cancelled", "error"."""
    usage: Usage | None = None
    error: str | None = None
    processor_stats: Mapping[str, Any] | None = None
    """The decoder's ``stats()`` (last delta of a request with a processor only)."""


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] = ()
    stop: str | None = None
    """The stop string that ended generation, if one did."""
    processor_stats: Mapping[str, Any] = field(default_factory=dict)
