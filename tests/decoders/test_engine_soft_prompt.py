"""Soft prompts: embedding vectors before the prompt; greedy equals model.generate(inputs_embeds=...)."""

from __future__ import annotations

import pytest
import torch

from decoders.engine import Engine, EngineConfig, SamplingParamError, SamplingParams
from decoders.tiny import corpus


def soft_prompts(model, n: int, seed: int) -> list[torch.Tensor]:
    """n soft prompts of 1..6 vectors, scaled like the model's own embeddings."""
    gen = torch.Generator().manual_seed(seed)
    table = model.get_input_embeddings().weight.detach()
    scale = float(table.std())
    return [torch.randn(1 + i % 6, table.shape[1], generator=gen) * scale for i in range(n)]


@torch.no_grad()
def reference(model, soft: torch.Tensor, ids: list[int], max_new: int) -> list[int]:
    embeds = torch.cat([soft, model.get_input_embeddings()(torch.tensor(ids))])[None]  # (1, S+T, d)
    out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                         max_new_tokens=max_new, do_sample=False)
    return out[0].tolist()  # decoder-only + inputs_embeds: only the new tokens come back


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_soft_prompt_greedy_equals_generate_alone_and_batched(tiny_lm, family: str) -> None:
    model, tok = tiny_lm(family)
    texts = corpus(seed=31, n=20)
    ids = [tok(t)["input_ids"] for t in texts]
    softs = soft_prompts(model, 20, seed=4)
    budgets = [2 + (i * 3) % 7 for i in range(20)]
    refs = [reference(model, s, p, m) for s, p, m in zip(softs, ids, budgets, strict=True)]
    plain = [list(Engine(model, tok).generate(p, SamplingParams(max_tokens=m, temperature=0)).token_ids)
             for p, m in zip(ids[:5], budgets[:5], strict=True)]
    assert plain != refs[:5]  # the soft prompt really changes the output

    alone = Engine(model, tok, EngineConfig(max_batch_size=1))
    got = [list(alone.generate(p, SamplingParams(max_tokens=m, temperature=0), soft_prompt=s).token_ids)
           for s, p, m in zip(softs, ids, budgets, strict=True)]
    assert got == refs

    batched = Engine(model, tok, EngineConfig(max_batch_size=6))
    handles = []
    for i, (s, p, m) in enumerate(zip(softs, ids, budgets, strict=True)):
        handles.append(batched.submit(p, SamplingParams(max_tokens=m, temperature=0), soft_prompt=s))
        if i % 4 == 0:  # requests without a soft prompt share the batch
            handles.append(batched.submit(p, SamplingParams(max_tokens=m, temperature=0)))
    results = [h.result() for h in handles]
    got_batched = [list(r.token_ids) for r, h in zip(results, handles, strict=True) if h._req.soft_prompt is not None]
    assert got_batched == refs
    assert results[0].usage.prompt_tokens == len(ids[0]) + softs[0].shape[0]  # soft vectors are prompt positions


def test_bad_soft_prompts_name_the_parameter(tiny_lm) -> None:
    model, tok = tiny_lm("gpt2")
    engine = Engine(model, tok)
    d = engine.hidden_size
    for bad in (torch.zeros(3), torch.zeros(2, d + 1), torch.full((1, d), float("nan")), [[0.0] * d]):
        with pytest.raises(SamplingParamError) as e:
            engine.submit([1, 2], SamplingParams(max_tokens=2), soft_prompt=bad)
        assert e.value.param == "soft_prompt"
    with pytest.raises(SamplingParamError) as e:  # the soft prompt counts against the context
        engine.submit([1, 2], SamplingParams(max_tokens=2), soft_prompt=torch.zeros(engine.max_context, d))
    assert e.value.param == "prompt"
