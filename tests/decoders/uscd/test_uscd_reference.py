"""USCD against a slow, obviously correct reference: both prompts recomputed in full at every step, no cache."""

from __future__ import annotations

import math

import pytest
import torch

from decoders.engine import Engine, EngineConfig, SamplingParams
from decoders.tiny import corpus
from decoders.uscd import build

MEASURES = ("std", "entropy", "top1")
MODES = ("prob", "log")
ALPHA, PLAUSIBILITY = 0.7, 0.1


def measure_of(p: torch.Tensor, measure: str) -> float:
    if measure == "std":
        return float(p.std())
    if measure == "top1":
        return float(p.max())
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum()) / math.log(p.numel())


def contrasts(p: torch.Tensor, measure: str, threshold: float) -> bool:
    m = measure_of(p, measure)
    return m >= threshold if measure == "entropy" else m <= threshold


@torch.no_grad()
def reference(model, main: list[int], lame: list[int], max_new: int, eos: int, measure: str, mode: str,
              threshold: float) -> tuple[list[int], int]:
    """Greedy USCD the slow way: every step runs both full sequences through the model from scratch."""
    out: list[int] = []
    contrasted = 0
    for _ in range(max_new):
        logits = model(torch.tensor([main + out])).logits[0, -1].float()
        p = torch.softmax(logits, -1)
        scores = logits
        if contrasts(p, measure, threshold):
            contrasted += 1
            q = torch.softmax(model(torch.tensor([lame + out])).logits[0, -1].float(), -1)
            if mode == "prob":
                d = p - ALPHA * q
                scores = torch.where(d > 0, torch.log(d.clamp_min(1e-38)), torch.tensor(-math.inf))
            else:
                scores = (1 + ALPHA) * p.log() - ALPHA * q.log()
                scores[p < PLAUSIBILITY * p.max()] = -math.inf
        tok = int(scores.argmax())
        out.append(tok)
        if tok == eos:
            break
    return out, contrasted


def cases(tok, n: int) -> list[tuple[list[int], list[int], int]]:
    """(few-shot prompt, the same without its examples, budget): two example lines, then the query line."""
    lines = corpus(seed=17, n=3 * n)
    out = []
    for i in range(n):
        examples, query = " ".join(lines[3 * i : 3 * i + 2]), lines[3 * i + 2]
        out.append((tok(examples + "\n" + query)["input_ids"], tok(query)["input_ids"], 4 + i % 9))
    return out


def thresholds(model, tok) -> dict[str, float]:
    """Each measure's median over plain greedy steps: about half the steps contrast. The midpoint between two
    measured values, so no step sits on the threshold (where float noise would decide the gate)."""
    values: dict[str, list[float]] = {m: [] for m in MEASURES}
    with torch.no_grad():
        for main, _, _ in cases(tok, 6):
            ids = list(main)
            for _ in range(6):
                p = torch.softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
                for m in MEASURES:
                    values[m].append(measure_of(p, m))
                ids.append(int(p.argmax()))
    return {m: (sorted(v)[len(v) // 2 - 1] + sorted(v)[len(v) // 2]) / 2 for m, v in values.items()}


def run_engine(model, tok, items, options: dict, batched: bool) -> list[tuple[list[int], dict]]:
    engine = Engine(model, tok, EngineConfig(max_batch_size=7 if batched else 2))
    handles, plain = [], []
    for k, (main, lame, budget) in enumerate(items):
        proc = build({**options, "lame_prompt": lame}, engine.decoder_context(main, SamplingParams(max_tokens=budget)))
        h = engine.submit(main, SamplingParams(max_tokens=budget, temperature=0), proc)
        if not batched:
            h.result()
        handles.append(h)
        if batched and k % 5 == 0:  # other requests share the batch
            plain.append(engine.submit(main, SamplingParams(max_tokens=budget, temperature=0.8, seed=k)))
    for h in plain:
        h.result()
    return [(list(h.result().token_ids), dict(h.result().processor_stats)) for h in handles]


def check_family(tiny_lm, family: str, n: int, combos: list[tuple[str, str]]) -> None:
    model, tok = tiny_lm(family)
    eos = tok.eos_token_id
    items = cases(tok, n)
    limits = thresholds(model, tok)
    for measure, mode in combos:
        want = [reference(model, m, lame, b, eos, measure, mode, limits[measure]) for m, lame, b in items]
        total = sum(len(t) for t, _ in want)
        hit = sum(c for _, c in want)
        assert 0 < hit < total, (measure, mode, hit, total)  # the gate really chooses, both ways
        for lazy in (False, True):
            options = {"measure": measure, "mode": mode, "threshold": limits[measure], "lazy": lazy,
                       "alpha": ALPHA, "plausibility": PLAUSIBILITY}
            for batched in (False, True):
                got = run_engine(model, tok, items, options, batched)
                assert [t for t, _ in got] == [t for t, _ in want], (measure, mode, lazy, batched)
                assert [s["contrasted_steps"] for _, s in got] == [c for _, c in want]
                for (tokens, stats), (_, c) in zip(got, want, strict=True):
                    assert stats["total_steps"] == len(tokens)
                    assert stats["lame_forwards"] == (c if lazy else len(tokens))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_greedy_equals_reference_for_every_measure_and_mode(tiny_lm, family: str) -> None:
    check_family(tiny_lm, family, 50, [(m, mode) for m in MEASURES for mode in MODES])


def test_greedy_equals_reference_quick(tiny_lm) -> None:
    """The default run's share of the slow test: a few prompts, two of the six measure x mode pairs."""
    check_family(tiny_lm, "gpt2", 4, [("entropy", "prob"), ("top1", "log")])
