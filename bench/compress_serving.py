"""Benchmark: POST /v1/compress throughput and latency with cross-request batching on vs off.

One command (from the repository root):

    .venv/bin/python bench/compress_serving.py            # stand-in + bert-base dimensions (~10 min on 2 cores)
    .venv/bin/python bench/compress_serving.py --quick    # stand-in only, fewer requests
    .venv/bin/python bench/compress_serving.py --aa       # control: both servers batching off (the noise band)

For each model (the locally built stand-in classifier that `make run` serves, and a classifier with
the dimensions of microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank, synthetic
weights) it starts two `promptwire serve --config` on 127.0.0.1, one per batch policy (on: the CPU
defaults; off: `batching: false`, one request at a time), and drives /v1/compress from a separate
load process with closed-loop clients at concurrency 1, 4 and 16, each cell on both servers in
alternating order (so other load on the machine hits both alike), --rounds times (medians reported),
for two kinds of documents:
short prompts (40-128 model tokens, the common chat case) and full 510-token windows. Every
document is sent in every cell and its compressed text must be the same everywhere (same
decisions). Prints a table of requests/s, model tokens/s, p50/p99 latency and the targets, and
writes bench/out/compress_serving.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._servers import Server, _spawn, _wait_http, free_port  # noqa: E402

OUT = ROOT / "bench" / "out"
CONCURRENCY = (1, 4, 16)
KINDS = ("short", "full")
RATE = 0.5
BERT_BASE = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, vocab_size=119647)


# ----------------------------------------------------------------------------- models and documents


def build_models(quick: bool) -> dict[str, Path]:
    """Exported fp32 models, built once and cached under bench/out/ (synthetic weights)."""
    from compressors.llmlingua2.export import export
    from compressors.llmlingua2.tiny import TinyConfig, build_tiny

    models: dict[str, Path] = {}
    wanted = [("stand-in", TinyConfig(arch="bert"))]
    if not quick:
        wanted.append(("bert-base", TinyConfig(arch="bert", trained_vocab=8000, **BERT_BASE)))  # type: ignore[arg-type]
    for name, cfg in wanted:
        root = OUT / "serving-models" / name
        if not (root / "ckpt" / "config.json").is_file():
            print(f"[build] {name} checkpoint", flush=True)
            build_tiny(root / "ckpt", cfg)
        models[name] = export(root / "ckpt", root / "onnx")  # a no-op when cached
    return models


_WORDS = (
    "the meeting agenda budget council member vote motion approve public hearing item report city staff "
    "recommend discussion question answer project plan water street park library police fire department "
    "resolution amendment carried unanimously next we will now move to please thank you everyone good "
    "evening tonight because this that with from into under over model token prompt compress language "
    "inference server request response latency throughput"
).split()


def make_docs(model_dir: Path, kind: str, n: int) -> list[dict[str, Any]]:
    """Deterministic documents: short prompts of 40-128 model tokens, or full 510-token windows."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rng = random.Random(7 if kind == "short" else 11)
    docs = []
    for i in range(n):
        target = rng.randint(40, 128) if kind == "short" else 510
        words: list[str] = []
        text = ""
        while True:
            w = rng.choice(_WORDS)
            if rng.random() < 0.08:
                w += rng.choice([".", ",", "?"])
            cand = " ".join([*words, w])
            if len(tok.encode(cand, add_special_tokens=False).ids) > target:
                break
            words, text = [*words, w], cand
        docs.append({"id": i, "text": text, "tokens": len(tok.encode(text, add_special_tokens=False).ids)})
    return docs


# ----------------------------------------------------------------------------- server


def start_server(workdir: Path, model: Path, batching: bool, label: str) -> Server:
    port = free_port()
    cfg = workdir / f"config-{label}.yaml"
    cfg.write_text(
        f"server: {{host: 127.0.0.1, http_port: {port}, grpc_port: 0}}\n"
        "limits: {max_in_flight: 1024}\n"
        f"stages:\n  compress:\n    model: {json.dumps(str(model))}\n    batching: {str(batching).lower()}\n",
        encoding="utf-8",
    )
    exe = Path(sys.executable).parent / "promptwire"
    cmd = [str(exe) if exe.exists() else "promptwire", "serve", "--config", str(cfg), "--log-level", "warning"]
    log = workdir / f"promptwire-{label}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = Server("promptwire", _spawn("promptwire", cmd, log, env=env, cwd=ROOT), port, log_path=log)
    try:
        _wait_http(server, "/readyz", 120)
    except RuntimeError:
        server.stop()
        raise
    return server


