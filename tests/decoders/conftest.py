"""Factory fixtures for decoder tests: tiny causal LMs built once per session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoders.tiny import build_tiny_causal_lm


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Any, Any]]:
    """tiny_lm("gpt2" | "llama" | "qwen2") -> (model, tokenizer), loaded from a save_pretrained dir."""
    cache: dict[str, tuple[Any, Any]] = {}

    def get(family: str) -> tuple[Any, Any]:
        if family not in cache:
            path = build_tiny_causal_lm(tmp_path_factory.mktemp(f"tiny_{family}"), family, seed=0)
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            cache[family] = (model, AutoTokenizer.from_pretrained(path))
        return cache[family]

    return get
