"""Benchmark: decode-engine output tokens/s at 1, 4, 16 concurrent requests vs sequential model.generate.

    .venv/bin/python bench/engine_throughput.py            # or bench/.venv/bin/python (adds the PNG)

What it does:
1. builds a GPT-2-style model locally (decoders.tiny; 6 layers, 384 hidden, 6 heads, ~2k BPE vocab,
   random weights — per-step compute is realistic for a small model, nothing is downloaded);
2. takes R prompts from the deterministic corpus (default 32, ~45 tokens each), greedy, a fixed number of output
   tokens each (EOS ignored on both sides: ``min_new_tokens`` for generate, ``ignore_eos`` for the engine);
3. baseline: ``model.generate`` on the prompts one after another (what a naive local server does);
4. engine: the same prompts with C requests in flight at a time (C = 1, 4, 16) through the asyncio
   API, max batch size 16 — new requests join the running batch as others finish;
5. repeats all modes in interleaved rounds (default 3) and keeps each mode's best round, as wall
   time and as process CPU time (the CPU figure is steadier on a shared machine);
6. checks that every engine output equals generate's token for token, prints a table, and writes
   bench/out/engine_throughput.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoders.engine import Engine, EngineConfig, SamplingParams
from decoders.tiny import TinySpec, build_tiny_causal_lm, corpus

OUT = Path(__file__).resolve().parent / "out"


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    spec = TinySpec(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                    init_std=0.05)
    path = build_tiny_causal_lm(Path(tempfile.mkdtemp(prefix="engine_bench_")), "gpt2", seed=0, spec=spec)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path)


@torch.inference_mode()
def run_generate(model: Any, prompts: list[list[int]], n: int) -> tuple[float, list[list[int]]]:
    outs = []
    start = time.perf_counter()
    for ids in prompts:
        x = torch.tensor([ids])
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False)
        outs.append(y[0, len(ids):].tolist())
    return time.perf_counter() - start, outs


async def run_engine(engine: Engine, prompts: list[list[int]], n: int, concurrency: int) -> tuple[float, list[list[int]]]:
    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
    gate = asyncio.Semaphore(concurrency)

    async def one(ids: list[int]) -> list[int]:
        async with gate:
            return list((await engine.agenerate(ids, params)).token_ids)

    start = time.perf_counter()
    outs = await asyncio.gather(*(one(p) for p in prompts))
    return time.perf_counter() - start, outs


def save_png(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[png] matplotlib not installed (use bench/.venv/bin/python); no PNG written")
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [r["mode"] for r in rows]
    ax.bar(labels, [r["tokens_per_s"] for r in rows], color=["#888"] + ["#2a7"] * (len(rows) - 1))
    for i, r in enumerate(rows):
        ax.text(i, r["tokens_per_s"], f"{r['speedup']:.1f}x", ha="center", va="bottom")
    ax.set_ylabel("output tokens / s")
    ax.tick_params(axis="x", labelrotation=15)
    ax.set_title("promptwire decode engine vs sequential model.generate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a busy shared machine, 1 avoids OpenMP spin contention

    model, tok = load(args)
    params = sum(p.numel() for p in model.parameters())
    lines = corpus(seed=99, n=4 * args.requests)
    prompts = [tok(" ".join(lines[4 * i : 4 * i + 4]))["input_ids"] for i in range(args.requests)]
    n = args.max_tokens
    print(f"model: GPT-2 style, {args.layers} layers, {args.hidden} hidden, vocab {len(tok)}, {params / 1e6:.1f}M params;"
          f" {len(prompts)} prompts ({sum(map(len, prompts)) / len(prompts):.0f} tokens avg), {n} output tokens each;"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    total = n * len(prompts)
    engine = Engine(model, tok, EngineConfig(max_batch_size=16))
    engine.start()
    run_generate(model, prompts[:2], 8)  # warm-up
    asyncio.run(run_engine(engine, prompts[:4], 8, 4))
    # rounds interleave the modes, so load from other processes hits them alike; best round counts
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    equal: dict[str, int] = {}
    ref: list[list[int]] = []
    for _ in range(args.rounds):
        for c in [0, *args.concurrency]:
            mode = "generate, sequential" if c == 0 else f"engine, {c} concurrent"
            cpu0 = time.process_time()
            if c == 0:
                secs, ref = run_generate(model, prompts, n)
                outs = ref
            else:
                secs, outs = asyncio.run(run_engine(engine, prompts, n, c))
            cpu.setdefault(mode, []).append(time.process_time() - cpu0)
            wall.setdefault(mode, []).append(secs)
            equal[mode] = min(equal.get(mode, len(ref)), sum(o == r for o, r in zip(outs, ref, strict=True)))
    engine.close()
    base, base_cpu = min(wall["generate, sequential"]), min(cpu["generate, sequential"])
    rows = []
    for mode in wall:
        best, best_cpu = min(wall[mode]), min(cpu[mode])
        rows.append({"mode": mode, "seconds": best, "seconds_all": wall[mode], "tokens_per_s": total / best,
                     "speedup": base / best, "cpu_seconds": best_cpu, "tokens_per_cpu_s": total / best_cpu,
                     "cpu_speedup": base_cpu / best_cpu, "equal_count": equal[mode], "equal": equal[mode] == len(ref)})

    print(f"\nbest of {args.rounds} interleaved rounds")
    print("| mode | wall s | output tok/s | vs generate | tok per CPU-s | vs generate (CPU) | greedy == generate |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        eq = "yes" if r["equal"] else f"{r['equal_count']}/{len(ref)}"
        print(f"| {r['mode']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}x |"
              f" {r['tokens_per_cpu_s']:.0f} | {r['cpu_speedup']:.2f}x | {eq} |")
    OUT.mkdir(exist_ok=True)
    meta = {"args": vars(args), "params": params, "torch_threads": torch.get_num_threads()}
    (OUT / "engine_throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if save_png(rows, OUT / "engine_throughput.png"):
        print(f"[png] {OUT / 'engine_throughput.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
