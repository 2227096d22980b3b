"""Measuring constrained decoding: batched generation on the engine, compliance, the LLM's own likelihood."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from decoders.engine import Engine, GenerationResult, SamplingParams
from decoders.formats import TokenDFA
from decoders.processor import Processor

__all__ = ["Outcome", "Summary", "generate_many", "llm_log_probs", "summarize"]


def generate_many(engine: Engine, prompt_ids: Sequence[int], make: Callable[[], Processor | None], n: int,
                  max_tokens: int, temperature: float = 1.0, seed: int = 0) -> list[GenerationResult]:
    """``n`` seeded generations (seeds ``seed..seed+n-1``), submitted together so the engine batches them;
    steps the engine inline (call it on an engine that was not ``start()``-ed)."""
    handles = [engine.submit(prompt_ids, SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed + i),
                             make())
               for i in range(n)]
    while not all(h.done for h in handles):
        engine.step()
    return [h.result() for h in handles]


@torch.no_grad()
def llm_log_probs(model: Any, prompt_ids: Sequence[int], outputs: Sequence[Sequence[int]], batch: int = 64
                  ) -> list[torch.Tensor]:
    """The unconstrained model's log-probability of each output token given the prompt and the tokens before."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    p = len(prompt_ids)
    for lo in range(0, len(outputs), batch):
        chunk = [list(o) for o in outputs[lo : lo + batch]]
        width = p + max((len(o) for o in chunk), default=0)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, o in enumerate(chunk):  # right padding: positions stay those of an unpadded run
            ids[i, : p + len(o)] = torch.tensor(list(prompt_ids) + o)
            mask[i, : p + len(o)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits[:, p - 1 : -1], dim=-1)  # (B, T-p, V): predicts output position j
        for i, o in enumerate(chunk):
            tok = torch.tensor(o, dtype=torch.long, device=logp.device)
            out.append(logp[i, torch.arange(len(o), device=logp.device), tok].cpu())
    return out


@dataclass(frozen=True)
class Outcome:
    """One generation, judged."""

    text: str
    compliant: bool
    log_prob: float
    """Sum of the LLM's log-probabilities of every generated token (EOS included)."""
    last_prob: float
    """The LLM's probability of the last generated token (EOS, or the token that completed the format)."""
    tokens: int


@dataclass(frozen=True)
class Summary:
    n: int
    compliance: float
    mean_log_prob: float
    mean_log_prob_per_token: float
    forced_unlikely_end: float
    """Fraction of outputs whose last token had LLM probability below ``unlikely``."""
    mean_tokens: float


def summarize(results: Sequence[GenerationResult], model: Any, prompt_ids: Sequence[int], pattern: str,
              dfa: TokenDFA, eos_ids: frozenset[int], unlikely: float = 0.01) -> tuple[Summary, list[Outcome]]:
    """Check each result's text against ``pattern`` (full match) and its tokens against ``dfa``; score it under
    the unconstrained LLM."""
    rx = re.compile(pattern)
    logps = llm_log_probs(model, prompt_ids, [r.token_ids for r in results])
    outcomes = []
    for r, lp in zip(results, logps, strict=True):
        body = [t for t in r.token_ids if t not in eos_ids]
        ok = bool(rx.fullmatch(r.text)) and dfa.accepts(body) and r.finish_reason in ("stop", "length")
        last = math.exp(float(lp[-1])) if lp.numel() else 1.0
        outcomes.append(Outcome(r.text, ok, float(lp.sum()), last, len(r.token_ids)))
    n = len(outcomes)
    tokens = sum(o.tokens for o in outcomes)
    summary = Summary(
        n=n,
        compliance=sum(o.compliant for o in outcomes) / n,
        mean_log_prob=sum(o.log_prob for o in outcomes) / n,
        mean_log_prob_per_token=sum(o.log_prob for o in outcomes) / max(1, tokens),
        forced_unlikely_end=sum(o.last_prob < unlikely for o in outcomes) / n,
        mean_tokens=tokens / n,
    )
    return summary, outcomes
