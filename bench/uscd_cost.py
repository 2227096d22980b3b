"""Benchmark: what USCD costs over plain greedy decoding, eager and lazy, against the naive two-pass form and
transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor.

    .venv/bin/python bench/uscd_cost.py            # or bench/.venv/bin/python (adds the PNG)

What it does:
1. builds a GPT-2-style model locally (decoders.tiny; 6 layers, 384 hidden, 6 heads, random weights — the
   same model as bench/engine_throughput.py; nothing is downloaded);
2. makes R few-shot prompts from the deterministic corpus (two example lines, then the query line) and their
   lame prompts (the query line alone), greedy, a fixed number of output tokens each (EOS ignored);
3. picks the USCD threshold (measure ``top1``) as a quantile of the model's own top-1 probabilities over a
   pilot run, so that about ``--contrast`` of the steps are contrasted (the lazy target is stated for at most
   a third), and reports the fraction each mode really contrasted;
4. times, one request at a time (the cost per request, as a client sees it):
   - ``plain``: our engine, greedy, no decoder (the baseline every ratio divides by);
   - ``uscd eager``: our engine, the lame prompt as a batch row sharing every step's forward;
   - ``uscd lazy``: our engine, the lame stream's forward only on contrasted steps, catching up in one pass;
   - ``naive two-pass``: the reference code's shape — two separate forward passes per step (main and lame,
     each with its own KV cache), then the same gate and contrast;
   - ``transformers CFG``: ``model.generate`` with ``UnbatchedClassifierFreeGuidanceLogitsProcessor``
     (negative prompt = the lame prompt, guidance 1 + alpha, its own KV cache, log-space, no gating);
   - ``generate plain``: ``model.generate`` greedy, for reference;
5. repeats the modes in interleaved rounds (default 3), keeps each mode's best round (wall and process CPU
   time; CPU is steadier on a shared machine), checks that eager, lazy and the naive form produce the same
   tokens, prints a table and writes bench/out/uscd_cost.{json,png};
6. times single cached forwards of the model by shape (1 row x 1 token: a main step; 2 x 1: an eager step;
   1 x k: a lazy catch-up over k skipped tokens), which is what decides eager's and lazy's cost here.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from decoders.engine import Engine, EngineConfig, SamplingParams
from decoders.tiny import TinySpec, build_tiny_causal_lm, corpus
from decoders.uscd import build
from decoders.uscd.processor import contrast, uncertain

OUT = Path(__file__).resolve().parent / "out"
Case = tuple[list[int], list[int]]


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    # init_std 0.2 (the test models' value): peaked next-token distributions, so the gate has something to
    # tell apart and greedy ties are rare (at 0.05 p is nearly flat and float noise picks among near-ties)
    spec = TinySpec(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                    init_std=args.init_std)
    path = build_tiny_causal_lm(Path(tempfile.mkdtemp(prefix="uscd_bench_")), "gpt2", seed=0, spec=spec)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def cases(tok: Any, n: int) -> list[Case]:
    lines = corpus(seed=123, n=3 * n)
    out = []
    for i in range(n):
        examples, query = " ".join(lines[3 * i : 3 * i + 2]), lines[3 * i + 2]
        out.append((tok(examples + "\n" + query)["input_ids"], tok(query)["input_ids"]))
    return out


@torch.inference_mode()
def pick_threshold(model: Any, items: list[Case], steps: int, fraction: float) -> float:
    """The top-1 probability below which ``fraction`` of a pilot's greedy steps fall."""
    tops: list[float] = []
    for main, _ in items[:4]:
        ids = list(main)
        for _ in range(steps):
            p = torch.softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
            tops.append(float(p.max()))
            ids.append(int(p.argmax()))
    tops.sort()
    k = min(len(tops) - 1, max(1, int(fraction * len(tops))))
    return (tops[k - 1] + tops[k]) / 2  # between two measured values, so no pilot step sits on it


def run_engine(engine: Engine, items: list[Case], n: int, options: dict[str, Any] | None) -> tuple[list[list[int]], float]:
    outs, contrasted = [], 0
    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
    for main, lame in items:
        proc = None
        if options is not None:
            proc = build({**options, "lame_prompt": lame}, engine.decoder_context(main, params))
        res = engine.generate(main, params, proc)
        outs.append(list(res.token_ids))
        contrasted += int(res.processor_stats.get("contrasted_steps", 0))
    return outs, contrasted / (n * len(items))


