"""Measuring constrained decoding: batched generation on the engine, compliance, the LLM's own likelihood."""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from decoders.engine import Engine, GenerationResult, SamplingParams
from decoders.formats import TokenDFA
from decoders.processor import Processor

__all__ = ["SHOW_FORMATS", "Outcome", "Summary", "compare_methods", "generate_many", "llm_log_probs", "summarize"]

logger = logging.getLogger(__name__)


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
    budget_forced: bool
    """At some step the token budget removed tokens the format allows (the output had to close in time)."""
    forced_unlikely: bool
    """At such a step the token taken had LLM probability below the ``unlikely`` threshold."""
    tokens: int


@dataclass(frozen=True)
class Summary:
    n: int
    compliance: float
    mean_log_prob: float
    mean_log_prob_per_token: float
    budget_forced: float
    """Fraction of outputs in which the token budget narrowed the allowed set at some step."""
    forced_unlikely: float
    """Fraction of outputs with a budget-forced step whose token had LLM probability below ``unlikely``."""
    mean_tokens: float


def _budget_steps(dfa: TokenDFA, tokens: Sequence[int], budget: int) -> list[int]:
    """Steps at which the budget filtered the allowed set (some successor could not finish in time)."""
    out, state = [], 0
    for t, token in enumerate(tokens):
        if state < 0:
            break
        remaining = budget - t
        if any(int(dfa.dist[d]) > remaining - 1 for _, d in dfa.edges(state)):
            out.append(t)
        state = dfa.step(state, token)
    return out


def summarize(results: Sequence[GenerationResult], model: Any, prompt_ids: Sequence[int], pattern: str,
              dfa: TokenDFA, eos_ids: frozenset[int], budget: int | None = None, unlikely: float = 0.01
              ) -> tuple[Summary, list[Outcome]]:
    """Check each result's text against ``pattern`` (full match) and its tokens against ``dfa``; score it under
    the unconstrained LLM; find the steps where the ``budget`` (max_tokens) forced the output to close."""
    rx = re.compile(pattern)
    logps = llm_log_probs(model, prompt_ids, [r.token_ids for r in results])
    outcomes = []
    for r, lp in zip(results, logps, strict=True):
        body = [t for t in r.token_ids if t not in eos_ids]
        ok = bool(rx.fullmatch(r.text)) and dfa.accepts(body) and r.finish_reason in ("stop", "length")
        forced = _budget_steps(dfa, body, budget) if budget is not None else []
        unlikely_hit = any(math.exp(float(lp[t])) < unlikely for t in forced)
        outcomes.append(Outcome(r.text, ok, float(lp.sum()), bool(forced), unlikely_hit, len(r.token_ids)))
    n = len(outcomes)
    tokens = sum(o.tokens for o in outcomes)
    summary = Summary(
        n=n,
        compliance=sum(o.compliant for o in outcomes) / n,
        mean_log_prob=sum(o.log_prob for o in outcomes) / n,
        mean_log_prob_per_token=sum(o.log_prob for o in outcomes) / max(1, tokens),
        budget_forced=sum(o.budget_forced for o in outcomes) / n,
        forced_unlikely=sum(o.forced_unlikely for o in outcomes) / n,
        mean_tokens=tokens / n,
    )
    return summary, outcomes


SHOW_FORMATS: dict[str, tuple[str, str, str]] = {
    "gsm8k": ("template", "#### {int}",
              "Tom has 3 apples and buys 4 more bags of 5 apples. How many apples does he have now?"),
    "judge": ("template", "Score: {choice:1|2|3|4|5}",
              "Rate how helpful this answer is: 'The capital of France is Paris.'"),
    "answer_confidence": ("template", "Answer: {int}\nConfidence: {choice:low|medium|high}",
                          "What is 12 times 3? Also say how sure you are."),
    "event_record": ("template",
                     "Event: {choice:attack|meeting|election}\nAgent: {text:6}\nPlace: {text:4}\nTime: {int}",
                     "Extract the event from: 'The city council met in Paris in 2019 to discuss the budget.'"),
    "number": ("template", "{number}", "Estimate the value of pi."),
    "date": ("regex", r"\d{4}-\d{2}-\d{2}", "On which date did the Berlin Wall fall?"),
}
"""name -> (format kind, format, task prompt): the formats of the Show items (the prompt states the task only)."""


def _decog_for(engine: Engine, prompt: Sequence[int], budget: int, options: Mapping[str, Any], hmm: Any
               ) -> Processor:
    from decoders.decog.processor import build_decog

    return build_decog(options, engine.decoder_context(prompt, SamplingParams(max_tokens=budget)), {"distilled": hmm})


def compare_methods(model: Any, tokenizer: Any, n: int, hidden: int = 64, samples: int = 1024, epochs: int = 5,
                    budget: int = 48, formats: Mapping[str, tuple[str, str, str]] | None = None,
                    progress: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Distil an HMM from ``model`` on the formats' task prompts, then decode every format ``n`` times with
    Deco-G and with the DFA mask alone; one row of :class:`Summary` fields per (format, method)."""
    from decoders.decog.distill import DistillConfig, distill
    from decoders.decog.processor import build_decog
    from decoders.decog.steer import MaskProcessor
    from decoders.engine import EngineConfig
    from decoders.formats import template_regex

    formats = dict(formats or SHOW_FORMATS)
    cfg = DistillConfig(hidden=hidden, samples=samples, length=32, epochs=epochs, seed=seed)
    hmm, _ = distill(model, tokenizer, [task for _, _, task in formats.values()], cfg, progress=progress)
    engine = Engine(model, tokenizer, EngineConfig(max_batch_size=64))
    rows: list[dict[str, Any]] = []
    for name, (kind, source, task) in formats.items():
        prompt = engine.chat_prompt([{"role": "user", "content": task}])
        options = {"format": {kind: source}, "hmm": "distilled"}
        first = build_decog(options, engine.decoder_context(prompt, SamplingParams(max_tokens=budget)),
                            {"distilled": hmm})
        pattern = template_regex(source) if kind == "template" else source
        methods: dict[str, Callable[[], Processor | None]] = {
            "decog": functools.partial(_decog_for, engine, prompt, budget, options, hmm),
            "mask": functools.partial(MaskProcessor, first.index, engine.eos_token_ids, budget),
        }
        for method, make in methods.items():
            results = generate_many(engine, prompt, make, n, budget, seed=seed)
            summary, _ = summarize(results, model, prompt, pattern, first.dfa, engine.eos_token_ids, budget)
            rows.append({"format": name, "method": method, **asdict(summary)})
            logger.info("%s %s: compliance %.3f, mean LL %.2f", name, method, summary.compliance,
                        summary.mean_log_prob)
    return rows
