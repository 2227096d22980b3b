"""Trie scoring mode: every label's probability equals brute-force per-label sequence log-probs."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoders.tiny import build_tiny_causal_lm
from decoders.trie.labels import TrieLabelError
from decoders.trie.score import score_labels

LABELS = ["Positive", "Negative", "Neutral", "Pos", "Po", "日本語", "naïve café", "😀 emoji"] + [
    f"label {i} {w}" for i, w in enumerate(["model", "token", "über"] * 20)
]


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2"])
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path = build_tiny_causal_lm(tmp_path_factory.mktemp(f"score_{request.param}"), request.param, seed=2)
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


@torch.no_grad()
def brute_force(model, prompt: list[int], ids: tuple[int, ...]) -> float:
    logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + list(ids)])).logits[0].float(), -1)  # (T, V)
    return sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(ids))


@pytest.mark.parametrize("chunk", [7, 512])
def test_scores_equal_brute_force_and_sum_to_one(lm, chunk: int) -> None:
    tok, model = lm
    prompt = tok("classify this: café", add_special_tokens=True)["input_ids"]
    scores = score_labels(model, tok, prompt, LABELS, chunk_nodes=chunk)
    assert scores.labels == tuple(LABELS)
    assert math.isclose(sum(scores.probs), 1.0, rel_tol=1e-9)
    for label, lp, ids in zip(scores.labels, scores.logprobs, scores.token_ids, strict=True):
        assert tok.decode(prompt + list(ids)).endswith(label)
        assert lp == pytest.approx(brute_force(model, prompt, ids), abs=1e-4)
    # normalised = softmax of the raw log-probs
    z = math.log(sum(math.exp(x) for x in scores.logprobs))
    assert scores.probs[3] == pytest.approx(math.exp(scores.logprobs[3] - z))
    # shared prefixes run once: fewer forwarded tokens than the labels' tokens in total
    assert scores.forwarded_tokens < sum(len(t) - 1 for t in scores.token_ids)
    assert set(scores.as_dict()) == set(LABELS)


def test_scoring_rejects_bad_labels(lm) -> None:
    tok, model = lm
    with pytest.raises(TrieLabelError):
        score_labels(model, tok, [1, 2, 3], ["a", "a"])
