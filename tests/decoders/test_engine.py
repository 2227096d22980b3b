"""Decode engine: greedy equals model.generate, batching, seeds, stop strings, processors, aux streams."""

from __future__ import annotations

import math

import pytest
import torch

from decoders.engine import Engine, EngineConfig, SamplingParamError, SamplingParams
from decoders.processor import Processor
from decoders.tiny import corpus


def reference(model, ids: list[int], max_new: int, **kwargs) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False, **kwargs)
    return out[0, len(ids):].tolist()


def prompts(tok, n: int, seed: int = 7) -> list[list[int]]:
    return [tok(text)["input_ids"] for text in corpus(seed=seed, n=n)]


@pytest.mark.parametrize(("family", "n"), [("gpt2", 50), ("llama", 50), ("qwen2", 8)])
def test_greedy_equals_generate_batched_and_alone(tiny_lm, family: str, n: int) -> None:
    model, tok = tiny_lm(family)
    ids = prompts(tok, n)
    # varied budgets so requests leave (and waiting ones join) at different steps
    budgets = [3 + (i * 5) % 8 for i in range(n)]
    refs = [reference(model, p, m) for p, m in zip(ids, budgets, strict=True)]
    assert sum(len(r) for r in refs) > 4 * n  # outputs are not all immediate EOS

    batched = Engine(model, tok, EngineConfig(max_batch_size=6))
    handles = [batched.submit(p, SamplingParams(max_tokens=m, temperature=0)) for p, m in zip(ids, budgets, strict=True)]
    got = [list(h.result().token_ids) for h in handles]
    assert got == refs

    alone = Engine(model, tok, EngineConfig(max_batch_size=1))
    got_alone = [list(alone.generate(p, SamplingParams(max_tokens=m, temperature=0)).token_ids)
                 for p, m in zip(ids, budgets, strict=True)]
    assert got_alone == refs


def test_usage_finish_reason_and_text(tiny_lm) -> None:
    model, tok = tiny_lm("gpt2")
    engine = Engine(model, tok)
    ids = prompts(tok, 1)[0]
    res = engine.generate(ids, SamplingParams(max_tokens=9, temperature=0, ignore_eos=True))
    assert res.finish_reason == "length"
    assert res.usage.prompt_tokens == len(ids)
    assert res.usage.completion_tokens == len(res.token_ids) == 9
    assert res.text == tok.decode(list(res.token_ids), skip_special_tokens=True)


def test_eos_stops_and_is_counted(tiny_lm) -> None:
    model, tok = tiny_lm("gpt2")
    engine = Engine(model, tok)
    eos = tok.eos_token_id

    class ForceEosAfter(Processor):
        def __init__(self) -> None:
            self.n = 0

        def allowed_token_ids(self):
            return [] if self.n >= 3 else None

        def advance(self, token_id: int) -> None:
            self.n += 1

    res = engine.generate(prompts(tok, 1)[0], SamplingParams(max_tokens=20, temperature=0), ForceEosAfter())
    assert res.finish_reason == "stop"
    assert res.token_ids[-1] == eos and len(res.token_ids) == 4
    assert res.usage.completion_tokens == 4


def test_seeded_sampling_is_reproducible_and_independent_of_batch(tiny_lm) -> None:
    model, tok = tiny_lm("llama")
    ids = prompts(tok, 6)
    params = SamplingParams(max_tokens=16, temperature=1.3, top_p=0.95, top_k=50, seed=1234, ignore_eos=True)
    alone = Engine(model, tok).generate(ids[0], params).token_ids
    engine = Engine(model, tok, EngineConfig(max_batch_size=8))
    others = [engine.submit(p, SamplingParams(max_tokens=16, temperature=1.0, seed=i)) for i, p in enumerate(ids[1:])]
    same = engine.submit(ids[0], params)
    assert same.result().token_ids == alone
    for h in others:
        h.result()
    other_seed = Engine(model, tok).generate(ids[0], SamplingParams(**{**params.__dict__, "seed": 99}))
    assert other_seed.token_ids != alone


def test_stop_string_truncates_text_and_stream(tiny_lm) -> None:
    model, tok = tiny_lm("gpt2")
    engine = Engine(model, tok)
    ids = prompts(tok, 1, seed=3)[0]
    full = engine.generate(ids, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)).text
    assert len(full) > 12
    stop = full[8:11]
    expected = full[: full.find(stop)]
    deltas = []
    handle = engine.submit(ids, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop=("\x00zz", stop)),
                           on_event=deltas.append)
    res = handle.result()
    assert res.finish_reason == "stop" and res.stop == stop
    assert res.text == expected
    assert "".join(d.text for d in deltas) == expected
    assert all(stop not in d.text for d in deltas)
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == len(res.token_ids)


