"""USCD: options and their errors, lame-prompt rules, gating measures, contrast modes, stats, lazy mode."""

from __future__ import annotations

import math

import pytest
import torch

from decoders.engine import Engine, EngineConfig, SamplingParams
from decoders.tiny import corpus
from decoders.uscd import DEFAULT_THRESHOLDS, UscdOptionError, UscdOptions, build
from decoders.uscd.lame import drop_chat_examples, drop_doctests, drop_test_asserts
from decoders.uscd.processor import contrast, uncertain

HUMANEVAL = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)
    False
    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0],
    ...                    0.3)
    True
    """
'''

MBPP = '''"""
Write a function to find the shared elements from the given two lists.
assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))
"""
def check(x):
    assert x > 0
    return x
assert check(1) == 1
'''


def test_doctest_examples_are_deleted_humaneval_style() -> None:
    lame = drop_doctests(HUMANEVAL)
    assert ">>>" not in lame and "False" not in lame and "0.3)" not in lame
    assert lame.endswith('    given threshold.\n    """\n')  # the description and the closing quotes stay
    one_line = 'def f(x):\n    """Double x.\n    For example:\n    >>> f(2)\n    4"""\n'
    assert drop_doctests(one_line) == 'def f(x):\n    """Double x.\n    """\n'
    assert drop_doctests("no examples here") == "no examples here"


def test_test_asserts_after_the_function_are_dropped_mbpp_style() -> None:
    lame = drop_test_asserts(MBPP)
    assert "similar_elements((3" not in lame and "check(1) == 1" not in lame
    assert "    assert x > 0" in lame  # an assert inside the body is code, not a test


def test_chat_few_shot_pairs_are_dropped_system_kept() -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2"}, {"role": "user", "content": "real question"}]
    assert drop_chat_examples(messages) == [messages[0], messages[-1]]
    assert drop_chat_examples(messages[-1:]) == messages[-1:]


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": "x"}, "alpha"),
        ({"mode": "linear"}, "mode"),
        ({"measure": "variance"}, "measure"),
        ({"measure": "top1", "threshold": 1.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"lazy": "yes"}, "lazy"),
        ({"plausibility": 2}, "plausibility"),
        ({"lame_prompt": ""}, "lame_prompt"),
        ({"lame_prompt": [1, "a"]}, "lame_prompt"),
        ({"temperature": 1}, "temperature"),
    ],
)
def test_bad_options_name_the_option(options: dict, param: str) -> None:
    with pytest.raises(UscdOptionError) as e:
        UscdOptions.parse({"name": "uscd", **options})
    assert e.value.param == f"promptwire.decoder.{param}"


def test_defaults_and_per_measure_thresholds() -> None:
    o = UscdOptions.parse({"name": "uscd"})
    assert (o.alpha, o.mode, o.measure, o.threshold, o.lazy, o.plausibility) == (0.7, "prob", "std", 0.005, False, 0.1)
    assert UscdOptions.parse({"measure": "entropy"}).threshold == DEFAULT_THRESHOLDS["entropy"]
    assert UscdOptions.parse({"measure": "top1"}).threshold == DEFAULT_THRESHOLDS["top1"]
    assert UscdOptions.parse({"lame_prompt": [3, 4]}).lame_prompt == (3, 4)


def test_measures_and_their_directions() -> None:
    flat = torch.full((1000,), 1e-3)
    peaked = torch.zeros(1000)
    peaked[7] = 1.0
    assert uncertain(flat, "std", 0.005) and not uncertain(peaked, "std", 0.005)
    assert uncertain(flat, "entropy", 0.5) and not uncertain(peaked, "entropy", 0.5)
    assert uncertain(flat, "top1", 0.9) and not uncertain(peaked, "top1", 0.9)
    # the paper's std threshold is vocabulary-dependent: a 90%-confident step counts as uncertain at 64k
    big = torch.full((64000,), 0.1 / 63999)
    big[0] = 0.9
    assert uncertain(big, "std", 0.005) and not uncertain(big, "top1", 0.85)


def test_contrast_modes() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -3.0])
    lame = torch.tensor([3.0, 0.0, 0.0, -3.0])
    p, q = torch.softmax(logits, -1), torch.softmax(lame, -1)
    out = contrast(logits, lame, "prob", 0.7, 0.1)
    d = p - 0.7 * q
    assert out is not None
    assert torch.equal(torch.isinf(out), d <= 0)
    torch.testing.assert_close(out[d > 0], d[d > 0].log())
    out = contrast(logits, lame, "log", 0.5, 0.1)
    assert out is not None
    want = 1.5 * p.log() - 0.5 * q.log()
    keep = p >= 0.1 * p.max()
    torch.testing.assert_close(out[keep], want[keep])
    assert bool(torch.isinf(out[~keep]).all()) and int(out.argmax()) == 1  # the lame prompt's favourite lost
    assert contrast(logits, logits, "prob", 1.0, 0.1) is None  # alpha 1 on equal streams: nothing survives


def _few_shot(tok) -> tuple[list[int], list[int]]:
    lines = corpus(seed=3, n=3)
    return tok(" ".join(lines[:2]) + "\n" + lines[2])["input_ids"], tok(lines[2])["input_ids"]


