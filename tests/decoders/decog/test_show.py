"""The Show items at full size (slow): 1,000 generations per format, all compliant; Deco-G's outputs are at
least as likely under the LLM as hard-mask-only outputs. The default run has the small versions in
test_decog.py (test_every_output_complies, test_hmm_lookahead_beats_the_hard_mask_on_likelihood)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from decoders.decog.evaluate import SHOW_FORMATS, compare_methods


@pytest.mark.slow
def test_thousand_generations_per_format_comply_and_beat_the_mask(tiny_lm: Callable[[str], tuple[Any, Any]]) -> None:
    model, tok = tiny_lm("gpt2")
    rows = compare_methods(model, tok, n=1000, hidden=64, samples=1024, epochs=5, budget=48)
    assert {r["format"] for r in rows} == set(SHOW_FORMATS) and len(SHOW_FORMATS) >= 5
    by = {(r["format"], r["method"]): r for r in rows}
    for name in SHOW_FORMATS:
        decog, mask = by[(name, "decog")], by[(name, "mask")]
        assert decog["n"] == mask["n"] == 1000
        assert decog["compliance"] == 1.0 and mask["compliance"] == 1.0, name
        assert decog["mean_log_prob"] >= mask["mean_log_prob"], (name, decog, mask)
