"""Per-step cost of the decog decoder vs unconstrained decoding and a naive Ctrl-G; backward-table build time.

Run (matplotlib for the PNG comes with bench/.venv; bash bench/setup_env.sh builds it):

    bench/.venv/bin/python bench/decog_cost.py                 # h in {64, 256, 1024}, all formats
    bench/.venv/bin/python bench/decog_cost.py --quick         # fewer generations

Model: the tiny GPT-2-style LM of ``decoders/tiny.py`` (vocabulary 512), decoded by ``decoders.engine``
one request at a time (sampling, temperature 1). HMMs have random parameters: a step's cost does not
depend on their values (every operation is dense over the hidden states), so distilling three HMMs would
only slow the benchmark down.

Per-step cost is the engine's decode step (forward, processors, sampling, bookkeeping; the prefill step
excluded), measured as CPU time of the thread with torch single-threaded, so it stays meaningful on a
loaded machine (medians). Each decoder's own calls (process, allowed_token_ids, eos_allowed, advance,
finished) are also timed alone: ``1 + own / unconstrained step`` is the ratio with the noise of the
model's forward taken out. Methods:

- ``none``: unconstrained decoding (the baseline step);
- ``decog``: ours, table and per-state tensors cached (two untimed generations first), all hidden states;
- ``decog-prune``: ours with ``prune_top_k = h / 8``;
- ``ctrlg-naive``: bench/decog_ctrlg.py (dense masks, full (T+1)·|S|·h table per request, every state and
  every token per step). Its per-request table build is reported separately from its per-step cost.

Table build: ``build_decog`` on a fresh resource cache (first use: format compiled, table built) and
again (cached), for a small template at a 256-token budget; and the naive peer's per-request build.

Format compilation at vocabulary scale: a byte-level BPE tokenizer with ``--vocab-size`` (150,000) random
tokens (the 256 bytes plus random strings of 2-12 characters), the vocabulary table built once, then
each format compiled to its token automaton (wall clock).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from decog_ctrlg import NaiveCtrlG  # noqa: E402

from decoders.decog.hmm import HMM, tokenizer_fingerprint  # noqa: E402
from decoders.decog.processor import build_decog  # noqa: E402
from decoders.engine import Engine, EngineConfig, SamplingParams  # noqa: E402
from decoders.formats import compile_format  # noqa: E402
from decoders.processor import Processor  # noqa: E402
from decoders.resources import ResourceCache  # noqa: E402

OUT = ROOT / "bench" / "out"
FORMATS = {
    "answer": ("template", "Answer: {int}\nConfidence: {choice:low|medium|high}"),
    "event": ("template", "Event: {choice:attack|meeting|election}\nAgent: {text:6}\nPlace: {text:4}\nTime: {int}"),
    "words": ("regex", r"[a-z ]{0,200}"),
}
SMALL_TEMPLATE = "Score: {choice:1|2|3|4|5}"
clock = time.thread_time


def _timed(proc: Processor, sink: list[float]) -> Processor:
    """Wrap a processor's per-step calls to add their CPU time to ``sink`` (one entry per step)."""
    spent = [0.0]
    for name in ("process", "allowed_token_ids", "eos_allowed", "advance", "finished"):
        inner = getattr(proc, name)

        def wrapper(*a: Any, _inner: Any = inner, _name: str = name) -> Any:
            t0 = clock()
            out = _inner(*a)
            spent[0] += clock() - t0
            if _name == "finished":
                sink.append(spent[0])
                spent[0] = 0.0
            return out

        setattr(proc, name, wrapper)
    return proc


