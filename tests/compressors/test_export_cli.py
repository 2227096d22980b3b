"""Tiny builder, ONNX export (int8, cache) and the compress / compressor export CLI."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest

from compressors.llmlingua2 import cli
from compressors.llmlingua2.compressor import Compressor
from compressors.llmlingua2.export import ensure_exported, export, is_exported

TEXT = "Good evening everyone. The council will now vote on item 12, the water budget. Die Sitzung ist heute Abend."


def test_tiny_loads_with_transformers(tiny_checkpoints: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    for arch, path in tiny_checkpoints.items():
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForTokenClassification.from_pretrained(path).eval()
        assert model.config.num_labels == 2
        assert tok.convert_tokens_to_ids("[NEW0]") != tok.unk_token_id
        assert tok.tokenize("a [NEW7] b").count("[NEW7]") == 1
        assert tok.cls_token == ("[CLS]" if arch == "bert" else "<s>")
        enc = tok(TEXT * 3, return_tensors="pt")
        with torch.no_grad():
            p = model(**enc).logits.softmax(-1)[0, :, 1]  # (T,)
        assert float(p.std()) > 0.1, "classifier head should spread keep-probabilities"


def _weights_bytes(export_dir: Path) -> int:
    """The graph plus its external weights file (model.onnx.data)."""
    return sum(f.stat().st_size for f in export_dir.glob("model.onnx*"))


def test_int8_export_and_cache(
    tiny_checkpoints: dict[str, Path], tiny_exports: dict[str, Path], tmp_path: Path
) -> None:
    out = export(tiny_checkpoints["bert"], tmp_path / "int8", int8=True)
    assert is_exported(out)
    meta = json.loads((out / "promptwire_export.json").read_text())
    assert meta["options"]["int8"] and meta["subword_style"] == "wordpiece"
    assert _weights_bytes(out) < _weights_bytes(tiny_exports["bert"])
    fp32, int8 = Compressor(tiny_exports["bert"]), Compressor(out)
    ids = fp32.classifier.tokenizer.encode(TEXT).ids
    a, b = fp32.keep_probs([ids])[0], int8.keep_probs([ids])[0]
    assert np.abs(a - b).max() < 0.2 and np.corrcoef(a, b)[0, 1] > 0.9
    # same weights + options: no re-export
    t = time.perf_counter()
    assert export(tiny_checkpoints["bert"], out, int8=True) == out
    assert time.perf_counter() - t < 1.0
    cached = ensure_exported(tiny_checkpoints["xlmr"], cache_dir=tmp_path / "cache")
    assert cached.parent.parent == tmp_path / "cache" and is_exported(cached)
    assert ensure_exported(tiny_checkpoints["xlmr"], cache_dir=tmp_path / "cache") == cached
    assert ensure_exported(cached) == cached


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="promptwire")
    cli.register(parser.add_subparsers(dest="cmd", required=True))
    return parser.parse_args(argv)


def test_cli_compress(
    tiny_exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "doc.txt"
    f.write_text(TEXT * 5, encoding="utf-8")
    args = _parse(["compress", "--model", str(tiny_exports["xlmr"]), "--rate", "0.4", str(f)])
    assert args.func(args) == 0
    plain = capsys.readouterr().out
    assert 0 < len(plain) < len(TEXT * 5)
    args = _parse(
        ["compress", "--model", str(tiny_exports["xlmr"]), "--target-token", "20", "--json", str(f)]
    )
    assert args.func(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["origin_tokens"] > res["compressed_tokens"] > 0
    args = _parse(
        ["compress", "--model", str(tiny_exports["bert"]), "--compat", "llmlingua", "--json", str(f)]
    )
    assert args.func(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ratio"].endswith("x") and "compressed_prompt_list" in res
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe")
    args = _parse(["compress", "--model", str(tiny_exports["bert"]), str(bad)])
    assert args.func(args) == 2
    assert "UTF-8" in capsys.readouterr().err
    args = _parse(["compress", "--model", str(tiny_exports["bert"]), "--rate", "1.5", str(f)])
    assert args.func(args) == 2
    assert "rate" in capsys.readouterr().err


def test_cli_export(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse(
        ["compressor", "export", str(tiny_checkpoints["xlmr"]), "--out", str(tmp_path / "x"), "--int8"]
    )
    assert args.func(args) == 0
    assert is_exported(tmp_path / "x")
    assert json.loads((tmp_path / "x" / "promptwire_export.json").read_text())["subword_style"] == "metaspace"


def test_default_cache_dir_is_promptwire_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from compressors.llmlingua2.export import default_cache_dir

    monkeypatch.setenv("PROMPTWIRE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PROMPTWIRE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "promptwire"
