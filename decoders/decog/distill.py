"""Distil an HMM from a causal LM: sample continuations under task prompts, cluster hidden states, run EM."""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from decoders.decog.em import EpochReport, Sequences, fit
from decoders.decog.hmm import HMM, tokenizer_fingerprint

__all__ = ["DistillConfig", "DistillReport", "Samples", "distill", "kmeans", "read_prompts", "sample_continuations"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    hidden: int = 256
    """Hidden states h of the HMM."""
    samples: int = 2000
    """Continuations sampled from the LLM in all (spread evenly over the prompts)."""
    length: int = 32
    """Tokens per continuation (fewer when the LLM ends with EOS)."""
    epochs: int = 10
    seed: int = 0
    init: Literal["kmeans", "random"] = "kmeans"
    """``kmeans``: hidden states from k-means over the LLM's last hidden states (latent variable
    distillation); ``random``: random parameters."""
    temperature: float = 1.0
    batch_size: int = 32
    """Continuations sampled per forward pass."""
    heldout: float = 0.1
    """Fraction of the samples kept out of EM to report held-out log-likelihood."""
    pseudocount: float = 0.01
    kmeans_iterations: int = 25


@dataclass(frozen=True)
class Samples:
    """Sampled continuations and the LLM's last-layer hidden state at each of their tokens."""

    sequences: Sequences
    hidden: torch.Tensor
    """(N, T, d) float16; rows past a sequence's length are zeros."""


@dataclass
class DistillReport:
    config: dict[str, Any]
    tokenizer_fingerprint: str
    sequences: int
    tokens: int
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def read_prompts(path: str | Path) -> list[str]:
    """Task prompts from a file: one per line, or ``.jsonl`` objects with a ``prompt`` field."""
    src = Path(path)
    prompts: list[str] = []
    with src.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if src.suffix == ".jsonl":
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{src}:{n}: not JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                    raise ValueError(f"{src}:{n}: expected an object with a string 'prompt' field")
                prompts.append(obj["prompt"])
            else:
                prompts.append(line.rstrip("\n"))
    if not prompts:
        raise ValueError(f"{src}: no prompts")
    return prompts


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    # Instruction-aware: the task is given to the model the way a request would give it.
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return list(ids)
    return list(tokenizer(prompt)["input_ids"])


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    found: list[int] = []
    cfg = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (cfg, tokenizer.eos_token_id):
        for i in value if isinstance(value, list) else [value]:
            if isinstance(i, int) and i not in found:
                found.append(i)
    if not found:
        raise ValueError("the model has no EOS token")
    return found


@torch.no_grad()
def sample_continuations(model: Any, tokenizer: Any, prompts: Sequence[str], cfg: DistillConfig,
                         progress: bool = False) -> Samples:
    """Sample ``cfg.samples`` continuations (at most ``cfg.length`` tokens each, EOS included) under the
    prompts, keeping the LLM's last hidden state at every sampled token."""
    device = next(model.parameters()).device
    # transformers renamed past_key_values to cache; use whichever this model's forward takes.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    eos = torch.tensor(_eos_ids(model, tokenizer), device=device)
    width = len(tokenizer)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    per_prompt = [cfg.samples // len(prompts) + (1 if i < cfg.samples % len(prompts) else 0)
                  for i in range(len(prompts))]
    ids_out, len_out, hid_out = [], [], []
    bar = tqdm(total=cfg.samples, desc="sampling", unit="seq", disable=not progress)
    for prompt, count in zip(prompts, per_prompt, strict=True):
        prompt_ids = _prompt_ids(tokenizer, prompt)
        done_here = 0
        while done_here < count:
            b = min(cfg.batch_size, count - done_here)
            inp = torch.tensor([prompt_ids] * b, device=device)  # (B, P): identical prompts, no padding
            out = model(input_ids=inp, use_cache=True)
            past, logits = _cache_of(out, cache_kw), out.logits[:, -1, :width]  # (B, V)
            toks = torch.zeros(b, cfg.length, dtype=torch.long, device=device)
            hid = torch.zeros(b, cfg.length, model.config.hidden_size, dtype=torch.float16, device=device)
            lengths = torch.full((b,), cfg.length, dtype=torch.long, device=device)
            alive = torch.ones(b, dtype=torch.bool, device=device)
            for t in range(cfg.length):
                probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)  # (B, V)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # (B,)
                toks[:, t] = torch.where(alive, nxt, 0)
                out = model(input_ids=nxt[:, None], use_cache=True, output_hidden_states=True, **{cache_kw: past})
                past, logits = _cache_of(out, cache_kw), out.logits[:, -1, :width]
                hid[:, t] = torch.where(alive[:, None], out.hidden_states[-1][:, -1].half(), 0)
                ended = alive & torch.isin(nxt, eos)
                lengths = torch.where(ended, t + 1, lengths)
                alive &= ~ended
                if not alive.any():
                    break
            ids_out.append(toks.cpu())
            len_out.append(lengths.cpu())
            hid_out.append(hid.cpu())
            done_here += b
            bar.update(b)
    bar.close()
    return Samples(Sequences(torch.cat(ids_out), torch.cat(len_out)), torch.cat(hid_out))


