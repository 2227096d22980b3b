"""The per-request processor API that every decoder (trie, uscd, decog) implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "DecoderContext",
    "DecoderOptionError",
    "Processor",
    "ProcessorFactory",
]


class DecoderOptionError(ValueError):
    """A decoder option is invalid; `param` names it (e.g. ``promptwire.decoder.labels``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class DecoderContext:
    """What a processor factory knows about the request it is built for."""

    tokenizer: Any
    """The model's tokenizer (a transformers ``PreTrainedTokenizerBase``)."""
    vocab_size: int
    """Width V of the logits rows; may exceed ``len(tokenizer)`` (padded embedding matrices)."""
    eos_token_ids: frozenset[int]
    """Token ids that end generation (from the generation config and the tokenizer)."""
    prompt_ids: tuple[int, ...]
    """The request's prompt, already tokenised (chat template applied); labels are tokenised after it."""
    max_new_tokens: int
    """The request's token budget; a decoder may reject options that cannot fit in it."""


class Processor:
    """One request's decoder. The engine calls, per step, in this order:

    1. ``process(logits, aux_logits)`` — only if a subclass overrides it; returns adjusted logits (V,).
    2. ``allowed_token_ids()`` — ``None`` (no restriction) or the small set of ids that may come next;
       the engine builds the mask for the whole batch in one vectorised scatter, so a constrained
       decoder never loops over the vocabulary in Python.
    3. ``eos_allowed()`` — whether an EOS id may come next. EOS ids are added to the allowed set when
       True and masked out when False, whatever ``allowed_token_ids`` says.
    4. the engine samples a token, then calls ``advance(token_id)`` (also for EOS), and stops the
       request if ``finished()`` (finish reason ``"stop"``).

    ``aux_prompt_ids()`` is asked once, before prefill: a non-``None`` token list opens an auxiliary
    stream (USCD's lame prompt, a CFG negative prompt) that the engine prefills and then advances on
    the SAME generated tokens as the main stream; its next-token logits arrive as ``aux_logits``.

    Logits are raw model scores (float32, before temperature / top-k / top-p). If all tokens end up
    masked the engine finishes the request with reason ``"stop"`` rather than sampling garbage.
    Processors run on the engine thread, one call at a time; they need no locking.
    """

    def aux_prompt_ids(self) -> Sequence[int] | None:
        """Token ids of an auxiliary prompt to run in lock-step, or None (the default)."""
        return None

    def process(self, logits: torch.Tensor, aux_logits: torch.Tensor | None) -> torch.Tensor:
        """Return adjusted next-token logits. ``logits`` is (V,), ``aux_logits`` (V,) or None.

        May modify ``logits`` in place and return it. The default returns it unchanged, and the
        engine skips the call entirely for processors that do not override it.
        """
        return logits

    def allowed_token_ids(self) -> Sequence[int] | torch.Tensor | None:
        """Ids that may come next (EOS handled by ``eos_allowed``), or None for no restriction."""
        return None

    def eos_allowed(self) -> bool:
        """Whether generation may end here."""
        return True

    def advance(self, token_id: int) -> None:
        """Told the token the engine appended to this request (main and aux streams alike)."""

    def finished(self) -> bool:
        """True when the output is complete and the engine should stop without sampling more."""
        return False

    def stats(self) -> Mapping[str, Any]:
        """Small JSON-able summary reported with the result (e.g. fraction of contrasted steps)."""
        return {}


ProcessorFactory = Callable[[Mapping[str, Any], DecoderContext], Processor]
"""Builds one request's processor from the client's decoder options (the ``decoder`` object minus
``name``). Raises :class:`DecoderOptionError` for bad options; the gateway maps it to 400."""
