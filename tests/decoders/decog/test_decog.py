"""The decog decoder on the engine: options and errors, compliance, caching, pruning, budgets."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from decoders.decog.evaluate import generate_many, summarize
from decoders.decog.hmm import HMM, tokenizer_fingerprint
from decoders.decog.processor import build_decog
from decoders.decog.steer import DecogProcessor, MaskProcessor
from decoders.engine import Engine, EngineConfig, SamplingParams
from decoders.formats import compile_format, template_regex
from decoders.processor import DecoderOptionError

FORMATS = {
    "gsm8k": "#### {int}",
    "judge": "Score: {choice:1|2|3|4|5}",
    "answer_confidence": "Answer: {int}\nConfidence: {choice:low|medium|high}",
    "event": "Event: {choice:attack|meeting|election}\nAgent: {text:6}\nPlace: {text:4}\nTime: {int}",
    "number": "{number}",
}
REGEXES = {"email": r"[a-z]{1,8}@[a-z]{1,6}\.(com|org)", "date": r"\d{4}-\d{2}-\d{2}"}


@pytest.fixture
def setup(tiny_lm: Callable[[str], tuple[Any, Any]], tiny_hmm: Callable[[str], HMM]
          ) -> Callable[[str], tuple[Engine, list[int], dict[str, HMM]]]:
    made: dict[str, tuple[Engine, list[int], dict[str, HMM]]] = {}

    def get(family: str) -> tuple[Engine, list[int], dict[str, HMM]]:
        if family not in made:
            model, tok = tiny_lm(family)
            engine = Engine(model, tok, EngineConfig(max_batch_size=32))
            prompt = engine.chat_prompt([{"role": "user", "content": "Answer in the requested format."}])
            made[family] = (engine, prompt, {"tiny": tiny_hmm(family)})
        return made[family]

    return get


def _build(engine: Engine, prompt: list[int], hmms: Mapping[str, HMM], options: Mapping[str, Any],
           max_tokens: int = 48) -> DecogProcessor:
    ctx = engine.decoder_context(prompt, SamplingParams(max_tokens=max_tokens))
    return build_decog(options, ctx, hmms)


@pytest.mark.parametrize(
    "options,param",
    [
        ({"format": {"template": "{int}"}, "hmm": "tiny", "color": 1}, "promptwire.decoder.color"),
        ({"format": "{int}", "hmm": "tiny"}, "promptwire.decoder.format"),
        ({"format": {"template": "{int}", "regex": "a"}, "hmm": "tiny"}, "promptwire.decoder.format"),
        ({"format": {"json": "{}"}, "hmm": "tiny"}, "promptwire.decoder.format"),
        ({"format": {"template": 3}, "hmm": "tiny"}, "promptwire.decoder.format.template"),
        ({"format": {"template": "{int}"}}, "promptwire.decoder.hmm"),
        ({"format": {"template": "{int}"}, "hmm": "nope"}, "promptwire.decoder.hmm"),
        ({"format": {"template": "{int}"}, "hmm": "tiny", "prune_top_k": 0}, "promptwire.decoder.prune_top_k"),
        ({"format": {"template": "{int}"}, "hmm": "tiny", "prune_top_k": True}, "promptwire.decoder.prune_top_k"),
        ({"format": {"template": "{bogus}"}, "hmm": "tiny"}, "promptwire.decoder.format.template"),
        ({"format": {"template": "{text:3}, then"}, "hmm": "tiny"}, "promptwire.decoder.format.template"),
        ({"format": {"regex": "(?=x)y"}, "hmm": "tiny"}, "promptwire.decoder.format.regex"),
        ({"format": {"regex": "(a"}, "hmm": "tiny"}, "promptwire.decoder.format.regex"),
        ({"format": {"template": "x" * 60 + " {int}"}, "hmm": "tiny"}, "promptwire.decoder.format.template"),
    ],
)
def test_bad_options_name_the_parameter(setup: Any, options: dict[str, Any], param: str) -> None:
    engine, prompt, hmms = setup("gpt2")
    with pytest.raises(DecoderOptionError) as info:
        _build(engine, prompt, hmms, options, max_tokens=32)
    assert info.value.param == param, str(info.value)


def test_too_long_format_message_names_max_tokens(setup: Any) -> None:
    engine, prompt, hmms = setup("gpt2")
    with pytest.raises(DecoderOptionError, match="max_tokens=4"):
        _build(engine, prompt, hmms, {"format": {"template": "Score: {choice:1|2}"}, "hmm": "tiny"}, max_tokens=4)


@pytest.mark.parametrize("name", list(FORMATS) + list(REGEXES))
def test_every_output_complies(setup: Any, name: str) -> None:
    engine, prompt, hmms = setup("gpt2")
    kind, source = ("template", FORMATS[name]) if name in FORMATS else ("regex", REGEXES[name])
    options = {"format": {kind: source}, "hmm": "tiny"}
    results = generate_many(engine, prompt, lambda: _build(engine, prompt, hmms, options), n=16, max_tokens=48)
    pattern = template_regex(source) if kind == "template" else source
    dfa = compile_format(kind, source, engine.tokenizer)
    summary, outcomes = summarize(results, engine.model, prompt, pattern, dfa, engine.eos_token_ids)
    assert summary.compliance == 1.0, [o.text for o in outcomes if not o.compliant]
    stats = results[-1].processor_stats
    assert stats["dfa_states"] == dfa.num_states and stats["hidden_states"] == 32
    assert stats["table_cached"] is True and stats["mass_kept"] == 1.0 and stats["table_build_ms"] > 0


def test_llama_tokenizer_outputs_comply(tiny_lm: Callable[[str], tuple[Any, Any]]) -> None:
    # SentencePiece-style pieces ("▁" for spaces, byte fallback); compliance needs no trained HMM.
    model, tok = tiny_lm("llama")
    engine = Engine(model, tok, EngineConfig(max_batch_size=32))
    prompt = engine.chat_prompt([{"role": "user", "content": "Answer."}])
    hmms = {"tiny": HMM.random(16, len(tok), tok.eos_token_id, tokenizer_fingerprint(tok))}
    source = FORMATS["answer_confidence"]
    results = generate_many(engine, prompt, lambda: _build(engine, prompt, hmms, {"format": {"template": source},
                                                                                   "hmm": "tiny"}), n=12, max_tokens=40)
    for r in results:
        assert re.fullmatch(template_regex(source), r.text), r.text


def test_table_is_built_once_and_larger_buckets_serve_smaller_budgets(setup: Any) -> None:
    engine, prompt, hmms = setup("gpt2")
    options = {"format": {"template": "Answer: {int} ({choice:sure|unsure})"}, "hmm": "tiny"}
    first = _build(engine, prompt, hmms, options, max_tokens=100)
    again = _build(engine, prompt, hmms, options, max_tokens=70)  # same bucket (128)
    smaller = _build(engine, prompt, hmms, options, max_tokens=20)  # bucket 32 absent, 128 present
    assert not first.stats()["table_cached"] and again.stats()["table_cached"] and smaller.stats()["table_cached"]
    assert first.table is again.table is smaller.table
    other = _build(engine, prompt, hmms, {**options, "format": {"template": "Answer: {int}"}}, max_tokens=100)
    assert not other.stats()["table_cached"]


def test_pruning_keeps_compliance_and_reports_mass(setup: Any) -> None:
    engine, prompt, hmms = setup("gpt2")
    source = FORMATS["answer_confidence"]
    options = {"format": {"template": source}, "hmm": "tiny", "prune_top_k": 4}
    results = generate_many(engine, prompt, lambda: _build(engine, prompt, hmms, options), n=12, max_tokens=40)
    for r in results:
        assert re.fullmatch(template_regex(source), r.text), r.text
        stats = r.processor_stats
        assert stats["prune_top_k"] == 4 and 0 < stats["mass_kept_min"] <= stats["mass_kept"] < 1


def test_budget_exactly_the_shortest_output(setup: Any) -> None:
    engine, prompt, hmms = setup("gpt2")
    source = "Score: {choice:1|2|3|4|5}"
    fewest = compile_format("template", source, engine.tokenizer).min_tokens
    options = {"format": {"template": source}, "hmm": "tiny"}
    results = generate_many(engine, prompt, lambda: _build(engine, prompt, hmms, options, fewest), n=8,
                            max_tokens=fewest)
    assert all(re.fullmatch(template_regex(source), r.text) for r in results), [r.text for r in results]


def test_hmm_lookahead_beats_the_hard_mask_on_likelihood(setup: Any) -> None:
    engine, prompt, hmms = setup("gpt2")
    source = FORMATS["answer_confidence"]
    options = {"format": {"template": source}, "hmm": "tiny"}
    dfa = compile_format("template", source, engine.tokenizer)
    decog = generate_many(engine, prompt, lambda: _build(engine, prompt, hmms, options), n=24, max_tokens=48)
    mask_index = _build(engine, prompt, hmms, options).index
    mask = generate_many(engine, prompt, lambda: MaskProcessor(mask_index, engine.eos_token_ids, 48), n=24,
                         max_tokens=48)
    pattern = template_regex(source)
    s_decog, _ = summarize(decog, engine.model, prompt, pattern, dfa, engine.eos_token_ids, 48)
    s_mask, _ = summarize(mask, engine.model, prompt, pattern, dfa, engine.eos_token_ids, 48)
    assert s_decog.compliance == s_mask.compliance == 1.0
    assert s_decog.mean_log_prob > s_mask.mean_log_prob, (s_decog, s_mask)