def step_times(engine: Engine, prompt: list[int], make: Callable[[], Processor | None], runs: int, budget: int,
               seed0: int = 0, own: list[float] | None = None) -> list[float]:
    """CPU seconds of every decode step after the first (prefill) one, over ``runs`` generations."""
    out: list[float] = []
    for i in range(runs):
        proc = make()
        if proc is not None and own is not None:
            proc = _timed(proc, own)
        handle = engine.submit(prompt, SamplingParams(max_tokens=budget, seed=seed0 + i, ignore_eos=proc is None),
                               proc)
        engine.step()
        while not handle.done:
            t0 = clock()
            engine.step()
            out.append(clock() - t0)
    return out


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000 if xs else float("nan")


def check_peer_agrees(engine: Engine, prompt: list[int], hmm: HMM, kind: str, source: str, budget: int) -> float:
    """Largest difference between ours and the naive peer's scores over one generation (same tokens)."""
    ctx = engine.decoder_context(prompt, SamplingParams(max_tokens=budget))
    ours = build_decog({"format": {kind: source}, "hmm": "h"}, ctx, {"h": hmm})
    peer = NaiveCtrlG(ours.dfa, hmm, engine.eos_token_ids, budget, engine.vocab_size)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.inference_mode():
        for _ in range(budget):
            logits = torch.randn(engine.vocab_size, generator=g) * 3
            a, b = ours.process(logits.clone()), peer.process(logits.clone())
            finite = torch.isfinite(a) & (a > -1e3)
            if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
                raise AssertionError("ours and the naive peer allow different tokens")
            worst = max(worst, float((a[finite] - b[finite]).abs().max()) if finite.any() else 0.0)
            token = int(torch.argmax(a))
            ours.advance(token)
            peer.advance(token)
            if ours.finished() or token in engine.eos_token_ids:
                break
    return worst


