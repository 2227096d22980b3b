"""`promptwire models make-tiny DIR`: build the small deterministic stand-in models offline."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["TINY_MODELS", "make_tiny", "register"]

TINY_MODELS = ("llama", "gpt2", "qwen2", "llmlingua2-bert", "llmlingua2-xlmr")
"""Sub-directories make-tiny writes: three causal LMs and the two LLMLingua-2 classifier styles."""


def make_tiny(out: Path, which: tuple[str, ...] = TINY_MODELS, seed: int = 0) -> dict[str, Path]:
    """Build each named stand-in under ``out`` (deterministic for a seed); returns name -> directory."""
    from compressors.llmlingua2.tiny import build_tiny_bert, build_tiny_xlmr
    from decoders.tiny import build_tiny_causal_lm

    built: dict[str, Path] = {}
    for name in which:
        target = out / name
        if name == "llmlingua2-bert":
            built[name] = build_tiny_bert(target, seed=seed)
        elif name == "llmlingua2-xlmr":
            built[name] = build_tiny_xlmr(target, seed=seed)
        else:
            built[name] = build_tiny_causal_lm(target, name, seed=seed)  # type: ignore[arg-type]
    return built


def _cmd_make_tiny(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    which = tuple(args.only) if args.only else TINY_MODELS
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ModuleNotFoundError as e:
        print(f"error: models make-tiny needs {e.name}: pip install 'promptwire[local]'", file=sys.stderr)
        return 2
    for i, name in enumerate(which, 1):
        started = time.perf_counter()
        print(f"[{i}/{len(which)}] building {name} ...", end=" ", flush=True, file=sys.stderr)
        make_tiny(out, (name,), seed=args.seed)
        print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(
        f"Built {len(which)} stand-in model(s) under {out}. They have random weights: use them to try the\n"
        "plumbing offline, not for real output. For example:\n"
        f"  promptwire serve --model {out / 'llama'}\n"
        f"  promptwire compress --model {out / 'llmlingua2-bert'} --rate 0.5 FILE\n"
        "Real checkpoints load the same way from a directory or a Hugging Face id."
    )
    return 0


def register(subparsers: Any) -> None:
    """Add `models make-tiny` to the promptwire CLI."""
    models = subparsers.add_parser("models", help="model tools")
    models_sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    tiny = models_sub.add_parser(
        "make-tiny", help="build small deterministic stand-in models offline (causal LMs + LLMLingua-2 classifiers)"
    )
    tiny.add_argument("dir", metavar="DIR", help="output directory (one sub-directory per model)")
    tiny.add_argument("--only", action="append", choices=TINY_MODELS, help="build only these (repeatable)")
    tiny.add_argument("--seed", type=int, default=0, help="weights and tokenizer seed (default 0)")
    tiny.set_defaults(func=_cmd_make_tiny)
