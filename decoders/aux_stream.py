"""A request's auxiliary stream (USCD's lame prompt): eager rows in the batch, or lazy with a cache of its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["AuxState", "ExtendFn"]

ExtendFn = Callable[[Sequence[int], "torch.Tensor | None", Any, int], "tuple[torch.Tensor, Any]"]
"""``extend(ids, soft_prompt, cache, past_len) -> (last logits (V,), cache)``: run a single-row forward
over ``ids`` (after ``soft_prompt`` embeddings, first call only) on top of ``cache`` of ``past_len`` positions."""


class AuxState:
    """The engine's side of :class:`decoders.processor.AuxStream` for one request.

    Eager: the stream is a row of the engine's batch; every step's batched forward computes its logits,
    which the engine hands over with :meth:`set_step_logits`. Lazy: the stream keeps its own single-row
    KV cache and the tokens it has not seen yet (at first, its whole prompt); :meth:`logits` runs one
    forward over all of them, so a stream consulted on a third of the steps runs a third of the forwards.
    Either way it sees exactly the main stream's generated tokens, so its logits are the same.
    """

    def __init__(self, prompt_ids: Sequence[int], soft_prompt: torch.Tensor | None, lazy: bool,
                 extend: ExtendFn | None = None) -> None:
        self.prompt_ids = tuple(prompt_ids)
        self.soft_prompt = soft_prompt  # (n, d) or None
        self.lazy = lazy
        self.forwards = 0
        """Forward passes run for this stream (its prefill included)."""
        self.prompt_tokens = 0
        """Prompt positions prefilled so far (0 for a lazy stream never consulted)."""
        self._extend = extend
        self._pending: list[int] = list(prompt_ids) if lazy else []
        self._cache: Any = None
        self._length = 0  # positions in the lazy cache
        self._logits: torch.Tensor | None = None  # (V,) for the current step

    @property
    def length(self) -> int:
        """Prompt positions (soft prompt included) the stream starts from."""
        return len(self.prompt_ids) + (0 if self.soft_prompt is None else int(self.soft_prompt.shape[0]))

    def prefilled(self) -> None:
        """Eager: the engine prefilled the stream as a new batch row (its logits come with the step's)."""
        self.prompt_tokens = self.length

    def set_step_logits(self, logits: torch.Tensor) -> None:
        """Eager: this step's logits (V,) from the batched forward."""
        self.forwards += 1
        self._logits = logits

    def logits(self) -> torch.Tensor:
        """This step's next-token logits (V,); a lazy stream catches up over its skipped tokens first."""
        if self._logits is None:
            if not self.lazy or self._extend is None:
                raise RuntimeError("an eager auxiliary stream has no logits outside a decode step")
            soft = self.soft_prompt if self._cache is None else None
            first = self._cache is None
            self._logits, self._cache = self._extend(self._pending, soft, self._cache, self._length)
            self._length += len(self._pending) + (0 if soft is None else int(soft.shape[0]))
            if first:
                self.prompt_tokens = self.length
            self._pending = []
            self.forwards += 1
        return self._logits

    def release(self) -> None:
        """The request finished: drop the lazy cache."""
        self._cache = None
        self._logits = None
        self._pending = []

    def push(self, token_id: int) -> None:
        """The main stream appended ``token_id``: the next step's logits follow it."""
        self._logits = None
        if self.lazy:
            self._pending.append(token_id)