# ----------------------------------------------------------------------------- load (separate process)


async def _drive(port: int, docs: list[dict[str, Any]], concurrency: int, total: int) -> dict[str, Any]:
    import httpx

    lat: list[float] = []
    texts: dict[int, str] = {}
    errors = 0
    counter = iter(range(total))

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            d = docs[i % len(docs)]
            t = time.perf_counter()
            r = await c.post("/v1/compress", json={"text": d["text"], "rate": RATE})
            dt = time.perf_counter() - t
            if r.status_code != 200:
                errors += 1
                continue
            lat.append(dt)
            texts[d["id"]] = r.json()["compressed_text"]

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=600) as c:
        await c.post("/v1/compress", json={"text": docs[0]["text"], "rate": RATE})  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "latencies": lat, "texts": texts, "errors": errors}


def load_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    res = asyncio.run(_drive(spec["port"], spec["docs"], spec["concurrency"], spec["total"]))
    sys.stdout.write(json.dumps(res))


def run_cell(port: int, docs: list[dict[str, Any]], concurrency: int, total: int) -> dict[str, Any]:
    spec = json.dumps({"port": port, "docs": docs, "concurrency": concurrency, "total": total})
    out = subprocess.run([sys.executable, __file__, "--load", spec], capture_output=True, text=True, check=True)
    res: dict[str, Any] = json.loads(out.stdout)
    lat = sorted(res["latencies"])
    n = len(lat)
    tokens = sum(docs[i % len(docs)]["tokens"] for i in range(total))
    return {
        "requests": n,
        "errors": res["errors"],
        "rps": n / res["wall_s"],
        "tokens_per_s": tokens / res["wall_s"],
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(n - 1, int(0.99 * n))],
        "texts": res["texts"],
    }


# ----------------------------------------------------------------------------- main


def median_cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell from its rounds: the median of each figure; every round's req/s kept."""
    keys = ("rps", "tokens_per_s", "p50_ms", "p99_ms")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    out.update(requests=sum(r["requests"] for r in runs), errors=sum(r["errors"] for r in runs),
               rps_rounds=[r["rps"] for r in runs])
    return out


