"""The local provider and its engine: one thread runs the model, exclusive forwards, n > 1 streams, settings."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from decoders.tiny import build_tiny_causal_lm
from gateway.config.schema import LocalBackendConfig
from gateway.errors import InvalidRequest
from gateway.providers.local import LocalProvider
from gateway.types import ChatMessage, GatewayRequest

LABELS = ["billing", "bug", "bug report", "bugs", "feature request", "other", "Zürich office"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("engine_llama"), "llama", seed=3)


@pytest.fixture
async def provider(llama_dir: Path) -> AsyncIterator[LocalProvider]:
    p = LocalProvider("local", LocalBackendConfig(type="local", model_path=str(llama_dir), models=("tiny-llama",),
                                             max_batch_size=6))
    yield p
    await p.aclose()


def chat(text: str, *, stream: bool = False, decoder: dict[str, Any] | None = None, **params: Any) -> GatewayRequest:
    return GatewayRequest(request_id="r1", kind="chat", model="tiny-llama",
                          messages=(ChatMessage("user", text),), params=params, stream=stream, decoder=decoder)


def scoring() -> dict[str, Any]:
    return {"name": "trie", "labels": LABELS, "scoring": True}


async def test_only_the_engine_thread_calls_the_model_and_scores_are_identical(provider: LocalProvider) -> None:
    threads: set[str] = set()
    hook = provider.engine.model.register_forward_pre_hook(lambda m, a: threads.add(threading.current_thread().name))
    try:
        alone = (await provider.generate(chat("classify: my invoice", decoder=scoring()))).body
        # scoring while the engine decodes other requests (and other scorings) concurrently
        jobs = [provider.generate(chat(f"write {i}", temperature=1.0, seed=i, max_tokens=24)) for i in range(5)]
        jobs += [provider.generate(chat("classify: my invoice", decoder=scoring())) for _ in range(4)]
        out = await asyncio.gather(*jobs)
    finally:
        hook.remove()
    for resp in out[5:]:
        assert resp.body["promptwire"]["label_scores"] == alone["promptwire"]["label_scores"]  # bit for bit
    assert all(r.body["choices"][0]["message"]["content"] is not None for r in out[:5])
    assert threads == {"promptwire-engine"}


async def test_exclusive_forward_returns_logits_and_attentions(provider: LocalProvider, llama_dir: Path) -> None:
    ids = provider.encode("the model of a prompt")
    soft = torch.randn(3, provider.hidden_size) * 0.2
    embeds = torch.cat([soft, provider.embed(ids)])[None]  # (1, 3+T, d)
    out = await provider.forward(inputs_embeds=embeds, output_attentions=True)
    reference = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        want = reference(inputs_embeds=embeds, output_attentions=True)
    torch.testing.assert_close(out.logits, want.logits.float(), atol=1e-4, rtol=1e-4)
    assert out.attentions is not None and len(out.attentions) == 2
    assert out.attentions[0].shape == (1, 4, 3 + len(ids), 3 + len(ids))
    torch.testing.assert_close(out.attentions[1], want.attentions[1], atol=1e-5, rtol=1e-4)
    plain = await provider.forward(input_ids=torch.tensor([ids]))
    assert plain.attentions is None and plain.logits.shape == (1, len(ids), provider.engine.vocab_size)
    # decoding afterwards is unaffected (the model is back on its fast attention kernel)
    assert provider.engine.model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="engine thread"):
        provider.engine.forward(input_ids=torch.tensor([ids]))


async def test_fingerprint_is_stable_across_loads_and_changes_with_the_weights(provider: LocalProvider,
                                                                                llama_dir: Path, tmp_path: Path) -> None:
    again = LocalProvider("again", LocalBackendConfig(type="local", model_path=str(llama_dir)))
    other_dir = build_tiny_causal_lm(tmp_path / "other", "llama", seed=4)
    other = LocalProvider("other", LocalBackendConfig(type="local", model_path=str(other_dir)))
    try:
        assert len(provider.fingerprint) == 32 and again.fingerprint == provider.fingerprint
        assert other.fingerprint != provider.fingerprint
    finally:
        await again.aclose()
        await other.aclose()


async def test_n_choices_stream_interleaved_with_stats_and_usage(provider: LocalProvider) -> None:
    decoder = {"name": "trie", "labels": LABELS}
    req = chat("classify: my invoice", stream=True, decoder=decoder, n=3, temperature=1.0, seed=7, max_tokens=16,
               stream_options={"include_usage": True})
    chunks = [c.data async for c in provider.generate_stream(req)]
    whole = (await provider.generate(chat("classify: my invoice", decoder=decoder, n=3, temperature=1.0, seed=7,
                                          max_tokens=16))).body
    texts: dict[int, str] = {}
    finished: list[int] = []
    for c in chunks:
        for ch in c["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + (ch["delta"].get("content") or "")
            if ch["finish_reason"]:
                finished.append(ch["index"])
    assert texts == {i: ch["message"]["content"] for i, ch in enumerate(whole["choices"])}
    assert all(t in LABELS for t in texts.values()) and sorted(finished) == [0, 1, 2]
    with_stats = [c for c in chunks if "promptwire" in c]
    assert len(with_stats) == 1 and with_stats[0]["choices"][0]["finish_reason"]  # on the last finish chunk
    assert with_stats[0]["promptwire"]["decoder"] == whole["promptwire"]["decoder"]
    assert [s["labels"] for s in whole["promptwire"]["decoder"]] == [[t] for t in texts.values()]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


async def test_completion_prompts_times_n_stream_with_their_indices(provider: LocalProvider) -> None:
    req = GatewayRequest(request_id="r2", kind="completion", model="tiny-llama", prompt=["the gateway", "a model"],
                         params={"n": 2, "seed": 3, "temperature": 0.9, "max_tokens": 6}, stream=True)
    chunks = [c.data async for c in provider.generate_stream(req)]
    whole = (await provider.generate(GatewayRequest(request_id="r2", kind="completion", model="tiny-llama",
                                                    prompt=["the gateway", "a model"],
                                                    params={"n": 2, "seed": 3, "temperature": 0.9,
                                                            "max_tokens": 6}))).body
    texts: dict[int, str] = {}
    for c in chunks:
        for ch in c["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
    assert texts == {ch["index"]: ch["text"] for ch in whole["choices"]} and sorted(texts) == [0, 1, 2, 3]


async def test_backend_settings_reach_the_engine(llama_dir: Path) -> None:
    p = LocalProvider("small", LocalBackendConfig(type="local", model_path=str(llama_dir), models=("tiny-llama",),
                                             max_batch_size=2, max_context=40, device="cpu", dtype="float32"))
    try:
        assert p.engine.config.max_batch_size == 2 and p.engine.max_context == 40
        assert p.engine.device.type == "cpu" and p.engine.dtype == torch.float32
        with pytest.raises(InvalidRequest) as e:  # 40 positions: a long prompt leaves no room
            await p.generate(chat("the model " * 30, max_tokens=4))
        assert e.value.param == "prompt"
        out = await asyncio.gather(*(p.generate(chat(f"hi {i}", max_tokens=3, temperature=0)) for i in range(5)))
        assert all(r.body["choices"][0]["finish_reason"] in ("stop", "length") for r in out)
    finally:
        await p.aclose()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"backends\.gpu: device 'cuda'"):
            LocalProvider("gpu", LocalBackendConfig(type="local", model_path=str(llama_dir), device="cuda"))