def table_build(engine: Engine, prompt: list[int], hmm: HMM, template: str, budget: int) -> dict[str, Any]:
    """``build_decog`` on a fresh cache (format compiled, table built), again (cached), and the naive peer."""
    options = {"format": {"template": template}, "hmm": "h"}
    ctx = dataclasses.replace(engine.decoder_context(prompt, SamplingParams(max_tokens=budget)),
                              resources=ResourceCache(1 << 30))
    t0 = time.perf_counter()
    first = build_decog(options, ctx, {"h": hmm})
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = build_decog(options, ctx, {"h": hmm})
    cached_s = time.perf_counter() - t0
    peer = NaiveCtrlG(first.dfa, hmm, engine.eos_token_ids, budget, engine.vocab_size)
    return {"h": hmm.hidden_states, "template": template, "first_use_ms": first_s * 1000,
            "table_ms": first.table.seconds * 1000, "cached_ms": cached_s * 1000,
            "cached": bool(again.stats()["table_cached"]), "table_rows": int(first.table.ba.shape[0]),
            "table_bytes": first.table.nbytes, "states": first.dfa.num_states,
            "naive_ms": peer.build_seconds * 1000, "naive_bytes": int(peer.table.numel() * 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", default="64,256,1024")
    ap.add_argument("--runs", type=int, default=8, help="generations per (method, format, h)")
    ap.add_argument("--budget", type=int, default=64, help="max_tokens of the timed generations")
    ap.add_argument("--table-budget", type=int, default=256, help="budget of the table-build measurement")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time per step is exact)")
    ap.add_argument("--vocab-size", type=int, default=150_000, help="format compilation at this vocabulary size "
                    "(0: skip)")
    ap.add_argument("--quick", action="store_true", help="2 runs, h in {64, 256}")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.hidden = 2, "64,256"
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    hiddens = [int(h) for h in args.hidden.split(",")]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from decoders.tiny import build_tiny_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_causal_lm(tmp, "gpt2", seed=0)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)
    engine = Engine(model, tok, EngineConfig(max_batch_size=4))
    prompt = engine.chat_prompt([{"role": "user", "content": "Answer in the requested format."}])
    fp = tokenizer_fingerprint(tok)

    rows: list[dict[str, Any]] = []
    base = step_times(engine, prompt, lambda: None, args.runs * 2, args.budget)
    base_ms = median_ms(base)
    print(f"unconstrained step: {base_ms:.3f} ms (median of {len(base)} steps)")
    rows.append({"method": "none", "h": 0, "format": "-", "step_ms": base_ms, "ratio": 1.0})
    builds: list[dict[str, Any]] = []
    for h in hiddens:
        hmm = HMM.random(h, len(tok), tok.eos_token_id, fp, seed=h)
        hmms = {"h": hmm}
        for fname in args.formats.split(","):
            kind, source = FORMATS[fname]
            options = {"format": {kind: source}, "hmm": "h"}
            ctx = engine.decoder_context(prompt, SamplingParams(max_tokens=args.budget))
            build_decog(options, ctx, hmms)  # warm: format compiled, table built and cached

            def ours(k: int | None = None, o: dict[str, Any] = options, hs: dict[str, HMM] = hmms) -> Processor:
                extra = {"prune_top_k": k} if k else {}
                return build_decog({**o, **extra}, engine.decoder_context(prompt, SamplingParams(
                    max_tokens=args.budget)), hs)

            dfa = compile_format(kind, source, tok)
            peer_builds: list[float] = []

            def peer(dfa: Any = dfa, hmm: HMM = hmm, acc: list[float] = peer_builds) -> Processor:
                p = NaiveCtrlG(dfa, hmm, engine.eos_token_ids, args.budget, engine.vocab_size)
                acc.append(p.build_seconds)
                return p

            methods: list[tuple[str, Callable[[], Processor | None]]] = [
                ("none", lambda: None), ("decog", ours), ("decog-prune", functools.partial(ours, max(1, h // 8))),
                ("ctrlg-naive", peer)]
            times: dict[str, list[float]] = {m: [] for m, _ in methods}
            for _name, make in methods:  # warm-up: per-state tensors are built on a state's first visit, then cached
                step_times(engine, prompt, make, 2, args.budget, seed0=1000)
            own: dict[str, list[float]] = {m: [] for m, _ in methods}
            for r in range(args.runs):  # interleaved, so load changes hit every method alike
                for name, make in methods:
                    times[name] += step_times(engine, prompt, make, 1, args.budget, seed0=r, own=own[name])
            local_base = median_ms(times["none"])
            for name, _ in methods[1:]:
                ms = median_ms(times[name])
                own_ms = median_ms(own[name])
                row = {"method": name, "h": h, "format": fname, "step_ms": ms, "ratio": ms / local_base,
                       "base_ms": local_base, "own_ms": own_ms, "own_ratio": 1 + own_ms / local_base,
                       "steps": len(times[name]), "states": dfa.num_states}
                if name == "ctrlg-naive":
                    row["build_ms_per_request"] = statistics.median(peer_builds) * 1000
                rows.append(row)
                extra = f"  (+ {row['build_ms_per_request']:.1f} ms table per request)" if "build_ms_per_request" in row else ""
                print(f"h={h:5d} {fname:7s} {name:12s} {ms:7.3f} ms/step  x{ms / local_base:5.2f} vs "
                      f"{local_base:.3f}; its own calls {own_ms * 1000:6.0f} us/step (x{row['own_ratio']:.2f}){extra}")
        # Table build at the table budget: first use vs cached, and the peer (small template first).
        worst = check_peer_agrees(engine, prompt, hmm, "template", FORMATS["answer"][1], args.budget)
        for template in (SMALL_TEMPLATE, FORMATS["event"][1]):
            b = table_build(engine, prompt, hmm, template, args.table_budget)
            b["max_score_diff_vs_naive"] = worst
            builds.append(b)
            print(f"h={h:5d} table for {template[:26]!r} at {args.table_budget} tokens: first use "
                  f"{b['first_use_ms']:.1f} ms (table {b['table_ms']:.1f} ms, {b['table_rows']} rows, "
                  f"{b['table_bytes'] / 1e6:.2f} MB), cached {b['cached_ms']:.3f} ms; naive {b['naive_ms']:.1f} ms "
                  f"({b['naive_bytes'] / 1e6:.2f} MB); max |ours - naive| score {worst:.2e}")
    compiles = compile_at_scale(args.vocab_size) if args.vocab_size else []
    result = {"rows": rows, "builds": builds, "compiles": compiles, "args": vars(args)}
    (OUT / "decog_cost.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT / 'decog_cost.json'}")
    try:
        plot(rows, builds)
    except ImportError:
        print("matplotlib not installed; no PNG", file=sys.stderr)
    return 0


def compile_at_scale(size: int) -> list[dict[str, Any]]:
    """Seconds to build the vocabulary table and compile each format for a synthetic ``size``-token vocabulary."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from decoders.formats import token_bytes
    from decoders.trie.vocab import _gpt2_byte_decoder

    to_char = {b: c for c, b in _gpt2_byte_decoder().items()}
    rng = random.Random(0)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_#\n"
    vocab = {to_char[b]: b for b in range(256)}
    while len(vocab) < size:
        word = bytes(rng.choice(alphabet) for _ in range(rng.randint(2, 12)))
        vocab.setdefault("".join(to_char[b] for b in word), len(vocab))
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    resources = ResourceCache(1 << 30)
    t0 = time.perf_counter()
    token_bytes(tok, resources)
    out = [{"format": "(vocabulary table)", "vocab": size, "seconds": time.perf_counter() - t0}]
    for name, (kind, source) in {"gsm8k": ("template", "#### {int}"), **FORMATS}.items():
        t0 = time.perf_counter()
        dfa = compile_format(kind, source, tok, resources)
        out.append({"format": name, "vocab": size, "seconds": time.perf_counter() - t0, "states": dfa.num_states,
                    "edges": dfa.num_edges})
    for r in out:
        print(f"vocab {size}: {r['format']:20s} {r['seconds'] * 1000:8.1f} ms"
              + (f"  ({r['states']} states, {r['edges']} edges)" if "states" in r else ""))
    return out


def plot(rows: list[dict[str, Any]], builds: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = {"decog": "decog (ours, cached table)", "decog-prune": "decog, prune_top_k = h/8",
              "ctrlg-naive": "Ctrl-G naive (per step, table excluded)"}
    for method, label in labels.items():
        pts: dict[int, list[float]] = {}
        for r in rows:
            if r["method"] == method:
                pts.setdefault(r["h"], []).append(r["own_ratio"])
        hs = sorted(pts)
        left.plot(hs, [statistics.mean(pts[h]) for h in hs], marker="o", label=label)
    left.axhline(1.0, color="grey", lw=0.8, label="unconstrained step")
    left.axhline(1.5, color="red", lw=0.8, ls="--", label="target 1.5x")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("HMM hidden states h")
    left.set_ylabel("1 + decoder CPU per step / unconstrained step\n(mean over formats)")
    left.legend(fontsize=8)
    for template, style in ((SMALL_TEMPLATE, "-"), (FORMATS["event"][1], ":")):
        sel = [b for b in builds if b["template"] == template]
        hs = [b["h"] for b in sel]
        tag = "small" if template == SMALL_TEMPLATE else "event"
        right.plot(hs, [b["first_use_ms"] for b in sel], style, marker="o", color="C0", label=f"ours, first use ({tag})")
        right.plot(hs, [b["cached_ms"] for b in sel], style, marker="o", color="C1", label=f"ours, cached ({tag})")
        right.plot(hs, [b["naive_ms"] for b in sel], style, marker="o", color="C2",
                   label=f"Ctrl-G naive, every request ({tag})")
    right.axhline(1000, color="red", lw=0.8, ls="--", label="target 1 s")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("HMM hidden states h")
    right.set_ylabel("table build at 256 tokens (ms)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "decog_cost.png", dpi=120)
    print(f"wrote {OUT / 'decog_cost.png'}")


if __name__ == "__main__":
    raise SystemExit(main())
