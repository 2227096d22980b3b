"""Tiny causal LM builder: deterministic, loads offline with Auto classes, chat templates, varied output."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoders.tiny import FAMILIES, build_tiny_causal_lm


@pytest.mark.parametrize("family", FAMILIES)
def test_builds_load_and_chat(tiny_lm, family: str) -> None:
    model, tok = tiny_lm(family)
    assert type(model).__name__ == {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel",
                                    "qwen2": "Qwen2ForCausalLM"}[family]
    text = "Hello café 東京 😀"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                       tokenize=False)
    assert "hi" in rendered and rendered != "hi"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    with torch.no_grad():
        logits = model(torch.tensor([tok("the model answer")["input_ids"]])).logits[0]  # (T, V)
    top = logits.argmax(-1).tolist()
    assert len(set(top)) > 1 and tok.eos_token_id not in top


def test_llama_tokenizer_is_sentencepiece_like(tiny_lm) -> None:
    _, tok = tiny_lm("llama")
    pieces = tok.convert_ids_to_tokens(tok("a café 😀 東京")["input_ids"])
    assert pieces[0] == "<s>" and pieces[1].startswith("▁")
    assert any(p.startswith("<0x") for p in tok.convert_ids_to_tokens(tok("Zürich ☃")["input_ids"]))


def test_deterministic(tmp_path) -> None:
    a = build_tiny_causal_lm(tmp_path / "a", "gpt2", seed=3)
    b = build_tiny_causal_lm(tmp_path / "b", "gpt2", seed=3)
    c = build_tiny_causal_lm(tmp_path / "c", "gpt2", seed=4)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    wa, wb, wc = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert AutoTokenizer.from_pretrained(a).eos_token == "<|endoftext|>"
