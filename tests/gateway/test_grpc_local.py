"""gRPC over the local provider: typed decoder options reach the trie decoder on a tiny in-process model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from decoders.tiny import build_tiny_causal_lm
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2
from tests.support.grpc_stub import grpc_stub

LABELS = ["billing", "bug report", "feature request", "other", "Zürich office"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("grpc_llama"), "llama", seed=3)


@pytest.fixture
async def stub(llama_dir: Path) -> AsyncIterator[Any]:
    raw = {"backends": {"local": {"type": "local", "model_path": str(llama_dir), "models": ["tiny-llama"]}}}
    async with grpc_stub(raw) as s:
        yield s


def _request(decoder: options_pb2.DecoderOptions, seed: int) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(
        model="tiny-llama",
        messages=[common_pb2.ChatMessage(role="user", content="classify: my invoice is wrong")],
        sampling=options_pb2.SamplingParams(max_tokens=24, temperature=1.0, seed=seed),
        decoder=decoder,
    )


async def _text(call: Any) -> tuple[str, Any]:
    messages = [m async for m in call]
    return "".join(c.text for m in messages[:-1] for c in m.choices), messages[-1]


async def test_trie_decoder_from_typed_fields_yields_only_labels(stub: Any) -> None:
    single = options_pb2.DecoderOptions(trie=options_pb2.TrieDecoder(labels=LABELS))
    for seed in range(4):  # random weights, sampled: still always a label
        text, last = await _text(stub.Chat(_request(single, seed)))
        assert text in LABELS
        assert last.done and last.choices[0].finish_reason == "stop"
        assert last.usage.completion_tokens >= 1
    multi = options_pb2.DecoderOptions(
        trie=options_pb2.TrieDecoder(labels=LABELS, separator=", ", max_labels=2, mode=options_pb2.TRIE_MODE_ANY)
    )
    for seed in range(4):
        text, _ = await _text(stub.Chat(_request(multi, seed)))
        parts = text.split(", ")
        assert 1 <= len(parts) <= 2 and all(p in LABELS for p in parts) and len(set(parts)) == len(parts)


async def test_bad_decoder_options_are_invalid_argument(stub: Any) -> None:
    empty = options_pb2.DecoderOptions(trie=options_pb2.TrieDecoder(labels=[]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _text(stub.Chat(_request(empty, 0)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(parameter: decoder.trie.labels)" in (err.value.details() or "")


async def test_n_choices_stream_over_grpc_with_their_indices(stub: Any) -> None:
    decoder = options_pb2.DecoderOptions(trie=options_pb2.TrieDecoder(labels=LABELS))
    req = gateway_pb2.ChatRequest(
        model="tiny-llama",
        messages=[common_pb2.ChatMessage(role="user", content="classify: my invoice is wrong")],
        sampling=options_pb2.SamplingParams(max_tokens=24, temperature=1.0, seed=5, n=3),
        decoder=decoder,
    )
    messages = [m async for m in stub.Chat(req)]
    texts: dict[int, str] = {}
    for m in messages[:-1]:
        for c in m.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    last = messages[-1]
    assert sorted(texts) == [0, 1, 2] and all(t in LABELS for t in texts.values())
    assert last.done and sorted(c.index for c in last.choices) == [0, 1, 2]
    assert all(c.finish_reason == "stop" for c in last.choices)
    assert last.usage.completion_tokens >= 3