def _cache_of(out: Any, cache_kw: str) -> Any:
    return out.cache if cache_kw == "cache" else out.past_key_values


def kmeans(points: torch.Tensor, k: int, iterations: int = 25, seed: int = 0, sample: int = 50_000
           ) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding on a subsample; returns the cluster of every point (n,)."""
    g = torch.Generator().manual_seed(seed)
    x = points.float()
    n = x.shape[0]
    fit_on = x[torch.randperm(n, generator=g)[: min(n, sample)]] if n > sample else x
    k = min(k, fit_on.shape[0])
    centres = fit_on[torch.randint(fit_on.shape[0], (1,), generator=g)]
    d2 = torch.cdist(fit_on, centres).squeeze(1) ** 2
    for _ in range(1, k):  # k-means++: next centre drawn in proportion to squared distance
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        nxt = fit_on[torch.multinomial(weights, 1, generator=g)]
        centres = torch.cat([centres, nxt])
        d2 = torch.minimum(d2, (torch.cdist(fit_on, nxt).squeeze(1)) ** 2)
    for _ in range(iterations):
        assign = _nearest(fit_on, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, fit_on)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp(min=1)[:, None])
        if empty.any():  # re-seed empty clusters on random points
            centres[empty] = fit_on[torch.randint(fit_on.shape[0], (int(empty.sum()),), generator=g)]
    return _nearest(x, centres)


def _nearest(x: torch.Tensor, centres: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    return torch.cat([torch.cdist(x[i : i + chunk], centres).argmin(dim=1) for i in range(0, x.shape[0], chunk)])


def _kmeans_init(samples: Samples, cfg: DistillConfig, vocab: int, eos: int, fingerprint: str) -> HMM:
    seqs = samples.sequences
    valid = torch.arange(seqs.ids.shape[1])[None, :] < seqs.lengths[:, None]  # (N, T)
    clusters = kmeans(samples.hidden[valid], cfg.hidden, cfg.kmeans_iterations, cfg.seed)  # (n_tokens,)
    z = torch.full(seqs.ids.shape, -1, dtype=torch.long)
    z[valid] = clusters
    h = cfg.hidden
    initial = torch.bincount(z[:, 0][z[:, 0] >= 0], minlength=h).double()
    pair = valid[:, 1:] & valid[:, :-1]
    transition = torch.bincount(z[:, :-1][pair] * h + z[:, 1:][pair], minlength=h * h).double().view(h, h)
    emission = torch.bincount(z[valid] * vocab + seqs.ids[valid], minlength=h * vocab).double().view(h, vocab)
    return HMM.from_counts(initial, transition, emission, eos, fingerprint, cfg.pseudocount)


def distill(model: Any, tokenizer: Any, prompts: Sequence[str], cfg: DistillConfig, progress: bool = False,
            on_epoch: Callable[[EpochReport], None] | None = None) -> tuple[HMM, DistillReport]:
    """Sample from the LLM, initialise (k-means or random) and fit the HMM with EM."""
    if cfg.hidden < 1 or cfg.samples < 1 or cfg.length < 1 or cfg.epochs < 0:
        raise ValueError("hidden, samples and length must be >= 1 and epochs >= 0")
    model.eval()
    fingerprint = tokenizer_fingerprint(tokenizer)
    eos = _eos_ids(model, tokenizer)[0]
    vocab = len(tokenizer)
    samples = sample_continuations(model, tokenizer, prompts, cfg, progress)
    seqs = samples.sequences
    logger.info("sampled %d continuations, %d tokens", len(seqs), seqs.tokens)
    if cfg.init == "kmeans":
        hmm = _kmeans_init(samples, cfg, vocab, eos, fingerprint)
    else:
        hmm = HMM.random(cfg.hidden, vocab, eos, fingerprint, seed=cfg.seed)
    train, heldout = seqs.split(cfg.heldout, cfg.seed)
    device = next(model.parameters()).device
    hmm = hmm.to(device)
    # Keep mini-batches of forward-backward messages around 64 MB.
    batch = max(1, min(1024, (16 << 20) // max(1, 3 * cfg.length * cfg.hidden)))
    hmm, epochs = fit(hmm, train, heldout, cfg.epochs, batch, cfg.pseudocount, progress, on_epoch)
    hmm = hmm.to("cpu")
    hmm.meta.update({"hidden": str(cfg.hidden), "samples": str(len(seqs)), "length": str(cfg.length),
                     "init": cfg.init, "seed": str(cfg.seed), "epochs": str(cfg.epochs),
                     "heldout_ll_per_token": "" if not epochs or epochs[-1].heldout_ll is None
                     else f"{epochs[-1].heldout_ll:.6f}"})
    report = DistillReport(asdict(cfg), fingerprint, len(seqs), seqs.tokens,
                           [asdict(e) for e in epochs])
    if not math.isfinite(epochs[-1].train_ll if epochs else 0.0):
        raise ValueError("EM diverged (non-finite log-likelihood)")
    return hmm, report
