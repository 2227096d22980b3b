"""Deco-G output quality on the tiny LM: compliance over many sampled generations, and the LLM's own
log-likelihood of Deco-G outputs vs hard-mask-only decoding under the same formats.

Run:

    /path/to/python bench/decog_quality.py                  # 1,000 generations per (format, method)
    /path/to/python bench/decog_quality.py --n 100          # quicker

An HMM (h = --hidden) is distilled from the tiny GPT-2-style LM first (instruction-aware: the task prompts
below), then each format is decoded ``n`` times by both methods from the same prompt, seeds 0..n-1,
temperature 1, ``max_tokens`` = --budget:

- ``decog``: p_LLM(x | prefix) * p_HMM(format completes | prefix, x), under the DFA mask;
- ``mask``: the DFA mask alone (tokens after which the format can still complete within the budget).

Reported per format and method: compliance (the text full-matches the format's regex and the tokens are
accepted by its automaton), the mean log-probability the unconstrained LLM gives the whole output (EOS
included) and per token, how often the token budget forced the output to close (at some step it removed
tokens the format allows), and how often such a budget-forced step took a token the LLM gave less than
1% probability ("forced, unlikely").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from decoders.decog.evaluate import compare_methods  # noqa: E402

OUT = ROOT / "bench" / "out"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="generations per (format, method)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--samples", type=int, default=1024, help="distillation samples")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--budget", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from decoders.tiny import build_tiny_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_causal_lm(tmp, "gpt2", seed=0)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = compare_methods(model, tok, n=args.n, hidden=args.hidden, samples=args.samples,
                                                 epochs=args.epochs, budget=args.budget, progress=True)
    print(f"\n{'format':18s} {'method':6s} {'n':>5s} {'compliant':>9s} {'mean LL':>9s} {'LL/token':>9s} "
          f"{'tokens':>7s} {'budget-forced':>13s} {'forced+unlikely':>15s}")
    for r in rows:
        print(f"{r['format']:18s} {r['method']:6s} {r['n']:5d} {r['compliance']:9.1%} {r['mean_log_prob']:9.2f} "
              f"{r['mean_log_prob_per_token']:9.3f} {r['mean_tokens']:7.1f} {r['budget_forced']:13.1%} "
              f"{r['forced_unlikely']:15.1%}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    (OUT / "decog_quality.json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    print(f"wrote {OUT / 'decog_quality.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
