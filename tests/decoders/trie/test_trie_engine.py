"""The trie decoder inside the engine: batched results equal alone ones (given seeds), and all are labels."""

from __future__ import annotations

import pytest

from decoders.engine import Engine, EngineConfig, SamplingParams
from decoders.trie import build

LABELS = ["Positive", "Negative", "Neutral", "Pos", "日本語", "naïve café", "😀 emoji", "model", "a", "ab"]
OPTIONS = [
    {"labels": LABELS},
    {"labels": LABELS, "mode": "any"},
    {"labels": LABELS, "separator": ", ", "max_labels": 3},
    {"labels": LABELS, "separator": "; ", "mode": "any"},
]
TEXTS = ["classify: café", "is this good? 東京", "label it", "x"]


def requests(engine: Engine, n: int) -> list[tuple[list[int], SamplingParams, dict]]:
    out = []
    for i in range(n):
        prompt = engine.chat_prompt([{"role": "user", "content": TEXTS[i % len(TEXTS)]}])
        out.append((prompt, SamplingParams(max_tokens=40, temperature=1.0, seed=1000 + i), OPTIONS[i % len(OPTIONS)]))
    return out


def valid(text: str, options: dict) -> bool:
    sep = options.get("separator")
    parts = text.split(sep) if sep else [text]
    return all(p in LABELS for p in parts) and len(set(parts)) == len(parts)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_batched_equals_alone_and_all_outputs_are_labels(tiny_lm, family: str) -> None:
    model, tok = tiny_lm(family)
    engine = Engine(model, tok, EngineConfig(max_batch_size=8))
    reqs = requests(engine, 16)  # 16 requests through 8 rows: rows join and leave between steps

    def proc(prompt, params, options):
        return build(options, engine.decoder_context(prompt, params))

    alone = [engine.generate(p, s, proc(p, s, o)) for p, s, o in reqs]
    handles = [engine.submit(p, s, proc(p, s, o)) for p, s, o in reqs]
    batched = [h.result(timeout=120) for h in handles]
    for (_, _, options), a, b in zip(reqs, alone, batched, strict=True):
        assert b.token_ids == a.token_ids and b.text == a.text
        assert a.finish_reason == "stop" and a.token_ids[-1] in engine.eos_token_ids
        assert valid(a.text, options), a.text
        sep = options.get("separator")
        assert list(a.processor_stats["labels"]) == (a.text.split(sep) if sep else [a.text])
    assert len({a.text for a in alone}) > 3  # outputs vary across seeds