def requests_for(kind: str, concurrency: int, model: str, quick: bool) -> int:
    base = {"short": 48, "full": 16} if model == "bert-base" else {"short": 160, "full": 64}
    n = max(base[kind], 4 * concurrency)
    return max(8, n // 2) if quick else n


def summarise(cells: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for model, by_kind in cells.items():
        for kind, by_mode in by_kind.items():
            on, off = by_mode["on"], by_mode["off"]
            lone_ms = off["1"]["p50_ms"]
            for c in map(str, CONCURRENCY):
                rows.append({
                    "model": model, "kind": kind, "concurrency": int(c),
                    "rps_on": on[c]["rps"], "rps_off": off[c]["rps"], "speedup": on[c]["rps"] / off[c]["rps"],
                    "p50_on_ms": on[c]["p50_ms"], "p99_on_ms": on[c]["p99_ms"],
                    "p50_off_ms": off[c]["p50_ms"], "p99_off_ms": off[c]["p99_ms"],
                    "tokens_per_s_on": on[c]["tokens_per_s"], "lone_ms": lone_ms,
                })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    hdr = (f"{'model':<9} {'kind':<5} {'c':>3} {'req/s on':>9} {'req/s off':>9} {'on/off':>7} "
           f"{'p50 on':>8} {'p99 on':>8} {'p50 off':>8} {'p99 off':>8} {'tok/s on':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['model']:<9} {r['kind']:<5} {r['concurrency']:>3} {r['rps_on']:>9.1f} {r['rps_off']:>9.1f} "
              f"{r['speedup']:>6.2f}x {r['p50_on_ms']:>8.1f} {r['p99_on_ms']:>8.1f} {r['p50_off_ms']:>8.1f} "
              f"{r['p99_off_ms']:>8.1f} {r['tokens_per_s_on']:>9.0f}")
    print("\ntargets at concurrency 16: short >= 1.5x one-at-a-time; full >= 1.0x; "
          "p99 on <= 2x p99 off (the same load one request at a time); lone = p50 at c=1, batching off")
    for r in rows:
        if r["concurrency"] != 16:
            continue
        need = 1.5 if r["kind"] == "short" else 1.0
        ok_speed = r["speedup"] >= need
        ok_p99 = r["p99_on_ms"] <= 2 * r["p99_off_ms"]
        print(f"  {r['model']} {r['kind']}: throughput {r['speedup']:.2f}x ({'PASS' if ok_speed else 'MISS'}), "
              f"p99 {r['p99_on_ms']:.0f} ms vs off {r['p99_off_ms']:.0f} ms ({'PASS' if ok_p99 else 'MISS'}); "
              f"p99 / lone {r['p99_on_ms'] / r['lone_ms']:.1f}x")


def save_png(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[png] matplotlib not installed (bench/requirements-compressor.txt); no PNG written")
        return False
    groups = sorted({(r["model"], r["kind"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.4), squeeze=False)
    for ax, (model, kind) in zip(axes[0], groups, strict=True):
        sub = [r for r in rows if r["model"] == model and r["kind"] == kind]
        xs = [str(r["concurrency"]) for r in sub]
        ax.plot(xs, [r["rps_on"] for r in sub], "o-", label="batching on")
        ax.plot(xs, [r["rps_off"] for r in sub], "s--", label="one at a time")
        ax.set_title(f"{model}, {kind}", fontsize=10)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("requests/s")
        ax.legend(fontsize=8)
    fig.suptitle("POST /v1/compress, CPU defaults")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="stand-in model only, half the requests")
    p.add_argument("--models", default="", help="comma-separated subset of stand-in,bert-base")
    p.add_argument("--rounds", type=int, default=3, help="runs of every cell on each server (medians reported)")
    p.add_argument("--aa", action="store_true",
                   help="control run: both servers with batching off, to show the machine's noise in on/off")
    p.add_argument("--load", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        load_main(args.load)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    work = OUT / "compress-serving"
    work.mkdir(exist_ok=True)
    models = build_models(args.quick and args.models != "bert-base")
    if args.models:
        models = {k: v for k, v in models.items() if k in args.models.split(",")}
    cells: dict[str, Any] = {}
    same = True
    for name, model in models.items():
        docs = {k: make_docs(model, k, 24) for k in KINDS}
        cells[name] = {k: {} for k in KINDS}
        reference: dict[str, dict[int, str]] = {k: {} for k in KINDS}
        # both servers up at once, each cell run on one then the other (alternating which goes first),
        # so load from other processes on the machine hits both policies alike
        servers = {"on": start_server(work, model, not args.aa, "on")}
        try:
            servers["off"] = start_server(work, model, False, "off")
            turn = 0
            for kind in KINDS:
                for mode in servers:
                    cells[name][kind][mode] = {}
                for c in CONCURRENCY:
                    n = requests_for(kind, c, name, args.quick)
                    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
                    for r in range(args.rounds):
                        order = ["on", "off"] if turn % 2 == 0 else ["off", "on"]
                        turn += 1
                        for mode in order:
                            cell = run_cell(servers[mode].port, docs[kind], c, n)
                            for i, text in cell.pop("texts").items():
                                ref = reference[kind].setdefault(int(i), text)
                                same &= ref == text
                            runs[mode].append(cell)
                            print(f"[{name} {kind} batching {mode if not args.aa else 'off'} c={c} round {r + 1}] "
                                  f"{cell['rps']:.1f} req/s p50 {cell['p50_ms']:.1f} ms p99 {cell['p99_ms']:.1f} ms "
                                  f"errors {cell['errors']}", flush=True)
                    for mode in runs:
                        cells[name][kind][mode][str(c)] = median_cell(runs[mode])
        finally:
            for server in servers.values():
                server.stop()
    rows = summarise(cells)
    print()
    if args.aa:
        print("CONTROL RUN (--aa): both servers have batching off; 'on' below is the second such server, so "
              "on/off shows only the machine's noise")
    print(f"medians of {args.rounds} rounds per cell")
    print_table(rows)
    print(f"\nsame compressed text for every document in every cell: {same}")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    result = {"rows": rows, "cells": cells, "same_decisions": same, "loadavg": load, "quick": args.quick,
              "rounds": args.rounds, "control_aa": args.aa,
              "cpus": os.cpu_count(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
    stem = "compress_serving" + ("-quick" if args.quick else "") + ("-aa" if args.aa else "")
    (OUT / f"{stem}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    if save_png(rows, OUT / f"{stem}.png"):
        print(f"[png] {OUT / (stem + '.png')}")
    if not same:
        raise SystemExit("compressed texts differ between cells")


if __name__ == "__main__":
    main()
