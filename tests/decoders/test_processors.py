"""The processor API: base-class defaults, boolean masks, the per-model resource cache, torch-free imports."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from decoders.engine import Engine, SamplingParams
from decoders.processor import DecoderContext, DecoderOptionError, Processor
from decoders.resources import ResourceCache


def test_base_processor_defaults_are_unconstrained() -> None:
    p = Processor()
    logits = torch.randn(7)
    assert p.aux_prompt_ids() is None and p.aux_lazy is False
    assert p.process(logits, None) is logits
    assert p.allowed_token_ids() is None and p.eos_allowed() and not p.finished()
    p.advance(3)
    assert dict(p.stats()) == {}
    assert issubclass(DecoderOptionError, ValueError) and DecoderOptionError("x", "promptwire.decoder.a").param


def test_context_defaults_are_usable_without_an_engine() -> None:
    ctx = DecoderContext(tokenizer=None, vocab_size=10, eos_token_ids=frozenset({0}), prompt_ids=(1,), max_new_tokens=4)
    assert ctx.messages is None and ctx.soft_prompt_tokens == 0 and isinstance(ctx.resources, ResourceCache)
    with pytest.raises(NotImplementedError):
        ctx.encode("x")


def test_packages_import_without_torch() -> None:
    code = ("import sys; import decoders, decoders.processor, decoders.resources, decoders.trie, "
            "decoders.trie.labels, decoders.uscd, decoders.uscd.lame, decoders.uscd.options; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class Mask(Processor):
    """Allows the tokens of a fixed boolean mask (V,), never EOS."""

    def __init__(self, mask) -> None:
        self.mask = mask

    def allowed_token_ids(self):
        return self.mask

    def eos_allowed(self) -> bool:
        return False


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_boolean_mask_equals_the_same_id_list(tiny_lm, kind: str) -> None:
    model, tok = tiny_lm("llama")
    engine = Engine(model, tok)
    vocab = engine.vocab_size
    allowed = list(range(200, 260, 3))
    mask = np.zeros(vocab, dtype=bool)
    mask[allowed] = True
    as_mask = torch.from_numpy(mask) if kind == "torch" else mask
    ids = engine.encode("the model")
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=5)
    by_mask = engine.generate(ids, params, Mask(as_mask))
    by_ids = engine.generate(ids, params, Mask(allowed))
    assert by_mask.token_ids == by_ids.token_ids and set(by_mask.token_ids) <= set(allowed)


def test_mask_of_the_wrong_width_fails_the_request(tiny_lm) -> None:
    model, tok = tiny_lm("gpt2")
    engine = Engine(model, tok)
    with pytest.raises(Exception, match="shape"):
        engine.generate(engine.encode("x"), SamplingParams(max_tokens=3), Mask(torch.ones(5, dtype=torch.bool)))


def test_resource_cache_evicts_least_recently_used_by_bytes() -> None:
    cache = ResourceCache(100)
    built: list[str] = []

    def make(key: str, size: int):
        def build():
            built.append(key)
            return f"value {key}", size
        return build

    assert cache.get_or_build("a", make("a", 40)) == "value a"
    cache.get_or_build("b", make("b", 40))
    assert cache.get_or_build("a", make("a", 40)) == "value a"  # hit: a is now the most recent
    cache.get_or_build("c", make("c", 40))  # 120 > 100: b (least recent) goes
    assert "a" in cache and "c" in cache and "b" not in cache
    assert built == ["a", "b", "c"]
    st = cache.stats()
    assert (st.entries, st.bytes, st.hits, st.misses, st.evictions) == (2, 80, 1, 3, 1)
    big = cache.get_or_build("huge", make("huge", 500))  # larger than the budget: returned, not kept
    assert big == "value huge" and "huge" not in cache and cache.stats().bytes == 80
    arr = cache.get_or_build("arr", lambda: np.zeros(5, dtype=np.int64))  # sized by .nbytes
    assert arr.shape == (5,) and "a" not in cache and cache.stats().bytes == 80  # a, c, arr = 120: a goes
    with pytest.raises(TypeError):
        cache.get_or_build("bad", lambda: object())


def test_resource_cache_builds_once_under_concurrency_and_does_not_keep_failures() -> None:
    cache = ResourceCache(1 << 20)
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow():
        calls.append(1)
        started.set()
        release.wait()
        return "v", 10

    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(cache.get_or_build("k", slow)))
    first.start()
    started.wait()
    others = [threading.Thread(target=lambda: results.append(cache.get_or_build("k", slow))) for _ in range(4)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join()
    assert results == ["v"] * 5 and len(calls) == 1

    def boom():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get_or_build("x", boom)
    assert "x" not in cache and cache.get_or_build("x", lambda: ("ok", 1)) == "ok"
