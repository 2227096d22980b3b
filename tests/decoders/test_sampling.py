"""Sampling filters and token selection."""

from __future__ import annotations

import math

import pytest
import torch

from decoders.sampling import SamplingParamError, SamplingParams, filter_logits, select_tokens


def kept(row: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(row)).flatten().tolist())


def test_top_k_keeps_exactly_k_per_row() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, 3.0], [9.0, 1.0, 2.0, 3.0, 0.5]])
    out = filter_logits(logits, [SamplingParams(top_k=2), SamplingParams(top_k=0)])
    assert kept(out[0]) == {1, 3}
    assert kept(out[1]) == {0, 1, 2, 3, 4}


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert kept(filter_logits(logits, [SamplingParams(top_p=0.5)])[0]) == {0}
    assert kept(filter_logits(logits, [SamplingParams(top_p=0.79)])[0]) == {0, 1}
    assert kept(filter_logits(logits, [SamplingParams(top_p=0.81)])[0]) == {0, 1, 2}
    assert kept(filter_logits(logits, [SamplingParams(top_p=0.01)])[0]) == {0}


def test_temperature_scales_logits() -> None:
    logits = torch.tensor([[2.0, 4.0]])
    out = filter_logits(logits, [SamplingParams(temperature=0.5)])
    assert out.tolist() == [[4.0, 8.0]]


def test_select_tokens_greedy_and_seeded() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0), SamplingParams(temperature=1.0)]
    draws = []
    for _ in range(2):
        gens = [None, torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)]
        draws.append([select_tokens(logits, params, gens) for _ in range(20)])
    assert draws[0] == draws[1]  # same seeds, same draws
    assert all(d[0] == int(logits[0].argmax()) for d in draws[0])
    assert len({d[1] for d in draws[0]}) > 1  # it really samples


def test_sampling_frequencies_follow_the_distribution() -> None:
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    logits = probs.log()[None]
    gen = torch.Generator().manual_seed(1)
    counts = [0, 0, 0, 0]
    for _ in range(3000):
        counts[select_tokens(logits, [SamplingParams()], [gen])[0]] += 1
    assert counts[3] == 0
    assert [c / 3000 for c in counts[:3]] == pytest.approx([0.6, 0.3, 0.1], abs=0.04)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 2.0}, "top_k"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"stop": tuple("abcdefghijklmnopq")}, "stop"),
        ({"top_logprobs": -1}, "top_logprobs"),
    ],
)
def test_validate_names_param(kwargs, param) -> None:
    with pytest.raises(SamplingParamError) as info:
        SamplingParams(**kwargs).validate()
    assert info.value.param == param


def test_stop_accepts_string_and_list() -> None:
    assert SamplingParams(stop="x").stop == ("x",)
    assert SamplingParams(stop=["a", "b"]).validate().stop == ("a", "b")
