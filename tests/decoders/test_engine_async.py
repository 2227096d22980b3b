"""Decode engine asyncio API: results equal the sync path, the loop stays responsive, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from decoders.engine import Engine, EngineConfig, EngineError, SamplingParams
from decoders.processor import Processor
from decoders.tiny import corpus
from tests.support.wait import until_async


@pytest.fixture
def engine(tiny_lm):
    model, tok = tiny_lm("gpt2")
    eng = Engine(model, tok, EngineConfig(max_batch_size=4))
    yield eng
    eng.close()


async def test_concurrent_agenerate_equals_sync(engine) -> None:
    tok = engine.tokenizer
    ids = [tok(t)["input_ids"] for t in corpus(seed=21, n=8)]
    params = SamplingParams(max_tokens=10, temperature=0)
    expected = [Engine(engine.model, tok).generate(p, params).token_ids for p in ids]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    results = await asyncio.gather(*(engine.agenerate(p, params) for p in ids))
    tick_task.cancel()
    assert [r.token_ids for r in results] == expected
    assert ticks > 5  # the event loop kept running while the engine thread decoded


async def test_stream_deltas_concatenate_to_result(engine) -> None:
    ids = engine.encode("café 東京 model")
    params = SamplingParams(max_tokens=24, temperature=0.9, seed=3, ignore_eos=True)
    deltas = [d async for d in engine.stream(ids, params)]
    final = deltas[-1]
    assert final.finish_reason == "length" and final.usage is not None
    assert final.usage.completion_tokens == 24 == sum(len(d.token_ids) for d in deltas)
    assert all(d.finish_reason is None for d in deltas[:-1])
    again = await engine.agenerate(ids, params)
    assert "".join(d.text for d in deltas) == again.text


async def test_closing_the_stream_cancels_and_frees_the_row(engine) -> None:
    ids = engine.encode("the model")
    stream = engine.stream(ids, SamplingParams(max_tokens=900, temperature=0, ignore_eos=True))
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.aclose()
    await until_async(lambda: engine.running_requests == 0, "the row to be freed")
    assert engine.running_requests == 0 and engine.waiting_requests == 0


async def test_cancelled_task_cancels_request(engine) -> None:
    ids = engine.encode("gateway decode")
    task = asyncio.create_task(engine.agenerate(ids, SamplingParams(max_tokens=900, ignore_eos=True)))
    await until_async(lambda: engine.running_requests > 0, "the request to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until_async(lambda: engine.running_requests == 0, "the row to be freed")
    assert engine.running_requests == 0


async def test_processor_error_fails_only_its_request(engine) -> None:
    class Broken(Processor):
        def allowed_token_ids(self):
            raise RuntimeError("boom")

    ids = engine.encode("the model")
    ok = asyncio.create_task(engine.agenerate(ids, SamplingParams(max_tokens=6, temperature=0)))
    with pytest.raises(EngineError, match="boom"):
        await engine.agenerate(ids, SamplingParams(max_tokens=6), Broken())
    assert len((await ok).token_ids) > 0
