"""`promptwire models make-tiny DIR`: offline stand-ins that load with transformers and the compressor."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from gateway.cli import main


def test_make_tiny_builds_loadable_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["models", "make-tiny", str(tmp_path), "--only", "gpt2", "--only", "llmlingua2-xlmr"])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "llmlingua2-xlmr"]
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")
    assert lm.config.model_type == "gpt2"
    assert AutoTokenizer.from_pretrained(tmp_path / "gpt2").chat_template
    clf = AutoModelForTokenClassification.from_pretrained(tmp_path / "llmlingua2-xlmr")
    assert clf.config.model_type == "xlm-roberta" and clf.config.num_labels == 2
    assert "promptwire serve --model" in capsys.readouterr().out


def test_make_tiny_is_deterministic(tmp_path: Path) -> None:
    for d in ("a", "b"):
        assert main(["models", "make-tiny", str(tmp_path / d), "--only", "llama"]) == 0
    a = (tmp_path / "a" / "llama" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "llama" / "model.safetensors").read_bytes()
