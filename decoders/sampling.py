"""Sampling parameters, their validation, and batched next-token selection."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["MAX_STOP", "MAX_TOP_LOGPROBS", "SamplingParamError", "SamplingParams", "filter_logits", "select_tokens"]

MAX_TOP_LOGPROBS = 20
MAX_STOP = 16


class SamplingParamError(ValueError):
    """An invalid sampling value; `param` names the offending request field (``temperature``, ...)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens. ``validate()`` before submitting (the engine does)."""

    max_tokens: int = 256
    """Upper bound on generated tokens (EOS included); clamped to what the context window leaves."""
    temperature: float = 1.0
    """0 means greedy (argmax), matching ``model.generate(do_sample=False)``."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 (or -1, vLLM's spelling) disables it."""
    seed: int | None = None
    """Seeds this request's own torch.Generator, so its samples do not depend on its batch mates."""
    stop: tuple[str, ...] = ()
    """Generation stops before the first occurrence of any of these strings (not included in the text)."""
    top_logprobs: int | None = None
    """None: no logprobs; n >= 0: the chosen token's logprob plus the n most likely alternatives."""
    ignore_eos: bool = False
    """Mask EOS so generation always runs to max_tokens (HF's ``min_new_tokens=max_new_tokens``)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str | list):  # accept OpenAI's "stop": "x" and JSON lists
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> SamplingParams:
        """Return self, or raise SamplingParamError naming the first bad field."""
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise SamplingParamError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}", "max_tokens")
        if not _finite(self.temperature) or not 0.0 <= self.temperature <= 100.0:
            raise SamplingParamError(f"temperature must be in [0, 100], got {self.temperature!r}", "temperature")
        if not _finite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise SamplingParamError(f"top_p must be in (0, 1], got {self.top_p!r}", "top_p")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise SamplingParamError(f"top_k must be an integer >= -1, got {self.top_k!r}", "top_k")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise SamplingParamError(f"seed must be an integer, got {self.seed!r}", "seed")
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOP:
            raise SamplingParamError(f"stop must be at most {MAX_STOP} strings", "stop")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise SamplingParamError("stop strings must be non-empty strings", "stop")
        if self.top_logprobs is not None and (
            isinstance(self.top_logprobs, bool)
            or not isinstance(self.top_logprobs, int)
            or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS
        ):
            raise SamplingParamError(
                f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}",
                "top_logprobs",
            )
        return self


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def filter_logits(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Apply temperature, top-k and top-p row by row, vectorised. logits (B, V) -> (B, V)."""
    device = logits.device
    temp = torch.tensor([p.temperature for p in params], device=device, dtype=logits.dtype)  # (B,)
    x = logits / temp[:, None]  # (B, V)
    # top-k: everything below each row's k-th largest value is dropped
    ks = [p.top_k if p.top_k > 0 else 0 for p in params]
    if any(ks):
        k_max = min(max(ks), x.shape[-1])
        kth_all = torch.topk(x, k_max, dim=-1).values  # (B, k_max)
        idx = torch.tensor([min(k, k_max) - 1 if k else k_max - 1 for k in ks], device=device)
        kth = kth_all.gather(-1, idx[:, None])  # (B, 1)
        active = torch.tensor([k > 0 for k in ks], device=device)[:, None]  # (B, 1)
        x = x.masked_fill(active & (x < kth), -math.inf)
    # top-p: drop the tail once the sorted cumulative probability passes p (the top token always stays)
    ps = [p.top_p for p in params]
    if any(p < 1.0 for p in ps):
        top_p = torch.tensor(ps, device=device, dtype=x.dtype)[:, None]  # (B, 1)
        sorted_x, order = torch.sort(x, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_x, dim=-1)  # (B, V)
        before = torch.cumsum(probs, dim=-1) - probs  # (B, V) mass strictly before each token
        drop_sorted = before >= top_p  # (B, V)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # (B, V)
        x = x.masked_fill(drop, -math.inf)
    return x


def select_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
) -> list[int]:
    """Pick one token per row: argmax for greedy rows, else a draw with the row's own generator."""
    out = torch.argmax(logits, dim=-1).tolist()  # (B,) greedy choice for every row
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if sampled:
        rows = torch.tensor(sampled, device=logits.device)
        probs = torch.softmax(filter_logits(logits[rows], [params[i] for i in sampled]), dim=-1)  # (S, V)
        for j, i in enumerate(sampled):
            out[i] = int(torch.multinomial(probs[j], 1, generator=generators[i]).item())
    return [int(t) for t in out]
