"""The local provider end to end: the real openai SDK -> running promptwire -> in-process tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoders.tiny import build_tiny_causal_lm
from gateway.providers.local import resolve_model_source
from tests.support.proxy import RunningProxy


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("llama"), "llama", seed=3)


@pytest.fixture(scope="module")
def proxy(llama_dir: Path) -> Iterator[RunningProxy]:
    config = {"backends": {"local": {"type": "local", "model_path": str(llama_dir), "models": ["tiny-llama"]}}}
    p = RunningProxy(config).start()
    yield p
    p.stop()


def _reference_greedy(model_dir: Path, messages: list[dict[str, str]], max_new: int) -> list[str]:
    """model.generate's greedy tokens, each as its own text (what logprobs report)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
    return [str(tok.decode([t])) for t in out[0, ids.shape[1]:].tolist()]


def test_models_lists_the_local_model(proxy: RunningProxy) -> None:
    with proxy.client() as client:
        assert [m.id for m in client.models.list().data] == ["tiny-llama"]


def test_chat_greedy_matches_transformers_generate(proxy: RunningProxy, llama_dir: Path) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the model of a prompt"}]
    with proxy.client() as client:
        resp = client.chat.completions.create(model="tiny-llama", messages=messages,  # type: ignore[arg-type]
                                              temperature=0, max_tokens=12, logprobs=True, top_logprobs=2)
    choice = resp.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = [lp.token for lp in choice.logprobs.content]
    assert tokens == _reference_greedy(llama_dir, messages, 12)[: len(tokens)]
    assert all(len(lp.top_logprobs) == 2 for lp in choice.logprobs.content)
    assert choice.message.content and len(tokens) >= 1
    assert resp.usage is not None
    assert resp.usage.completion_tokens <= 12 and resp.usage.prompt_tokens > 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_streaming_concatenates_to_the_whole_answer(proxy: RunningProxy) -> None:
    kw: dict[str, Any] = {"model": "tiny-llama", "messages": [{"role": "user", "content": "café 東京"}],
                          "temperature": 0.8, "seed": 11, "max_tokens": 16}
    with proxy.client() as client:
        whole = client.chat.completions.create(**kw)
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_completions_with_n_and_seed_are_reproducible(proxy: RunningProxy) -> None:
    with proxy.client() as client:
        a = client.completions.create(model="tiny-llama", prompt="the gateway", n=3, seed=5, max_tokens=8)
        b = client.completions.create(model="tiny-llama", prompt="the gateway", n=3, seed=5, max_tokens=8)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 99}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"extra_body": {"promptwire": {"decoder": {"name": "nope"}}}}, "promptwire.decoder.name"),
    ],
)
def test_bad_values_are_400_naming_the_parameter(proxy: RunningProxy, kw: dict[str, Any], param: str) -> None:
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}], **kw)
    assert info.value.body["param"] == param  # type: ignore[index]


def test_tiny_sources_are_built_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTWIRE_CACHE_DIR", str(tmp_path))
    first = resolve_model_source("tiny:gpt2")
    stamp = (Path(first) / "config.json").stat().st_mtime_ns
    assert resolve_model_source("tiny:gpt2") == first
    assert (Path(first) / "config.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="tiny:llama"):
        resolve_model_source("tiny:nope")
