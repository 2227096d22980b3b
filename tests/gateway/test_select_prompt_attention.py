"""IDP scoring over real tiny causal LMs: the definition, order invariance, ties, layers, model left as found."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoders.tiny import build_tiny_causal_lm
from gateway.stages.select_prompt.attention import attention_modules, choose, idp_scores, resolve_layers
from tests.support.idp import random_pool

FAMILIES = ("llama", "gpt2", "qwen2")


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Any, Any]]:
    cache: dict[str, tuple[Any, Any]] = {}

    def get(family: str) -> tuple[Any, Any]:
        if family not in cache:
            path: Path = build_tiny_causal_lm(tmp_path_factory.mktemp(family), family, seed=0)  # type: ignore[arg-type]
            cache[family] = (AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
        return cache[family]

    return get


def reference_scores(model: Any, prompts: torch.Tensor, ids: list[int], layers: list[int]) -> torch.Tensor:
    """The definition, computed the plain way: every layer's attentions from transformers, then the mean."""
    m, n, _ = prompts.shape
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            x = model.get_input_embeddings()(torch.tensor([ids]))  # (1, T, d)
            x = torch.cat([prompts, x.expand(m, -1, -1)], dim=1)  # (m, n+T, d)
            att = model(inputs_embeds=x, output_attentions=True).attentions  # L x (m, H, n+T, n+T)
    finally:
        model.set_attn_implementation(previous)
    per_layer = torch.stack([att[i][:, :, n:, :n].mean(dim=(1, 2, 3)) for i in layers])  # (len, m)
    return per_layer.mean(dim=0)  # (m,)


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_mean_attention_from_input_to_each_prompt(lm: Callable[[str], tuple[Any, Any]], family: str) -> None:
    model, tok = lm(family)
    ids = tok("the model answer is in the cache")["input_ids"]
    prompts = random_pool(5, 3, model.config.hidden_size, seed=1)
    got = idp_scores(model, prompts, ids)
    want = reference_scores(model, prompts, ids, list(range(model.config.num_hidden_layers)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert got.shape == (5,) and bool((got > 0).all()) and bool((got < 1).all())
    assert model.config._attn_implementation == "sdpa"  # the model is left with its own kernel


@pytest.mark.parametrize("family", FAMILIES)
def test_permuting_the_pool_never_changes_the_choice(lm: Callable[[str], tuple[Any, Any]], family: str) -> None:
    model, tok = lm(family)
    prompts = random_pool(6, 4, model.config.hidden_size, seed=2)
    names = [f"p{i}" for i in range(6)]
    rng = random.Random(0)
    for text in ("hello world", "def return class import", "東京 日本語 café"):
        ids = tok(text)["input_ids"]
        base = idp_scores(model, prompts, ids)
        chosen = names[choose(base)]
        assert base[choose(base)] == base.max()  # the chosen prompt has the top score
        for _ in range(8):
            perm = list(range(6))
            rng.shuffle(perm)
            scores = idp_scores(model, prompts[perm], ids)
            torch.testing.assert_close(scores, base[perm], rtol=1e-6, atol=1e-8)
            assert names[perm[choose(scores)]] == chosen


def test_ties_go_to_the_lower_index(lm: Callable[[str], tuple[Any, Any]]) -> None:
    model, tok = lm("llama")
    ids = tok("a question")["input_ids"]
    p = random_pool(3, 2, model.config.hidden_size, seed=3)
    best = choose(idp_scores(model, p, ids))
    pool = torch.stack([p[(best + 1) % 3], p[best], p[best]])  # the winner twice, after a loser
    scores = idp_scores(model, pool, ids)
    assert scores[1] == scores[2]
    assert choose(scores) == 1
    assert choose([0.1, 0.3, 0.3]) == 1 and choose([0.5]) == 0
    with pytest.raises(ValueError):
        choose([])


def test_single_prompt_pool_scores_that_prompt(lm: Callable[[str], tuple[Any, Any]]) -> None:
    model, tok = lm("qwen2")
    ids = tok("one prompt only")["input_ids"]
    p = random_pool(1, 5, model.config.hidden_size, seed=4)
    s = idp_scores(model, p, ids)
    assert choose(s) == 0
    torch.testing.assert_close(s, reference_scores(model, p, ids, [0, 1]))


def test_configured_layers_and_early_stop_leave_the_model_as_found(lm: Callable[[str], tuple[Any, Any]]) -> None:
    model, tok = lm("gpt2")
    ids = tok("the model")["input_ids"]
    x = torch.tensor([ids])
    before = model.generate(x, max_new_tokens=6, do_sample=False)
    hooks = [len(m._forward_hooks) for m in attention_modules(model)]
    prompts = random_pool(4, 3, model.config.hidden_size, seed=5)
    for layers, expect in (([0], [0]), ([-1], [1]), ([1, 0, -2], [0, 1])):
        got = idp_scores(model, prompts, ids, layers=layers)  # [0]: the pass stops after layer 0
        torch.testing.assert_close(got, reference_scores(model, prompts, ids, expect), rtol=1e-5, atol=1e-7)
    assert torch.equal(model.generate(x, max_new_tokens=6, do_sample=False), before)
    assert [len(m._forward_hooks) for m in attention_modules(model)] == hooks  # ours are removed


def test_bad_layers_and_empty_input(lm: Callable[[str], tuple[Any, Any]]) -> None:
    model, _ = lm("llama")
    p = random_pool(2, 2, model.config.hidden_size)
    for bad in ([2], [-3], [True], []):
        with pytest.raises(ValueError, match="layer"):
            idp_scores(model, p, [1, 2], layers=bad)
    with pytest.raises(ValueError, match="input token"):
        idp_scores(model, p, [])
    assert resolve_layers(None, 3) == [0, 1, 2]
    assert resolve_layers([-1, 2, 0], 3) == [0, 2]


def test_attention_modules_are_one_per_layer(lm: Callable[[str], tuple[Any, Any]]) -> None:
    for family in FAMILIES:
        model, _ = lm(family)
        mods = attention_modules(model)
        assert len(mods) == model.config.num_hidden_layers
        assert len({id(m) for m in mods}) == len(mods)
        assert all(type(a) is type(b) for a, b in itertools.pairwise(mods))
