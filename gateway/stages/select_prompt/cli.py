"""CLI: `promptwire idp train ...` (a soft-prompt pool by prompt tuning) and `promptwire idp export-encoder`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the `idp` command group (train, export-encoder) to the promptwire CLI."""
    idp = subparsers.add_parser("idp", help="IDP prompt pools: train soft prompts, export the IDP-text encoder")
    sub = idp.add_subparsers(dest="idp_command", metavar="SUBCOMMAND", required=True)

    t = sub.add_parser(
        "train", help="train one soft prompt per task by prompt tuning (model frozen) and write the pool",
        description="Prompt-tune one soft prompt per task of FILE.jsonl (lines {\"task\", \"input\", \"output\"}; "
        "loss on the output tokens only) and write a pool for the select_prompt stage (docs/select-prompt.md).",
    )
    t.add_argument("--model", required=True, metavar="M",
                   help="the model the pool is for: a checkpoint directory, Hugging Face id or tiny:FAMILY")
    t.add_argument("--data", required=True, metavar="FILE.jsonl", help="training examples")
    t.add_argument("--tokens", required=True, type=int, metavar="N", help="virtual tokens per soft prompt")
    t.add_argument("--out", required=True, metavar="FILE", help="the pool file to write (.safetensors)")
    t.add_argument("--epochs", type=int, default=10, metavar="E", help="passes over the data (default 10)")
    t.add_argument("--lr", type=float, default=0.03, metavar="LR", help="Adam learning rate (default 0.03)")
    t.add_argument("--seed", type=int, default=0, metavar="S", help="initialisation, split and order seed")
    t.add_argument("--init", choices=["vocab", "random"], default="vocab",
                   help="vocab: embeddings of random vocabulary tokens (default); random: Gaussian")
    t.add_argument("--batch-size", type=int, default=8, metavar="B", help="examples per step (default 8)")
    t.add_argument("--format", choices=["chat", "plain"], default="chat",
                   help="chat: input as one user message through the chat template (default); plain: as is")
    t.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    t.set_defaults(func=_train)

    e = sub.add_parser("export-encoder", help="export the IDP-text sentence encoder to ONNX (for torch-free images)")
    e.add_argument("src", nargs="?", default=None, metavar="SRC",
                   help="a sentence-transformers checkpoint (default: the bundled all-MiniLM-L6-v2)")
    e.add_argument("--out", required=True, metavar="DIR", help="output directory (use it as a text pool's encoder)")
    e.set_defaults(func=_export_encoder)


def _fail(message: str, rc: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return rc


def _train(args: argparse.Namespace) -> int:
    from gateway.stages.select_prompt.errors import SelectPromptError
    from gateway.stages.select_prompt.train import TrainConfig, read_examples

    try:
        cfg = TrainConfig(tokens=args.tokens, epochs=args.epochs, lr=args.lr, seed=args.seed, init=args.init,
                          batch_size=args.batch_size, format=args.format)
        examples = read_examples(args.data)
    except SelectPromptError as exc:
        flag = "--" + exc.param.replace("_", "-")
        return _fail(f"{flag}: {exc.message}" if exc.param in _FLAGS else exc.message)
    try:
        return _run_training(args, cfg, examples)
    except SelectPromptError as exc:
        return _fail(exc.message)
    except OSError as exc:
        return _fail(str(exc), 1)


_FLAGS = frozenset({"tokens", "epochs", "lr", "init", "batch_size", "format"})


def _run_training(args: argparse.Namespace, cfg: Any, examples: list[Any]) -> int:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from decoders.fingerprint import model_fingerprint
    from gateway.providers.local import resolve_model_source
    from gateway.stages.select_prompt.pool import save_pool
    from gateway.stages.select_prompt.train import train_pool

    started = time.perf_counter()
    try:
        path = resolve_model_source(args.model)
    except ValueError as exc:
        return _fail(f"--model: {exc}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = model.to(device)
    fingerprint = model_fingerprint(path)
    tasks = sorted({e.task for e in examples})
    print(f"idp train: {len(examples)} examples, {len(tasks)} tasks, {cfg.tokens} virtual tokens at hidden size "
          f"{model.config.hidden_size}, {cfg.epochs} epochs on {device}", file=sys.stderr)

    def report(epoch: int, losses: dict[str, float]) -> None:
        label = "before training" if epoch == 0 else f"epoch {epoch}"
        tqdm.write(f"{label}: held-out loss " + "  ".join(f"{t}={v:.4f}" for t, v in losses.items()),
                   file=sys.stderr)

    result = train_pool(model, tokenizer, examples, cfg, on_epoch=report)
    out = save_pool(args.out, result.prompts, result.names, fingerprint)
    m, n, d = result.prompts.shape
    print(f"wrote {out}: {m} prompts ({', '.join(result.names)}) x {n} tokens x {d}; model fingerprint "
          f"{fingerprint}; {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(out)
    return 0


def _export_encoder(args: argparse.Namespace) -> int:
    from gateway.stages.select_prompt.encoder import default_encoder_source, export_encoder
    from gateway.stages.select_prompt.errors import SelectPromptError

    try:
        out = export_encoder(args.src if args.src is not None else default_encoder_source(), args.out)
    except SelectPromptError as exc:
        return _fail(exc.message)
    print(out)
    return 0
