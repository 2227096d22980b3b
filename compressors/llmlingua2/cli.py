"""CLI: `promptwire compress ...` and `promptwire compressor export ...` (wired by gateway/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import CompressorError, decode_text

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the `compress` and `compressor export` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser("compress", help="compress a prompt with LLMLingua-2 (ONNX Runtime)")
    p.add_argument("file", metavar="FILE", help="text file to compress, or - for stdin")
    p.add_argument(
        "--model",
        default=None,
        help="exported dir, checkpoint dir or Hugging Face id (default: $PROMPTWIRE_COMPRESSOR_MODEL)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, default=None, help="fraction of tokens to keep, in (0, 1]")
    g.add_argument("--target-token", type=int, default=None, help="target number of tokens")
    p.add_argument("--compat", choices=["llmlingua"], default=None, help="reproduce llmlingua 0.2.2 exactly")
    p.add_argument("--int8", action="store_true", help="use an int8 export")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_compress)

    e = subparsers.add_parser("compressor", help="compressor model tools")
    esub = e.add_subparsers(dest="compressor_cmd", required=True)
    x = esub.add_parser("export", help="export a token-classification checkpoint to ONNX")
    x.add_argument("src", metavar="SRC", help="Hugging Face id or checkpoint directory")
    x.add_argument("--out", required=True, help="output directory")
    x.add_argument("--int8", action="store_true", help="int8 block-wise weights (CPU)")
    x.add_argument("--fp16", action="store_true", help="float16 weights (CUDA)")
    x.add_argument("--no-optimize", action="store_true", help="skip graph optimisation")
    x.set_defaults(func=_export)


def _read_input(path: str) -> str:
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as fh:
            data = fh.read()
    return decode_text(data, "file")


def _compress(args: argparse.Namespace) -> int:
    import os

    from .compressor import Compressor

    model = args.model or os.environ.get("PROMPTWIRE_COMPRESSOR_MODEL")
    if not model:
        print("error: --model is required (or set PROMPTWIRE_COMPRESSOR_MODEL)", file=sys.stderr)
        return 2
    try:
        text = _read_input(args.file)
        comp = Compressor(model, int8=args.int8)
        rate = args.rate if args.rate is not None else 0.5
        result: dict[str, Any]
        if args.compat == "llmlingua":
            opts: dict[str, Any] = {"rate": rate}
            if args.target_token is not None:
                opts["target_token"] = args.target_token
            result = comp.compress_llmlingua(text, **opts)
            out_text = result["compressed_prompt"]
        else:
            r = comp.compress(text, rate=rate, target_token=args.target_token)
            out_text = r.text
            result = {
                "compressed_prompt": r.text,
                "origin_tokens": r.origin_tokens,
                "compressed_tokens": r.compressed_tokens,
                "rate": r.rate,
                "provider": comp.provider,
            }
    except CompressorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        sys.stdout.write(out_text)
        if not out_text.endswith("\n"):
            sys.stdout.write("\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export

    if args.int8 and args.fp16:
        print("error: --int8 and --fp16 are exclusive", file=sys.stderr)
        return 2
    try:
        out = export(args.src, args.out, int8=args.int8, fp16=args.fp16, optimize=not args.no_optimize)
    except CompressorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
