"""The HMM: files and fingerprints, EM against brute force, k-means, distillation from a tiny LM."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from decoders.decog.distill import DistillConfig, distill, kmeans, read_prompts, sample_continuations
from decoders.decog.em import Sequences, expected_counts, fit
from decoders.decog.hmm import HMM, HMMError, tokenizer_fingerprint


def _brute_force(hmm: HMM, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Expected counts and log-likelihoods by summing over every hidden path."""
    h, v = hmm.hidden_states, hmm.vocab_size
    pi, a, e = (x.exp().double() for x in (hmm.log_initial, hmm.log_transition, hmm.log_emission))
    init, trans, emit = torch.zeros(h, dtype=torch.double), torch.zeros(h, h, dtype=torch.double), torch.zeros(
        h, v, dtype=torch.double)
    lls = []
    for row, n in zip(ids.tolist(), lengths.tolist(), strict=True):
        x = row[:n]
        z_total = torch.tensor(0.0, dtype=torch.double)
        ci, ct, ce = torch.zeros_like(init), torch.zeros_like(trans), torch.zeros_like(emit)
        for z in itertools.product(range(h), repeat=n):
            p = pi[z[0]] * e[z[0], x[0]]
            for t in range(1, n):
                p = p * a[z[t - 1], z[t]] * e[z[t], x[t]]
            z_total += p
            ci[z[0]] += p
            for t in range(1, n):
                ct[z[t - 1], z[t]] += p
            for t in range(n):
                ce[z[t], x[t]] += p
        init += ci / z_total
        trans += ct / z_total
        emit += ce / z_total
        lls.append(torch.log(z_total))
    return init, trans, emit, torch.stack(lls)


def test_expected_counts_match_brute_force() -> None:
    hmm = HMM.random(3, 5, eos_token_id=4, fingerprint="t", seed=1)
    ids = torch.tensor([[0, 2, 1, 3, 4], [1, 1, 0, 0, 0], [3, 0, 0, 0, 0]])
    lengths = torch.tensor([5, 2, 1])
    got = expected_counts(hmm, ids, lengths)
    want = _brute_force(hmm, ids, lengths)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hmm.log_likelihood(ids, lengths), want[3], atol=1e-5, rtol=1e-5)


def test_em_never_lowers_the_training_likelihood() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (40, 12), generator=g)
    ids[:, ::2] = ids[:, ::2] % 2  # some structure to learn
    data = Sequences(ids, torch.randint(4, 13, (40,), generator=g))
    hmm, reports = fit(HMM.random(4, 6, 5, "t", seed=0), data, data, epochs=6, batch_size=16, pseudocount=1e-6)
    lls = [r.train_ll for r in reports]
    assert all(b >= a - 1e-5 for a, b in itertools.pairwise(lls)), lls
    assert reports[-1].heldout_ll is not None and reports[-1].heldout_ll > lls[0]
    assert torch.allclose(hmm.log_transition.exp().sum(1), torch.ones(4))
    assert torch.allclose(hmm.log_emission.exp().sum(1), torch.ones(4))


def test_save_load_and_fingerprint(tmp_path: Path, tiny_lm: Callable[[str], tuple[Any, Any]]) -> None:
    _, tok = tiny_lm("gpt2")
    _, other = tiny_lm("llama")
    fp = tokenizer_fingerprint(tok)
    assert fp == tokenizer_fingerprint(tok) and fp != tokenizer_fingerprint(other)
    hmm = HMM.random(4, len(tok), eos_token_id=0, fingerprint=fp)
    path = hmm.save(tmp_path / "out")
    assert path.name == "hmm.safetensors"
    back = HMM.load(tmp_path / "out", fingerprint=fp)
    assert torch.equal(back.log_emission, hmm.log_emission) and back.eos_token_id == 0 and back.fingerprint == fp
    with pytest.raises(HMMError, match="another tokenizer"):
        HMM.load(path, fingerprint=tokenizer_fingerprint(other))
    with pytest.raises(HMMError, match="no HMM file"):
        HMM.load(tmp_path / "missing")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HMMError):
        HMM.load(tmp_path / "junk.safetensors")


def test_fingerprint_survives_save_and_reload(tmp_path: Path, tiny_lm: Callable[[str], tuple[Any, Any]]) -> None:
    from transformers import AutoTokenizer

    _, tok = tiny_lm("qwen2")
    tok.save_pretrained(tmp_path)
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tmp_path)) == tokenizer_fingerprint(tok)


def test_kmeans_separates_blobs() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(300) % 3
    points = centres[truth] + 0.3 * torch.randn(300, 2, generator=g)
    found = kmeans(points, 3, seed=0)
    for c in range(3):  # each true blob lands in a single cluster, and the clusters differ
        assert found[truth == c].unique().numel() == 1
    assert found.unique().numel() == 3
    assert kmeans(points[:2], 5).tolist() in ([0, 1], [1, 0])  # more clusters than points


def test_read_prompts(tmp_path: Path) -> None:
    lines = tmp_path / "p.txt"
    lines.write_text("first task\n\nsecond task\n")
    assert read_prompts(lines) == ["first task", "second task"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b", "id": 2}) + "\n")
    assert read_prompts(jl) == ["a", "b"]
    jl.write_text(json.dumps({"text": "a"}) + "\n")
    with pytest.raises(ValueError, match="prompt"):
        read_prompts(jl)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")


def test_sampling_is_seeded_and_stops_at_eos(tiny_lm: Callable[[str], tuple[Any, Any]]) -> None:
    model, tok = tiny_lm("llama")
    cfg = DistillConfig(samples=12, length=10, seed=3, batch_size=8)
    a = sample_continuations(model, tok, ["Rate it.", "Count."], cfg)
    b = sample_continuations(model, tok, ["Rate it.", "Count."], cfg)
    assert torch.equal(a.sequences.ids, b.sequences.ids) and a.sequences.ids.shape == (12, 10)
    assert a.hidden.shape == (12, 10, model.config.hidden_size)
    eos = tok.eos_token_id
    for row, n in zip(a.sequences.ids.tolist(), a.sequences.lengths.tolist(), strict=True):
        assert eos not in row[: n - 1] and (n == 10 or row[n - 1] == eos)


@pytest.mark.parametrize("init", ["kmeans", "random"])
def test_distill_produces_a_fitted_hmm(init: str, tiny_lm: Callable[[str], tuple[Any, Any]]) -> None:
    model, tok = tiny_lm("gpt2")
    epochs: list[Any] = []
    cfg = DistillConfig(hidden=8, samples=48, length=8, epochs=2, init=init)  # type: ignore[arg-type]
    hmm, report = distill(model, tok, ["Give a number."], cfg, on_epoch=epochs.append)
    assert hmm.hidden_states == 8 and hmm.vocab_size == len(tok)
    assert hmm.fingerprint == tokenizer_fingerprint(tok) and hmm.eos_token_id == tok.eos_token_id
    assert len(report.epochs) == 2 == len(epochs) and all(e["heldout_ll"] < 0 for e in report.epochs)
    assert report.epochs[1]["train_ll"] >= report.epochs[0]["train_ll"] - 1e-4
    assert hmm.meta["init"] == init and float(hmm.meta["heldout_ll_per_token"]) < 0