@torch.inference_mode()
def run_naive(model: Any, items: list[Case], n: int, threshold: float, alpha: float,
              eos: int) -> tuple[list[list[int]], float]:
    """The reference code's shape: both prompts run every step, as two separate cached forwards."""
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    outs, contrasted = [], 0
    for main, lame in items:
        caches: list[Any] = [None, None]
        feeds = [list(main), list(lame)]
        out: list[int] = []
        for _ in range(n):
            logits = []
            for k in (0, 1):
                o = model(input_ids=torch.tensor([feeds[k]]), use_cache=True, **{kw: caches[k]})
                caches[k] = o.cache if kw == "cache" else o.past_key_values
                logits.append(o.logits[0, -1].float())  # (V,)
            scores = logits[0]
            if uncertain(torch.softmax(scores, -1), "top1", threshold):
                contrasted += 1
                contrasted_scores = contrast(logits[0], logits[1], "prob", alpha, 0.1)
                if contrasted_scores is not None:
                    scores = contrasted_scores
            scores[eos] = -math.inf  # a fixed length, as ignore_eos / min_new_tokens give the other modes
            tok = int(scores.argmax())
            out.append(tok)
            feeds = [[tok], [tok]]
        outs.append(out)
    return outs, contrasted / (n * len(items))


@torch.inference_mode()
def run_cfg(model: Any, items: list[Case], n: int, alpha: float) -> tuple[list[list[int]], float]:
    from transformers import UnbatchedClassifierFreeGuidanceLogitsProcessor

    outs = []
    for main, lame in items:
        x = torch.tensor([main])
        proc = UnbatchedClassifierFreeGuidanceLogitsProcessor(1 + alpha, model, unconditional_ids=torch.tensor([lame]))
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, logits_processor=LogitsProcessorList([proc]))
        outs.append(y[0, len(main):].tolist())
    return outs, 1.0


@torch.inference_mode()
def run_generate(model: Any, items: list[Case], n: int) -> tuple[list[list[int]], float]:
    outs = []
    for main, _ in items:
        x = torch.tensor([main])
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        outs.append(y[0, len(main):].tolist())
    return outs, 0.0


