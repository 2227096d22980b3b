"""`promptwire idp train` and `promptwire idp export-encoder`, run through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from decoders.fingerprint import model_fingerprint
from decoders.tiny import build_tiny_causal_lm
from gateway.cli import main
from gateway.stages.select_prompt.encoder import SentenceEncoder, is_encoder_export
from gateway.stages.select_prompt.pool import SoftPool
from tests.support.idp import build_tiny_encoder, two_task_examples


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("llama"), "llama", seed=0)


def write_data(path: Path, per_task: int = 8) -> Path:
    path.write_text("".join(json.dumps(vars(e)) + "\n" for e in two_task_examples(per_task)))
    return path


def test_train_writes_a_pool_for_that_model(llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_data(tmp_path / "tasks.jsonl")
    out = tmp_path / "pool.safetensors"
    rc = main(["idp", "train", "--model", str(llama_dir), "--data", str(data), "--tokens", "3", "--out", str(out),
               "--epochs", "2", "--lr", "0.1", "--seed", "1", "--init", "random"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.strip() == str(out)
    for label in ("before training", "epoch 1", "epoch 2"):
        assert f"{label}: held-out loss plain=" in captured.err and "fancy=" in captured.err
    pool = SoftPool.load(out, fingerprint=model_fingerprint(llama_dir), hidden_size=64)
    assert pool.names == ("plain", "fancy") and tuple(pool.prompts.shape) == (2, 3, 64)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tokens", "0"], "--tokens: tokens must be >= 1"),
        (["--tokens", "2", "--lr", "-1"], "--lr: lr must be > 0"),
        (["--tokens", "2", "--data", "MISSING"], "does not exist"),
        (["--tokens", "2", "--model", "tiny:nope"], "--model: unknown stand-in"),
    ],
)
def test_train_reports_bad_input(llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 extra: list[str], message: str) -> None:
    args = {"--model": str(llama_dir), "--data": str(write_data(tmp_path / "d.jsonl", 2)),
            "--out": str(tmp_path / "p.safetensors")}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = value if value != "MISSING" else str(tmp_path / "missing.jsonl")
    argv = ["idp", "train"] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.safetensors").exists()


def test_export_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = build_tiny_encoder(tmp_path / "enc")
    assert main(["idp", "export-encoder", str(src), "--out", str(tmp_path / "onnx")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "onnx")
    assert is_encoder_export(tmp_path / "onnx")
    assert SentenceEncoder(tmp_path / "onnx").embed(["hello"]).shape == (1, 64)
