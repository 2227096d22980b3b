"""CLI: `promptwire decog distill ...` — distil an HMM from a causal LM for the decog decoder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]

_POSITIVE = {"hidden": "--hidden", "samples": "--samples", "length": "--length"}


def register(subparsers: Any) -> None:
    """Add the `decog` command group (distill) to the promptwire CLI."""
    decog = subparsers.add_parser("decog", help="Deco-G: distil the HMM that steers the decog decoder")
    sub = decog.add_subparsers(dest="decog_command", metavar="SUBCOMMAND", required=True)
    d = sub.add_parser(
        "distill", help="sample from a model under task prompts and fit an HMM to its continuations (EM)",
        description="Sample continuations from the model under each task prompt (chat template applied when "
        "the model has one), initialise the HMM's hidden states by k-means over the model's last hidden states "
        "(or randomly), run EM with held-out log-likelihood after each epoch, and write DIR/hmm.safetensors "
        "(tied to the tokenizer's fingerprint) and DIR/distill.json. Name DIR in decoders.decog.hmms "
        "(docs/decog.md).",
    )
    d.add_argument("--model", required=True, metavar="M",
                   help="a checkpoint directory, Hugging Face id or tiny:FAMILY (the model the gateway serves)")
    d.add_argument("--prompts", required=True, metavar="FILE",
                   help="task prompts: one per line, or .jsonl objects with a 'prompt' field")
    d.add_argument("--hidden", required=True, type=int, metavar="H", help="HMM hidden states")
    d.add_argument("--out", required=True, metavar="DIR", help="output directory")
    d.add_argument("--samples", type=int, default=2000, metavar="N", help="continuations in all (default 2000)")
    d.add_argument("--length", type=int, default=32, metavar="L", help="tokens per continuation (default 32)")
    d.add_argument("--epochs", type=int, default=10, metavar="E", help="EM epochs (default 10)")
    d.add_argument("--seed", type=int, default=0, metavar="S", help="sampling, k-means and split seed")
    d.add_argument("--init", choices=["kmeans", "random"], default="kmeans",
                   help="kmeans: clusters of the model's hidden states (default); random: random parameters")
    d.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    d.set_defaults(func=_distill)


def _fail(message: str, rc: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return rc


def _distill(args: argparse.Namespace) -> int:
    for name, flag in _POSITIVE.items():
        if getattr(args, name) < 1:
            return _fail(f"{flag} must be at least 1")
    if args.epochs < 0:
        return _fail("--epochs must be at least 0")
    from decoders.decog.distill import DistillConfig, read_prompts

    try:
        prompts = read_prompts(args.prompts)
    except (OSError, ValueError) as exc:
        return _fail(f"--prompts: {exc}")
    cfg = DistillConfig(hidden=args.hidden, samples=args.samples, length=args.length, epochs=args.epochs,
                        seed=args.seed, init=args.init)
    try:
        return _run(args, cfg, prompts)
    except OSError as exc:
        return _fail(str(exc), 1)


def _run(args: argparse.Namespace, cfg: Any, prompts: list[str]) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from decoders.decog.distill import distill
    from gateway.providers.local import resolve_model_source

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = resolve_model_source(args.model)
    started = time.perf_counter()
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source)
        model = model.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        return _fail(f"--model: cannot load {args.model!r}: {exc}")
    print(f"distilling an HMM with {cfg.hidden} hidden states from {args.model} ({len(prompts)} prompts, "
          f"{cfg.samples} samples of up to {cfg.length} tokens, {cfg.epochs} EM epochs, init {cfg.init})",
          file=sys.stderr)
    hmm, report = distill(model, tokenizer, prompts, cfg, progress=True)
    out = Path(args.out)
    path = hmm.save(out)
    (out / "distill.json").write_text(report.to_json() + "\n", encoding="utf-8")
    last = report.epochs[-1] if report.epochs else None
    held = "-" if last is None or last["heldout_ll"] is None else f"{last['heldout_ll']:.4f}"
    print(f"wrote {path} and {out / 'distill.json'}: {report.sequences} sequences, {report.tokens} tokens, "
          f"held-out log-likelihood per token {held} ({time.perf_counter() - started:.1f} s)")
    return 0