@torch.inference_mode()
def forward_costs(model: Any, context: int, reps: int = 60) -> dict[str, float]:
    """Median ms of one cached forward of ``rows`` x ``tokens`` new positions after ``context`` cached ones:
    what a main step (1 x 1), an eager step (2 x 1) and a lazy catch-up (1 x k) cost on this machine."""
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    for rows, tokens in ((1, 1), (2, 1), (1, 2), (1, 4), (1, 8)):
        past = torch.randint(0, vocab, (rows, context), generator=gen)
        x = torch.randint(0, vocab, (rows, tokens), generator=gen)
        mask = torch.ones(rows, context + tokens, dtype=torch.long)
        pos = torch.arange(context, context + tokens)[None].expand(rows, tokens)
        times = []
        for _ in range(reps):
            o = model(input_ids=past, use_cache=True)  # a fresh cache each time, outside the clock
            cache = o.cache if kw == "cache" else o.past_key_values
            t0 = time.perf_counter()
            model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **{kw: cache})
            times.append(time.perf_counter() - t0)
        times.sort()
        out[f"{rows}x{tokens}"] = 1000 * times[len(times) // 2]
    return out


def save_png(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[png] matplotlib not installed (use bench/.venv/bin/python); no PNG written")
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ours = ("plain", "uscd eager", "uscd lazy")
    ax.bar([r["mode"] for r in rows], [r["vs_plain"] for r in rows],
           color=["#888" if r["mode"] == "plain" else "#2a7" if r["mode"] in ours else "#c55" for r in rows])
    for i, r in enumerate(rows):
        ax.text(i, r["vs_plain"], f"{r['vs_plain']:.2f}x", ha="center", va="bottom")
    ax.axhline(1.0, color="#444", lw=0.8)
    ax.set_ylabel("wall time vs plain greedy")
    ax.tick_params(axis="x", labelrotation=15)
    ax.set_title("USCD cost per request (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--init-std", type=float, default=0.2)
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--contrast", type=float, default=0.25, help="target fraction of contrasted steps")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a busy shared machine, 1 avoids OpenMP spin contention

    model, tok = load(args)
    items = cases(tok, args.requests)
    n = args.max_tokens
    threshold = pick_threshold(model, items, n, args.contrast)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: GPT-2 style, {args.layers} layers, {args.hidden} hidden, vocab {len(tok)}, {params / 1e6:.1f}M params;"
          f" {len(items)} few-shot prompts ({sum(len(m) for m, _ in items) / len(items):.0f} tokens avg, lame"
          f" {sum(len(x) for _, x in items) / len(items):.0f}), {n} output tokens each; measure top1, threshold"
          f" {threshold:.4f}, alpha {args.alpha}; torch {torch.__version__}, {torch.get_num_threads()} threads,"
          f" {platform.processor() or platform.machine()}")

    engine = Engine(model, tok, EngineConfig(max_batch_size=16))
    uscd = {"measure": "top1", "threshold": threshold, "alpha": args.alpha, "mode": "prob"}
    modes: dict[str, Callable[[], tuple[list[list[int]], float]]] = {
        "plain": lambda: run_engine(engine, items, n, None),
        "uscd eager": lambda: run_engine(engine, items, n, {**uscd, "lazy": False}),
        "uscd lazy": lambda: run_engine(engine, items, n, {**uscd, "lazy": True}),
        "naive two-pass": lambda: run_naive(model, items, n, threshold, args.alpha, tok.eos_token_id),
        "transformers CFG": lambda: run_cfg(model, items, n, args.alpha),
        "generate plain": lambda: run_generate(model, items, n),
    }
    for fn in modes.values():  # warm-up
        fn()
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    outs: dict[str, list[list[int]]] = {}
    fraction: dict[str, float] = {}
    for _ in range(args.rounds):  # rounds interleave the modes, so other load hits them alike; best counts
        for mode, fn in modes.items():
            c0, t0 = time.process_time(), time.perf_counter()
            outs[mode], fraction[mode] = fn()
            wall[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)
    context = round(sum(len(m) for m, _ in items) / len(items)) + n // 2
    probe = forward_costs(model, context)
    same = outs["uscd eager"] == outs["uscd lazy"] == outs["naive two-pass"]
    agree = {m: sum(a == b for a, b in zip(outs[m], outs["uscd eager"], strict=True)) for m in ("uscd lazy",
                                                                                            "naive two-pass")}
    base, base_cpu = min(wall["plain"]), min(cpu["plain"])
    rows = [{"mode": m, "seconds": min(wall[m]), "seconds_all": wall[m], "vs_plain": min(wall[m]) / base,
             "cpu_seconds": min(cpu[m]), "cpu_vs_plain": min(cpu[m]) / base_cpu,
             "ms_per_token": 1000 * min(wall[m]) / (n * len(items)), "contrasted": fraction[m]} for m in modes]

    print(f"\nbest of {args.rounds} interleaved rounds; eager, lazy and naive two-pass tokens identical: {same}"
          f" (requests equal to eager: lazy {agree['uscd lazy']}/{len(items)}, naive {agree['naive two-pass']}/{len(items)})")
    print("| mode | wall s | ms / token | vs plain | CPU s | vs plain (CPU) | contrasted steps |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['seconds']:.2f} | {r['ms_per_token']:.2f} | {r['vs_plain']:.2f}x |"
              f" {r['cpu_seconds']:.2f} | {r['cpu_vs_plain']:.2f}x | {r['contrasted']:.0%} |")
    print(f"\none cached forward after {context} positions, ms (median of 60; rows x new tokens):",
          ", ".join(f"{k} {v:.2f}" for k, v in probe.items()))
    print("  a lazy catch-up over k skipped tokens costs the 1 x k forward; eager adds the 2 x 1 - 1 x 1 difference"
          " to every step")
    OUT.mkdir(exist_ok=True)
    meta = {"args": vars(args), "threshold": threshold, "params": params, "torch_threads": torch.get_num_threads(),
            "same_tokens": same, "forward_ms": probe, "forward_context": context}
    (OUT / "uscd_cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if save_png(rows, OUT / "uscd_cost.png"):
        print(f"[png] {OUT / 'uscd_cost.png'}")
    engine.close()
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