class Force(Processor):
    """Allows exactly one id per step: the next one of a fixed sequence (then only EOS)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.i = 0

    def allowed_token_ids(self):
        return self.ids[self.i : self.i + 1]

    def eos_allowed(self) -> bool:
        return self.i >= len(self.ids)

    def advance(self, token_id: int) -> None:
        if self.i < len(self.ids):
            assert token_id == self.ids[self.i]
        self.i += 1


def byte_level_ids(tok, text: str) -> list[int]:
    """One token per UTF-8 byte (GPT-2 byte-to-unicode alphabet), splitting every multi-byte char."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, [chr(c) for c in cs], strict=True))
    return [tok.convert_tokens_to_ids(table[b]) for b in text.encode()]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_streamed_deltas_hold_back_partial_utf8(tiny_lm, family: str) -> None:
    model, tok = tiny_lm(family)
    engine = Engine(model, tok)
    target = "Hello café 東京 😀 naïve ✨"
    if family == "gpt2":
        forced, expected = byte_level_ids(tok, target), target
    else:  # SentencePiece: keep "▁" pieces, spell every multi-byte char as <0xNN> byte-fallback tokens
        forced = []
        for piece in tok.convert_ids_to_tokens(tok(target, add_special_tokens=False)["input_ids"]):
            if piece.replace("▁", "").isascii():
                forced.append(tok.convert_tokens_to_ids(piece))
                continue
            if piece.startswith("▁"):
                forced.append(tok.convert_tokens_to_ids("▁"))
            forced += [tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in piece.lstrip("▁").encode()]
        expected = " " + target
    deltas = []
    prompt = tok("the model")["input_ids"]
    res = engine.submit(prompt, SamplingParams(max_tokens=64, temperature=0), Force(forced),
                        on_event=deltas.append).result()
    assert res.finish_reason == "stop"
    assert all("\ufffd" not in d.text for d in deltas)
    assert "".join(d.text for d in deltas) == res.text == expected
    assert sum(1 for d in deltas if d.text == "") > 3  # bytes really were held back


def test_banning_processor_matches_generate_suppress_tokens(tiny_lm) -> None:
    model, tok = tiny_lm("gpt2")
    ids = prompts(tok, 4, seed=11)
    plain = [reference(model, p, 12) for p in ids]
    banned = sorted({t for r in plain for t in r[:3]})

    class Ban(Processor):
        def process(self, logits, aux_logits):
            logits[banned] = -math.inf
            return logits

    engine = Engine(model, tok, EngineConfig(max_batch_size=4))
    handles = [engine.submit(p, SamplingParams(max_tokens=12, temperature=0), Ban()) for p in ids]
    got = [list(h.result().token_ids) for h in handles]
    assert all(t not in banned for r in got for t in r)
    assert got == [reference(model, p, 12, suppress_tokens=banned) for p in ids]
    assert got != plain


def test_allowed_set_is_respected_under_sampling(tiny_lm) -> None:
    model, tok = tiny_lm("qwen2")
    allowed = list(range(100, 140))

    class Allow(Processor):
        def allowed_token_ids(self):
            return allowed

        def eos_allowed(self) -> bool:
            return False

    engine = Engine(model, tok, EngineConfig(max_batch_size=8))
    handles = [engine.submit(p, SamplingParams(max_tokens=10, temperature=1.5, seed=i), Allow())
               for i, p in enumerate(prompts(tok, 6))]
    outs = [h.result().token_ids for h in handles]
    assert all(len(o) == 10 and set(o) <= set(allowed) for o in outs)
    assert len({t for o in outs for t in o}) > 5


class AuxRecorder(Processor):
    """Opens an aux stream and records its logits at every ``every``-th step."""

    def __init__(self, aux: list[int], lazy: bool = False, every: int = 1) -> None:
        self.aux = aux
        self.aux_lazy = lazy
        self.every = every
        self.seen: list[tuple[int, torch.Tensor]] = []
        self.tokens: list[int] = []
        self.forwards = 0

    def aux_prompt_ids(self):
        return self.aux

    def process(self, logits, aux):
        if len(self.tokens) % self.every == 0:
            self.seen.append((len(self.tokens), aux.logits().clone()))
            assert aux.logits() is aux.logits()  # asked twice in a step: one forward
        self.forwards = aux.forwards
        return logits

    def advance(self, token_id: int) -> None:
        self.tokens.append(token_id)


@pytest.mark.parametrize(("family", "lazy", "every"), [("llama", False, 1), ("gpt2", False, 1), ("llama", True, 3),
                                                       ("gpt2", True, 1), ("qwen2", True, 4)])
