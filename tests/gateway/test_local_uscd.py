"""USCD through the gateway: HTTP whole and streamed, gRPC typed fields, stats everywhere, clear 400s."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest

from decoders.tiny import build_tiny_causal_lm
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2
from tests.support.grpc_stub import grpc_stub
from tests.support.proxy import RunningProxy

FEW_SHOT = [{"role": "system", "content": "answer briefly"},
            {"role": "user", "content": "the model of a prompt"}, {"role": "assistant", "content": "token label"},
            {"role": "user", "content": "the gateway cache"}, {"role": "assistant", "content": "decode stream"},
            {"role": "user", "content": "a batch of logits"}]
USCD = {"name": "uscd", "measure": "top1", "threshold": 0.5, "alpha": 0.7}
STATS = {"contrasted_steps", "total_steps", "contrasted_fraction", "lame_prompt_rule", "lame_prompt_tokens",
         "lame_tokens_removed", "lame_forwards", "lazy"}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("uscd_llama"), "llama", seed=3)


def _config(model_dir: Path) -> dict[str, Any]:
    return {"backends": {"local": {"type": "local", "model_path": str(model_dir), "models": ["tiny-llama"]}}}


@pytest.fixture(scope="module")
def proxy(llama_dir: Path) -> Iterator[RunningProxy]:
    p = RunningProxy(_config(llama_dir)).start()
    yield p
    p.stop()


def _create(client: openai.OpenAI, decoder: dict[str, Any], **kw: Any) -> Any:
    return client.chat.completions.create(model="tiny-llama", messages=FEW_SHOT,  # type: ignore[arg-type]
                                          extra_body={"promptwire": {"decoder": decoder}}, **kw)


@pytest.mark.parametrize("lazy", [False, True])
def test_http_whole_and_streamed_carry_stats_and_agree(proxy: RunningProxy, lazy: bool) -> None:
    decoder = {**USCD, "lazy": lazy}
    kw: dict[str, Any] = {"temperature": 0, "max_tokens": 16}
    with proxy.client() as client:
        whole = _create(client, decoder, **kw)
        chunks = list(_create(client, decoder, stream=True, stream_options={"include_usage": True}, **kw))
    stats = whole.model_extra["promptwire"]["decoder"]
    assert STATS <= set(stats) and stats["lame_prompt_rule"] == "chat_examples" and stats["lazy"] is lazy
    assert stats["total_steps"] == whole.usage.completion_tokens and stats["lame_tokens_removed"] > 0
    assert stats["lame_forwards"] == (stats["contrasted_steps"] if lazy else stats["total_steps"])
    assert whole.usage.model_extra.get("aux_prompt_tokens") == (stats["lame_prompt_tokens"]
                                                               if stats["lame_forwards"] else None)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    last = [c for c in chunks if c.model_extra.get("promptwire")]
    assert len(last) == 1 and last[0].model_extra["promptwire"]["decoder"] == stats
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize(
    ("decoder", "param", "words"),
    [
        ({"name": "uscd", "alpha": -1}, "promptwire.decoder.alpha", ""),
        ({"name": "uscd", "mode": "linear"}, "promptwire.decoder.mode", ""),
        ({"name": "uscd", "measure": "variance"}, "promptwire.decoder.measure", ""),
        ({"name": "uscd", "lame_prompt": 3}, "promptwire.decoder.lame_prompt", ""),
        ({"name": "uscd", "threshold": 2, "measure": "entropy"}, "promptwire.decoder.threshold", "[0, 1]"),
    ],
)
def test_bad_options_are_400_naming_the_option(proxy: RunningProxy, decoder: dict[str, Any], param: str,
                                               words: str) -> None:
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        _create(client, decoder, max_tokens=4)
    body: Any = info.value.body
    assert body["param"] == param and words in body["message"]


def test_lame_prompt_identical_to_the_prompt_is_400(proxy: RunningProxy) -> None:
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny-llama", prompt="the model", max_tokens=4,
                                  extra_body={"promptwire": {"decoder": {"name": "uscd", "lame_prompt": "the model"}}})
    body: Any = info.value.body
    assert body["param"] == "promptwire.decoder.lame_prompt" and "equals the prompt" in body["message"]
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny-llama", prompt="the model", max_tokens=4,
                                  extra_body={"promptwire": {"decoder": {"name": "uscd"}}})
    assert info.value.body["param"] == "promptwire.decoder.lame_prompt"  # type: ignore[index]


def test_completions_doctest_rule_and_token_id_lame_prompt(proxy: RunningProxy) -> None:
    code = 'def double(x):\n    """Double x.\n    >>> double(2)\n    4\n    """\n'
    with proxy.client() as client:
        resp = client.completions.create(model="tiny-llama", prompt=code, max_tokens=6, temperature=0,
                                         extra_body={"promptwire": {"decoder": USCD}})
        by_ids = client.completions.create(model="tiny-llama", prompt=code, max_tokens=6, temperature=0,
                                           extra_body={"promptwire": {"decoder": {**USCD, "lame_prompt": [1, 5, 9]}}})
    assert resp.model_extra["promptwire"]["decoder"]["lame_prompt_rule"] == "doctest"
    assert by_ids.model_extra["promptwire"]["decoder"]["lame_prompt_rule"] == "client_ids"
    assert by_ids.model_extra["promptwire"]["decoder"]["lame_prompt_tokens"] == 3


def test_openai_backend_is_a_clear_400_naming_local(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy({"server": {"grpc_port": None},
                        "backends": {"up": {"type": "openai", "base_url": up.url}}})
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="test-model", messages=FEW_SHOT,  # type: ignore[arg-type]
                                       extra_body={"promptwire": {"decoder": {"name": "uscd"}}})
    body: Any = info.value.body
    assert body["param"] == "promptwire.decoder.name"
    assert "logits" in body["message"] and "'local'" in body["message"]
    assert not [r for r in up.requests if r.path.endswith("/chat/completions")]


@pytest.fixture
async def stub(llama_dir: Path) -> AsyncIterator[Any]:
    async with grpc_stub(_config(llama_dir)) as s:
        yield s


async def test_grpc_typed_fields_and_decoder_stats_in_the_last_message(stub: Any) -> None:
    def request(uscd: options_pb2.UscdDecoder) -> gateway_pb2.ChatRequest:
        return gateway_pb2.ChatRequest(
            model="tiny-llama", messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in FEW_SHOT],
            sampling=options_pb2.SamplingParams(max_tokens=12, temperature=0, n=2),
            decoder=options_pb2.DecoderOptions(uscd=uscd))

    messages = [m async for m in stub.Chat(request(options_pb2.UscdDecoder(
        alpha=0.5, mode="log", measure="top1", threshold=0.5, lazy=True, plausibility=0.2,
        lame_prompt_text="a batch of logits")))]
    last = messages[-1]
    assert last.done and len(last.decoder_stats) == 2
    stats = dict(last.decoder_stats[0])
    assert stats["lame_prompt_rule"] == "client_text" and stats["lazy"] is True
    assert int(stats["total_steps"]) >= 1 and last.usage.completion_tokens >= 2
    ids = [m async for m in stub.Chat(request(options_pb2.UscdDecoder(
        lame_prompt_ids=options_pb2.TokenIds(ids=[1, 5, 9]))))]
    assert dict(ids[-1].decoder_stats[0])["lame_prompt_tokens"] == 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [m async for m in stub.Chat(request(options_pb2.UscdDecoder(alpha=-1)))]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "decoder.uscd.alpha" in (err.value.details() or "")


def test_http_stats_header_is_untouched(proxy: RunningProxy) -> None:
    """Decoder stats travel in the body (promptwire.decoder); the stats header stays the stages' list."""
    with httpx.Client(base_url=proxy.base, timeout=20) as http:
        r = http.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": FEW_SHOT, "max_tokens": 3,
                                                     "promptwire": {"decoder": USCD}})
    assert r.status_code == 200 and r.json()["promptwire"]["decoder"]["total_steps"] >= 1