def test_lazy_gives_eager_tokens_with_fewer_lame_forwards_and_stats(tiny_lm) -> None:
    model, tok = tiny_lm("llama")
    main, lame = _few_shot(tok)
    engine = Engine(model, tok, EngineConfig(max_batch_size=4))
    with torch.no_grad():  # a threshold that splits this prompt's steps: the median top-1 of its first steps
        ids, top = list(main), []
        for _ in range(10):
            p = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)
            top.append(float(p.max()))
            ids.append(int(p.argmax()))
    threshold = (sorted(top)[4] + sorted(top)[5]) / 2  # between two steps' values, on neither
    results = {}
    for lazy in (False, True):
        params = SamplingParams(max_tokens=20, temperature=0.9, seed=4, ignore_eos=True)
        proc = build({"measure": "top1", "threshold": threshold, "lazy": lazy, "lame_prompt": lame},
                     engine.decoder_context(main, params))
        results[lazy] = engine.generate(main, params, proc)
    eager, lazy_ = results[False], results[True]
    assert lazy_.token_ids == eager.token_ids  # sampled, same seed: same tokens
    se, sl = eager.processor_stats, lazy_.processor_stats
    assert se["total_steps"] == sl["total_steps"] == 20 and se["contrasted_steps"] == sl["contrasted_steps"]
    assert 0 < sl["contrasted_steps"] < 20
    assert se["lame_forwards"] == 20 and sl["lame_forwards"] == sl["contrasted_steps"]
    assert se["lame_prompt_rule"] == "client_ids" and se["lame_prompt_tokens"] == len(lame)
    assert se["lame_tokens_removed"] == len(main) - len(lame)
    assert se["contrasted_fraction"] == round(se["contrasted_steps"] / 20, 4)
    assert eager.usage.aux_prompt_tokens == lazy_.usage.aux_prompt_tokens == len(lame)


def test_lame_prompt_rules_from_the_context(tiny_lm) -> None:
    model, tok = tiny_lm("qwen2")
    engine = Engine(model, tok)
    params = SamplingParams(max_tokens=8)
    ids = engine.encode(HUMANEVAL)
    proc = build({}, engine.decoder_context(ids, params, prompt_text=HUMANEVAL))
    assert proc.lame.rule == "doctest" and list(proc.lame.ids) == engine.encode(drop_doctests(HUMANEVAL))
    assert proc.lame.removed_tokens > 10
    proc = build({}, engine.decoder_context(engine.encode(MBPP), params, prompt_text=MBPP))
    assert proc.lame.rule == "test_asserts"
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "2+2"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3"}]
    chat_ids = engine.chat_prompt(messages)
    proc = build({}, engine.decoder_context(chat_ids, params, messages=messages))
    assert proc.lame.rule == "chat_examples"
    assert list(proc.lame.ids) == engine.chat_prompt([messages[0], messages[-1]])
    proc = build({"lame_prompt": "3+3"}, engine.decoder_context(chat_ids, params, messages=messages))
    assert proc.lame.rule == "client_text"
    assert list(proc.lame.ids) == engine.chat_prompt([messages[0], {"role": "user", "content": "3+3"}])
    # chat without example turns: the code rules look at the final user message
    code_chat = [{"role": "user", "content": HUMANEVAL}]
    proc = build({}, engine.decoder_context(engine.chat_prompt(code_chat), params, messages=code_chat))
    assert proc.lame.rule == "doctest"


@pytest.mark.parametrize(
    ("options", "kind", "words"),
    [
        ({}, "plain text", "no examples"),
        ({}, "ids", "token-id prompt"),
        ({}, "chat", "no few-shot examples"),
        ({"lame_prompt": "same"}, "same", "equals the prompt"),
        ({"lame_prompt": [10**7]}, "plain text", "token ids must be in"),
    ],
)
def test_no_usable_lame_prompt_is_an_error_naming_lame_prompt(tiny_lm, options: dict, kind: str, words: str) -> None:
    model, tok = tiny_lm("gpt2")
    engine = Engine(model, tok)
    params = SamplingParams(max_tokens=8)
    text = "same" if kind == "same" else "just a sentence."
    if kind == "chat":
        messages = [{"role": "user", "content": text}]
        ctx = engine.decoder_context(engine.chat_prompt(messages), params, messages=messages)
    else:
        ctx = engine.decoder_context(engine.encode(text), params, prompt_text=None if kind == "ids" else text)
    with pytest.raises(UscdOptionError, match=words) as e:
        build(options, ctx)
    assert e.value.param == "promptwire.decoder.lame_prompt"


def test_alpha_zero_changes_nothing(tiny_lm) -> None:
    """α = 0 in log mode without the plausibility cut is the plain distribution: greedy equals plain."""
    model, tok = tiny_lm("gpt2")
    main, lame = _few_shot(tok)
    engine = Engine(model, tok)
    params = SamplingParams(max_tokens=12, temperature=0)
    plain = engine.generate(main, params).token_ids
    proc = build({"alpha": 0, "mode": "log", "plausibility": 0, "measure": "top1", "threshold": 1.0,
                  "lame_prompt": lame}, engine.decoder_context(main, params))
    res = engine.generate(main, params, proc)
    assert res.token_ids == plain and res.processor_stats["contrasted_steps"] == len(plain)
    assert not math.isnan(res.processor_stats["contrasted_fraction"])