def test_aux_stream_runs_in_lockstep_on_generated_tokens(tiny_lm, family: str, lazy: bool, every: int) -> None:
    model, tok = tiny_lm(family)
    ids = prompts(tok, 6, seed=5)
    engine = Engine(model, tok, EngineConfig(max_batch_size=5))
    recs = [AuxRecorder(ids[(i + 3) % 6][:-1], lazy, every) for i in range(3)]
    with_aux = [engine.submit(ids[i], SamplingParams(max_tokens=8, temperature=0), recs[i]) for i in range(3)]
    plain = [engine.submit(ids[i], SamplingParams(max_tokens=8, temperature=0)) for i in range(3, 6)]
    results = [h.result() for h in with_aux + plain]
    for i, res in enumerate(results):
        assert list(res.token_ids) == reference(model, ids[i], 8)  # aux rows do not disturb the main ones
    for rec, res in zip(recs, results[:3], strict=True):
        assert rec.tokens == list(res.token_ids)
        asked = [t for t in range(len(res.token_ids)) if t % every == 0]
        assert [t for t, _ in rec.seen] == asked
        assert res.usage.aux_prompt_tokens == len(rec.aux)
        if lazy:  # one catch-up forward per step that asked, none on the others
            assert rec.forwards == len(asked)
        for t, aux_logits in rec.seen:
            seq = torch.tensor([rec.aux + list(res.token_ids[:t])])
            with torch.no_grad():
                expect = model(seq).logits[0, -1].float()
            torch.testing.assert_close(aux_logits, expect, atol=1e-4, rtol=1e-4)


def test_lazy_aux_stream_never_asked_runs_no_forward(tiny_lm) -> None:
    model, tok = tiny_lm("gpt2")
    ids = prompts(tok, 1, seed=5)[0]

    class NeverAsks(AuxRecorder):
        def process(self, logits, aux):
            self.forwards = aux.forwards
            return logits

    rec = NeverAsks(ids[:-2], lazy=True)
    res = Engine(model, tok).generate(ids, SamplingParams(max_tokens=6, temperature=0), rec)
    assert res.usage.aux_prompt_tokens == 0 and rec.forwards == 0
    assert list(res.token_ids) == reference(model, ids, 6)


def test_top_logprobs(tiny_lm) -> None:
    model, tok = tiny_lm("llama")
    engine = Engine(model, tok)
    ids = prompts(tok, 1)[0]
    res = engine.generate(ids, SamplingParams(max_tokens=3, temperature=0, top_logprobs=5))
    assert len(res.logprobs) == len(res.token_ids)
    with torch.no_grad():
        expect = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    first = res.logprobs[0]
    assert first.token_id == res.token_ids[0] == first.top[0][0]
    assert first.logprob == pytest.approx(float(expect.max()), abs=1e-4)
    assert [t[0] for t in first.top] == torch.topk(expect, 5).indices.tolist()
    assert all(a[2] >= b[2] for a, b in zip(first.top, first.top[1:], strict=False))


def test_cancel_frees_the_slot(tiny_lm) -> None:
    model, tok = tiny_lm("gpt2")
    engine = Engine(model, tok, EngineConfig(max_batch_size=1))
    ids = prompts(tok, 2)
    long = engine.submit(ids[0], SamplingParams(max_tokens=500, ignore_eos=True, temperature=0))
    short = engine.submit(ids[1], SamplingParams(max_tokens=3, temperature=0))
    for _ in range(3):
        engine.step()
    assert engine.running_requests == 1 and engine.waiting_requests == 1
    long.cancel()
    engine.step()  # the cancelled row is gone and the waiting request took its place
    assert long.done and long.result().finish_reason == "cancelled"
    assert long.result().usage.completion_tokens == 3
    assert short.result().finish_reason in {"length", "stop"}
    assert engine.running_requests == 0 and engine.waiting_requests == 0


def test_invalid_params_name_the_field(tiny_lm) -> None:
    model, tok = tiny_lm("gpt2")
    engine = Engine(model, tok)
    bad = {
        "temperature": {"temperature": -0.5},
        "top_p": {"top_p": 0.0},
        "top_k": {"top_k": -3},
        "max_tokens": {"max_tokens": 0},
        "stop": {"stop": ("",)},
        "top_logprobs": {"top_logprobs": 50},
        "seed": {"seed": 1.5},
    }
    for param, kwargs in bad.items():
        with pytest.raises(SamplingParamError) as info:
            engine.submit([1, 2], SamplingParams(**kwargs))
        assert info.value.param == param and isinstance(info.value, ValueError)
    with pytest.raises(SamplingParamError) as info:
        engine.submit([], SamplingParams())
    assert info.value.param == "prompt"
    with pytest.raises(SamplingParamError) as info:
        engine.submit([5] * engine.max_context, SamplingParams())
    assert info.value.param == "prompt"
    with pytest.raises(SamplingParamError) as info:
        engine.submit([5, engine.vocab_size], SamplingParams())
    assert info.value.param == "prompt"


def test_max_tokens_clamped_to_context(tiny_lm) -> None:
    model, tok = tiny_lm("gpt2")
    engine = Engine(model, tok, EngineConfig(max_context=40))
    res = engine.generate(list(range(10, 45)), SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))
    assert res.finish_reason == "length" and len(res.token_ids) == 5
