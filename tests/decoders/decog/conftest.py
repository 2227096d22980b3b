"""Fixtures for Deco-G tests: a small HMM distilled once per session from the tiny GPT-2-style LM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from decoders.decog.distill import DistillConfig, distill
from decoders.decog.hmm import HMM

PROMPTS = [
    "Solve the problem and give the final answer after ####.",
    "Rate the answer from 1 to 5.",
    "Extract the event, its agent, place and time.",
    "Answer with a number and your confidence.",
]


@pytest.fixture(scope="session")
def tiny_hmm(tiny_lm: Callable[[str], tuple[Any, Any]]) -> Callable[[str], HMM]:
    """tiny_hmm(family) -> an HMM (h=32) distilled from tiny_lm(family): 128 samples of 16 tokens, 2 EM epochs."""
    cache: dict[str, HMM] = {}

    def get(family: str) -> HMM:
        if family not in cache:
            model, tok = tiny_lm(family)
            cfg = DistillConfig(hidden=32, samples=128, length=16, epochs=2, seed=0)
            cache[family] = distill(model, tok, PROMPTS, cfg)[0]
        return cache[family]

    return get
