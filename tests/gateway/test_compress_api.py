"""Handler logic of POST /v1/compress and gRPC Compress over a real tiny exported model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from compressors.llmlingua2.compressor import Compressor
from compressors.llmlingua2.serving import BatcherConfig, CompressorService
from gateway.errors import InvalidRequest, NotFound
from gateway.stages.compress_api import CompressAPI
from protos.promptwire.v1 import common_pb2, compress_pb2, options_pb2
from tests.compressors.test_serving_model import TEXTS, tiny_exported


@pytest.fixture(scope="module")
def compressor(tmp_path_factory: pytest.TempPathFactory) -> Compressor:
    return Compressor(tiny_exported(tmp_path_factory))


@pytest.fixture
async def api(compressor: Compressor) -> AsyncIterator[CompressAPI]:
    svc = CompressorService(compressor, BatcherConfig(max_wait_ms=1))
    yield CompressAPI({"tiny": svc})
    await svc.aclose()


async def test_text_default_mode(api: CompressAPI, compressor: Compressor) -> None:
    out = await api.handle_json({"text": TEXTS[0], "rate": 0.4, "return_word_labels": True})
    want = compressor.compress(TEXTS[0], rate=0.4, return_word_labels=True)
    assert out["compressed_text"] == want.text != TEXTS[0]
    assert (out["origin_tokens"], out["compressed_tokens"]) == (want.origin_tokens, want.compressed_tokens)
    assert out["ratio"] == round(want.origin_tokens / want.compressed_tokens, 4)
    assert out["model"] == "tiny" and out["execution_provider"] == "CPUExecutionProvider" and out["ms"] > 0
    assert want.word_labels is not None
    assert out["word_labels"] == [{"word": w, "keep": bool(k)} for w, k in want.word_labels]


async def test_contexts_and_messages(api: CompressAPI, compressor: Compressor) -> None:
    out = await api.handle_json({"contexts": TEXTS[:3], "rate": 0.5})
    assert len(out["compressed_contexts"]) == 3
    assert out["compressed_text"] == "\n\n".join(out["compressed_contexts"])
    assert out["compressed_tokens"] < out["origin_tokens"]
    msgs = [{"role": "system", "content": TEXTS[0]}, {"role": "user", "content": TEXTS[1], "name": "ann"}]
    out = await api.handle_json({"messages": msgs, "rate": 0.5, "protections": {"numbers": False}})
    want = compressor.compress_messages(msgs, rate=0.5, protections=_prot(numbers=False))
    assert out["messages"] == want.messages
    assert out["messages"][1] == msgs[1]


def _prot(**kw: bool) -> Any:
    from compressors.llmlingua2.structure import Protections

    return Protections(**kw)


async def test_compat_mode(api: CompressAPI, compressor: Compressor) -> None:
    body = {"contexts": TEXTS[:3], "compat": "llmlingua", "rate": 0.5, "return_word_labels": True,
            "force_context_ids": [0], "token_to_word": "first"}
    out = await api.handle_json(body)
    want = compressor.compress_llmlingua(TEXTS[:3], rate=0.5, return_word_label=True, force_context_ids=[0],
                                         token_to_word="first")
    assert out["compressed_text"] == want["compressed_prompt"]
    assert out["compressed_contexts"] == want["compressed_prompt_list"]
    assert out["origin_tokens"] == want["origin_tokens"]
    pairs = [w.rpartition(" ") for w in want["fn_labeled_original_prompt"].split("\t\t|\t\t")]
    assert [(d["word"], d["keep"]) for d in out["word_labels"]] == [(w, lab == "1") for w, _, lab in pairs]
    msgs = [{"role": "system", "content": TEXTS[0]}, {"role": "user", "content": TEXTS[1]}]
    out = await api.handle_json({"messages": msgs, "compat": "llmlingua", "rate": 0.5})
    assert out["messages"][0]["content"] == compressor.compress_llmlingua(TEXTS[0], rate=0.5)["compressed_prompt"]
    assert out["messages"][1] == msgs[1]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "text"),
        ({"text": "a", "contexts": ["b"]}, "text"),
        ({"text": 3}, "text"),
        ({"contexts": ["a", 2]}, "contexts[1]"),
        ({"contexts": "a"}, "contexts"),
        ({"messages": [{"content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"text": "a", "rate": 0}, "rate"),
        ({"text": "a", "target_token": -3}, "target_token"),
        ({"text": "a", "force_tokens": ["x"] * 101}, "force_tokens"),
        ({"text": "a", "speed": 2}, "speed"),
        ({"text": "a", "token_to_word": "first"}, "token_to_word"),
        ({"text": "a", "compat": "llmlingua", "token_to_word": "last"}, "token_to_word"),
        ({"text": "a", "compat": "llmlingua", "context_level_rate": 2}, "context_level_rate"),
        ({"text": "a", "return_word_labels": "yes"}, "return_word_labels"),
        ({"messages": [{"role": "user", "content": "x"}], "return_word_labels": True}, "return_word_labels"),
        ({"text": "a", "protections": {"html": True}}, "protections.html"),
    ],
)
async def test_bad_bodies_name_the_field(api: CompressAPI, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        await api.handle_json(body)
    assert ei.value.param == param


async def test_unknown_model(api: CompressAPI) -> None:
    with pytest.raises(NotFound) as ei:
        await api.handle_json({"text": "a", "model": "big"})
    assert ei.value.param == "model"
    assert (await api.handle_json({"text": TEXTS[1], "model": "tiny"}))["model"] == "tiny"


async def test_empty_text(api: CompressAPI) -> None:
    out = await api.handle_json({"text": ""})
    assert out["compressed_text"] == "" and out["origin_tokens"] == 0 and out["ratio"] == 0.0


async def test_proto_round_trip(api: CompressAPI, compressor: Compressor) -> None:
    req = compress_pb2.CompressRequest(
        text=TEXTS[0], rate=0.5, compat=compress_pb2.COMPAT_MODE_LLMLINGUA, return_word_labels=True,
        force_tokens=["\n"], token_to_word=compress_pb2.TOKEN_TO_WORD_FIRST,
    )
    resp = await api.handle_proto(req)
    want = compressor.compress_llmlingua(TEXTS[0], rate=0.5, force_tokens=["\n"], token_to_word="first",
                                         return_word_label=True)
    assert isinstance(resp, compress_pb2.CompressResponse)
    assert resp.compressed_text == want["compressed_prompt"]
    assert resp.origin_tokens == want["origin_tokens"] and resp.compressed_tokens == want["compressed_tokens"]
    assert len(resp.word_labels) == len(want["fn_labeled_original_prompt"].split("\t\t|\t\t"))
    assert resp.model == "tiny" and resp.execution_provider == "CPUExecutionProvider"

    msgs = compress_pb2.ChatMessageList(messages=[
        common_pb2.ChatMessage(role="system", content=TEXTS[0]),
        common_pb2.ChatMessage(role="user", content="Why?", name="ann"),
    ])
    req2 = compress_pb2.CompressRequest(messages=msgs, target_token=10,
                                        protections=options_pb2.Protections(urls=False))
    resp2 = await api.handle_proto(req2)
    assert [m.role for m in resp2.messages] == ["system", "user"]
    assert resp2.messages[1].content == "Why?" and resp2.messages[1].name == "ann"
    assert resp2.messages[0].content != TEXTS[0]

    with pytest.raises(InvalidRequest) as ei:
        await api.handle_proto(compress_pb2.CompressRequest(text="a", rate=1.5))
    assert ei.value.param == "rate"
    with pytest.raises(InvalidRequest) as ei:
        await api.handle_proto(compress_pb2.CompressRequest())
    assert ei.value.param == "text"


async def test_from_stage(tmp_path_factory: pytest.TempPathFactory) -> None:
    from gateway.config.stages import CompressConfig
    from gateway.stages.compress import make_compress_stage

    stage = make_compress_stage(CompressConfig(model=str(tiny_exported(tmp_path_factory))))
    api = CompressAPI.from_stage(stage)
    out = await api.handle_json({"text": TEXTS[2], "rate": 0.5})
    assert out["model"] == "onnx" and out["compressed_tokens"] <= out["origin_tokens"]
    assert stage.service.stats.requests == 1  # the stage's service served it
    await stage.aclose()
