"""The DECODERS table and the processor base class defaults."""

from __future__ import annotations

import pytest
import torch

from decoders.processors import DECODERS, DecoderContext, DecoderOptionError, Processor, build_processor


def test_unknown_decoder_is_rejected_with_param() -> None:
    ctx = DecoderContext(tokenizer=None, vocab_size=10, eos_token_ids=frozenset({0}), prompt_ids=(1,), max_new_tokens=4)
    with pytest.raises(DecoderOptionError) as info:
        build_processor("no-such-decoder", {}, ctx)
    assert info.value.param == "promptwire.decoder.name" and isinstance(info.value, ValueError)
    assert "trie" in str(info.value)


def test_table_holds_only_callables_by_name() -> None:
    assert DECODERS and all(isinstance(k, str) and callable(v) for k, v in DECODERS.items())


def test_base_processor_defaults_are_unconstrained() -> None:
    p = Processor()
    logits = torch.randn(7)
    assert p.aux_prompt_ids() is None
    assert p.process(logits, None) is logits
    assert p.allowed_token_ids() is None and p.eos_allowed() and not p.finished()
    p.advance(3)
    assert dict(p.stats()) == {}
