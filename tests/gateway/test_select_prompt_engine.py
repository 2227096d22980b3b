"""IDP on the decode engine: selection through the exclusive model call, generation with the chosen prefix."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from decoders.engine import Engine, EngineConfig, SamplingParams
from decoders.tiny import build_tiny_causal_lm
from gateway.stages.select_prompt.attention import choose, idp_scores
from tests.support.idp import random_pool

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("llama"), "llama", seed=0)


@pytest.fixture
async def engine(llama_dir: Path) -> AsyncIterator[Engine]:
    eng = Engine.from_pretrained(str(llama_dir), EngineConfig(device="cpu", dtype="float32"))
    eng.start()
    yield eng
    await asyncio.to_thread(eng.close)


def prepended_generate(model: Any, prompt: torch.Tensor, ids: list[int], n: int) -> list[int]:
    """Plain prompt tuning: ``generate`` with the soft prompt's embeddings before the input's."""
    with torch.no_grad():
        x = torch.cat([prompt, model.get_input_embeddings()(torch.tensor(ids))])[None]  # (1, n+T, d)
        out = model.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return [int(t) for t in out[0]]


async def test_one_prompt_pool_equals_plain_prompt_tuning(engine: Engine) -> None:
    pool = random_pool(1, 5, engine.hidden_size, seed=7)
    for text in ("the model answer", "東京 café 42", "def return class import print"):
        ids = engine.encode(text)
        scores = await engine.arun_exclusive(lambda model, ids=ids: idp_scores(model, pool, ids))
        i = choose(scores)
        assert i == 0
        result = await engine.agenerate(ids, GREEDY, soft_prompt=pool[i])
        assert list(result.token_ids) == prepended_generate(engine.model, pool[0], ids, GREEDY.max_tokens)


async def test_chosen_prompt_is_what_generation_gets_and_running_requests_are_undisturbed(engine: Engine) -> None:
    pool = random_pool(4, 3, engine.hidden_size, seed=8)
    ids = engine.encode("prompt token label answer")
    other = engine.encode("the gateway decode stream")
    alone = (await engine.agenerate(other, GREEDY)).token_ids
    # a generation in flight while selections run between its decode steps
    running = asyncio.create_task(engine.agenerate(other, GREEDY))
    picks = await asyncio.gather(*(engine.arun_exclusive(lambda model: idp_scores(model, pool, ids)) for _ in range(3)))
    assert (await running).token_ids == alone
    assert all(torch.equal(p, picks[0]) for p in picks)
    i = choose(picks[0])
    assert picks[0][i] == picks[0].max()
    result = await engine.agenerate(ids, GREEDY, soft_prompt=pool[i])
    assert list(result.token_ids) == prepended_generate(engine.model, pool[i], ids, GREEDY.max_tokens)
    assert engine.model.config._attn_implementation != "eager"  # the engine's kernel is back
