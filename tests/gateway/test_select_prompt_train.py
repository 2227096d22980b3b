"""Prompt tuning for IDP pools on tiny causal LMs: held-out loss falls per task, the model stays frozen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoders.tiny import build_tiny_causal_lm
from gateway.stages.select_prompt.train import (
    Example,
    TrainConfig,
    TrainDataError,
    encode_example,
    read_examples,
    split_held_out,
    train_pool,
)
from tests.support.idp import two_task_examples


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    path = build_tiny_causal_lm(tmp_path_factory.mktemp("llama"), "llama", seed=0)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_held_out_loss_falls_for_each_task_and_the_model_is_frozen(llama: tuple[Any, Any]) -> None:
    model, tok = llama
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[tuple[int, dict[str, float]]] = []
    cfg = TrainConfig(tokens=4, epochs=4, lr=0.1, seed=0)
    result = train_pool(model, tok, two_task_examples(16), cfg, on_epoch=lambda e, h: seen.append((e, h)))
    assert result.names == ["plain", "fancy"]
    assert result.prompts.shape == (2, 4, model.config.hidden_size)
    assert [e for e, _ in seen] == [0, 1, 2, 3, 4] and len(result.history) == 5
    first, last = result.history[0], result.history[-1]
    for task in ("plain", "fancy"):
        assert last[task] < first[task] - 0.3, (task, result.history)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())


def test_training_is_deterministic_per_seed(llama: tuple[Any, Any]) -> None:
    model, tok = llama
    ex = two_task_examples(6)
    a = train_pool(model, tok, ex, TrainConfig(tokens=2, epochs=1, seed=3))
    b = train_pool(model, tok, ex, TrainConfig(tokens=2, epochs=1, seed=3))
    c = train_pool(model, tok, ex, TrainConfig(tokens=2, epochs=1, seed=4))
    assert torch.equal(a.prompts, b.prompts) and a.history == b.history
    assert not torch.equal(a.prompts, c.prompts)


@pytest.mark.parametrize("init", ["vocab", "random"])
def test_init(llama: tuple[Any, Any], init: str) -> None:
    model, tok = llama
    emb = model.get_input_embeddings().weight.detach()  # (V, d)
    # a learning rate of ~0 leaves the initial prompts in place
    r = train_pool(model, tok, two_task_examples(4), TrainConfig(tokens=6, epochs=1, lr=1e-30, init=init))  # type: ignore[arg-type]
    rows = r.prompts.reshape(-1, emb.shape[1])  # (m*n, d)
    is_vocab_row = [(emb == row).all(dim=1).any().item() for row in rows]
    if init == "vocab":
        assert all(is_vocab_row)
        specials = set(tok.all_special_ids)
        ids = {int((emb == row).all(dim=1).nonzero()[0]) for row in rows}
        assert not ids & specials
    else:
        assert not any(is_vocab_row)
        assert 0.5 < float(rows.std() / emb.std()) < 2.0


def test_output_tokens_end_with_eos_and_input_is_templated(llama: tuple[Any, Any]) -> None:
    _, tok = llama
    ex = Example("t", "the model", "token answer")
    x_chat, y = encode_example(tok, ex, "chat", 1024)
    x_plain, _ = encode_example(tok, ex, "plain", 1024)
    assert y[-1] == tok.eos_token_id and tok.decode(y[:-1]).strip() == "token answer"
    assert "[INST]" in tok.decode(x_chat) and "[INST]" not in tok.decode(x_plain)
    x_cut, y_cut = encode_example(tok, Example("t", "the model " * 50, "answer"), "plain", 16)
    assert len(x_cut) + len(y_cut) == 16 and y_cut[-1] == tok.eos_token_id


def test_held_out_split_keeps_one_per_task_at_least() -> None:
    ex = [Example("a", str(i), "o") for i in range(10)] + [Example("b", "x", "o"), Example("b", "y", "o")]
    names, train, held = split_held_out(ex, 0.2, seed=0)
    assert names == ["a", "b"]
    assert (len(train["a"]), len(held["a"]), len(train["b"]), len(held["b"])) == (8, 2, 1, 1)
    with pytest.raises(TrainDataError, match="task 'c' has 1 example"):
        split_held_out([*ex, Example("c", "x", "o")], 0.2, seed=0)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (["{not json"], ":1: not JSON"),
        (['{"task": "a", "input": "x"}'], "'output' must be a non-empty string"),
        (['{"task": "", "input": "x", "output": "y"}'], "'task'"),
        (["[1, 2]"], "expected an object"),
        ([""], "no examples"),
    ],
)
def test_bad_data_files(tmp_path: Path, lines: list[str], match: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(TrainDataError, match=match):
        read_examples(path)


def test_read_examples(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"task": "a", "input": "", "output": "y"}, {"task": "b", "input": "x", "output": "z", "extra": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_examples(path) == [Example("a", "", "y"), Example("b", "x", "z")]
    with pytest.raises(TrainDataError, match="does not exist"):
        read_examples(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("kw", "param"),
    [({"tokens": 0}, "tokens"), ({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"),
     ({"init": "zeros"}, "init"), ({"held_out": 1.0}, "held_out"), ({"format": "xml"}, "format")],
)
def test_config_checks(kw: dict[str, Any], param: str) -> None:
    with pytest.raises(TrainDataError) as err:
        TrainConfig(**{"tokens": 4, **kw})
    assert err.value.param == param


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_held_out_loss_falls_on_every_family(tmp_path: Path, family: str) -> None:
    path = build_tiny_causal_lm(tmp_path, family, seed=0)  # type: ignore[arg-type]
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    r = train_pool(model, tok, two_task_examples(40), TrainConfig(tokens=8, epochs=8, lr=0.1))
    for task in ("plain", "fancy"):
        assert r.history[-1][task] < r.history[0][task] - 0.2, (family, task, r.history)
