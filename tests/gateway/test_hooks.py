"""Response hooks: a stage defined only here, registered with one table entry, rewrites the answer and
counts chunks over HTTP (whole and streamed, n > 1) and gRPC, chunk by chunk or buffered."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.config.stages import NoConfig
from gateway.core.gateway import Gateway
from gateway.grpc.server import start_grpc_server
from gateway.stages.base import ResponseHook, StageResult, TextHook
from gateway.stages.table import Option, StageEntry
from gateway.types import GatewayRequest, StageStats, StreamChunk
from protos.promptwire.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.support.proxy import upstream_config


class CountingUpper(ResponseHook):
    """Chunk by chunk: upper-cases every text delta and counts the chunks that went through."""

    def __init__(self) -> None:
        self.chunks = 0
        self.whole = 0

    async def completion(self, completion: Any) -> Any:
        from gateway.types import Completion

        self.whole += 1
        body = json.loads(json.dumps(completion.body))
        for ch in body["choices"]:
            ch["message"]["content"] = ch["message"]["content"].upper()
        return Completion(body)

    async def stream(self, chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:  # type: ignore[override]
        async for chunk in chunks:
            self.chunks += 1
            data = json.loads(json.dumps(chunk.data))
            for ch in data.get("choices") or ():
                if isinstance(ch.get("delta"), dict) and isinstance(ch["delta"].get("content"), str):
                    ch["delta"]["content"] = ch["delta"]["content"].upper()
            yield StreamChunk(data)

    def stats(self) -> StageStats:
        return StageStats("shout", 0, 0, 0.0, choice=f"chunks={self.chunks}", extra={"whole": self.whole})


class BufferedUpper(TextHook):
    """Needs the whole answer: reverses the word order of each choice (and upper-cases it)."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}

    async def transform(self, texts: dict[int, str]) -> dict[int, str]:
        self.seen = dict(texts)
        return {i: " ".join(reversed(t.split(" "))).upper() for i, t in texts.items()}

    def stats(self) -> StageStats:
        return StageStats("shout", 0, 0, 0.0, choice=f"choices={len(self.seen)}")


class Shout:
    name = "shout"

    def validate(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"buffered": bool(options.get("buffered", False))}

    async def apply(self, req: GatewayRequest, options: Mapping[str, Any]) -> StageResult:
        t0 = time.perf_counter()
        hook: ResponseHook = BufferedUpper() if options["buffered"] else CountingUpper()
        return StageResult(req, StageStats("shout", 1, 1, (time.perf_counter() - t0) * 1000, "hooked"), hook)


SHOUT = StageEntry("shout", (Option("buffered", (bool,), "hold the answer to the end"),), "test stage", NoConfig,
                   lambda config, deps: Shout(), "")


@pytest.fixture(autouse=True)
def _shout(register_stage: Any) -> None:
    register_stage(SHOUT)


def _config(url: str) -> dict[str, Any]:
    stage = {"name": "shout", "client_options": ["*"]}
    return upstream_config(url, models=[{"match": "test-model", "stages": [stage]}])


MESSAGES = [{"role": "user", "content": "one two three"}]


def test_whole_responses_are_rewritten_and_hook_stats_join_the_header(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url))
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json={"model": "test-model", "messages": MESSAGES, "n": 2})
        assert r.status_code == 200
        assert [c["message"]["content"] for c in r.json()["choices"]] == ["ECHO: ONE TWO THREE"] * 2
        stats = json.loads(r.headers["x-promptwire-stats"])
        assert [s["choice"] for s in stats] == ["hooked", "chunks=0"] and stats[1]["extra"] == {"whole": 1}
        r = http.post("/v1/chat/completions", json={"model": "test-model", "messages": MESSAGES, "n": 2,
                                                    "promptwire": {"shout": {"buffered": True}}})
        assert [c["message"]["content"] for c in r.json()["choices"]] == ["THREE TWO ONE ECHO:"] * 2
        assert json.loads(r.headers["x-promptwire-stats"])[1]["choice"] == "choices=2"
    assert up.requests[-1].body is not None and up.requests[-1].body["messages"] == MESSAGES  # request untouched


def _sse(http: Any, body: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        raw = b"".join(r.iter_bytes()).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return r, [json.loads(e) for e in events[:-1]]


def _texts(chunks: list[dict[str, Any]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for c in chunks:
        for ch in c["choices"]:
            out[ch["index"]] = out.get(ch["index"], "") + (ch["delta"].get("content") or "")
    return out


def test_streams_chunk_by_chunk_and_stats_ride_on_the_last_chunk(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url))
    with proxy.http() as http:
        r, chunks = _sse(http, {"model": "test-model", "messages": MESSAGES, "stream": True, "n": 2,
                                "stream_options": {"include_usage": True}})
    assert _texts(chunks) == {0: "ECHO: ONE TWO THREE", 1: "ECHO: ONE TWO THREE"}
    header = json.loads(r.headers["x-promptwire-stats"])
    assert [s["choice"] for s in header] == ["hooked"]  # the hook's count is not known yet
    final = chunks[-1]["promptwire"]["stats"]
    assert [s["choice"] for s in final] == ["hooked", f"chunks={len(chunks)}"]
    assert chunks[-1]["usage"]["completion_tokens"] > 0  # the usage chunk kept its content
    assert all("promptwire" not in c for c in chunks[:-1])


def test_buffered_hook_streams_after_the_end_with_stats_in_the_header(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url))
    with proxy.http() as http:
        r, chunks = _sse(http, {"model": "test-model", "messages": MESSAGES, "stream": True, "n": 2,
                                "promptwire": {"shout": {"buffered": True}}})
    assert _texts(chunks) == {0: "THREE TWO ONE ECHO:", 1: "THREE TWO ONE ECHO:"}
    assert [s["choice"] for s in json.loads(r.headers["x-promptwire-stats"])] == ["hooked", "choices=2"]
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert finishes == ["stop", "stop"]
    roles = [ch["delta"]["role"] for c in chunks for ch in c["choices"] if ch["delta"].get("role")]
    assert roles == ["assistant", "assistant"]


async def test_grpc_chat_runs_the_hooks_and_reports_their_stats(make_upstream: Any) -> None:
    up = make_upstream()
    gw = Gateway(GatewayConfig.model_validate(_config(up.url)))
    await gw.start()
    handle = await start_grpc_server(gw, "127.0.0.1", 0, health_interval_s=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            call = stub.Chat(gateway_pb2.ChatRequest(
                model="test-model", messages=[common_pb2.ChatMessage(role="user", content="one two three")]))
            messages = [m async for m in call]
            trailers = dict(await call.trailing_metadata())
    finally:
        await handle.stop(0)
        await gw.aclose()
    text = "".join(c.text for m in messages for c in m.choices)
    assert text == "ECHO: ONE TWO THREE"
    first, hook = messages[-1].stats
    assert first.choice == "hooked" and hook.stage == "shout"
    counted = int(hook.choice.removeprefix("chunks="))
    assert counted >= 6  # the role chunk, four words, the finish chunk (and the usage chunk gRPC asks for)
    assert [s["choice"] for s in json.loads(trailers["x-promptwire-stats"])] == ["hooked", f"chunks={counted}"]
