"""gRPC front end at its edges: the request id that goes upstream, deadlines and upstream time in the metrics,
reflection, deltas besides text."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from gateway.config import GatewayConfig
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2
from tests.support.grpc_stub import grpc_stub
from tests.support.wait import until_async


def _chat(model: str = "test-model", **kw: Any) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(
        model=model, messages=[common_pb2.ChatMessage(role="user", content="hi")], **kw
    )


def _cfg(url: str, **extra: Any) -> dict[str, Any]:
    return {"backends": {"up": {"type": "openai", "base_url": url}}, **extra}


async def test_grpc_request_id_cannot_inject_upstream_headers(make_upstream: Any) -> None:
    up = make_upstream()
    async with grpc_stub(_cfg(up.url)) as stub:
        msgs = [
            m async for m in stub.Chat(_chat(request_id="abc\r\nauthorization: Bearer attacker"), timeout=10)
        ]
    assert msgs[-1].done
    seen = up.requests[-1].headers
    assert "authorization" not in seen, f"injected header reached the upstream: {seen}"
    # and the id the upstream saw is the one the client is told / the gateway logs
    assert seen["x-request-id"] == msgs[-1].request_id


async def test_grpc_request_id_over_200_chars_is_not_forwarded(make_upstream: Any) -> None:
    up = make_upstream()
    async with grpc_stub(_cfg(up.url)) as stub:
        msgs = [m async for m in stub.Chat(_chat(request_id="r" * 500), timeout=10)]
    assert (
        up.requests[-1].headers["x-request-id"] == msgs[-1].request_id
    )  # today: 500 r's upstream, a uuid here


async def test_grpc_deadline_mid_stream_counts_as_504(make_upstream: Any) -> None:
    from gateway.core.gateway import Gateway
    from tests.support.grpc_stub import serving_stub

    up = make_upstream(chunk_delay_s=0.3)
    gw = Gateway(GatewayConfig.model_validate(_cfg(up.url)))
    await gw.start()
    try:
        async with serving_stub(gw) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                [m async for m in stub.Chat(_chat(), timeout=0.8)]
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # the server side of the call ends on its own (its deadline too): until it has counted it
            await until_async(lambda: 'code="504"' in gw.metrics.render().decode(), "the 504 to be counted")
        text = gw.metrics.render().decode()
    finally:
        await gw.aclose()
    assert 'code="504"' in text, [
        ln for ln in text.splitlines() if ln.startswith("promptwire_requests_total{")
    ]


def _series(text: str, prefix: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


async def test_grpc_deadline_mid_stream_is_504_even_when_only_grpc_enforces_it(
    make_upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the gateway's own deadline (no read timeout can fire first), grpc cancels the handler
    when the client's deadline passes: that is a timeout (504), not a client that left (499)."""
    from gateway.core.gateway import Gateway
    from tests.support.grpc_stub import serving_stub

    monkeypatch.setattr(Gateway, "_deadline", lambda self, req: None)
    up = make_upstream(chunk_delay_s=0.3)
    gw = Gateway(GatewayConfig.model_validate(_cfg(up.url)))
    await gw.start()
    try:
        async with serving_stub(gw) as stub:
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for m in stub.Chat(_chat(), timeout=0.8):
                    got.append(m)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and got  # it had started
            call = stub.Chat(_chat(), timeout=10)  # a client that cancels mid-stream is still 499
            await call.read()
            call.cancel()
            await until_async(lambda: gw.in_flight == 0 and 'code="499"' in gw.metrics.render().decode(),
                              "the cancelled call to end")
        text = gw.metrics.render().decode()
    finally:
        await gw.aclose()
    requests = _series(text, "promptwire_requests_total{")
    assert any('code="504"' in ln and ln.endswith(" 1.0") for ln in requests), requests
    assert any('code="499"' in ln and ln.endswith(" 1.0") for ln in requests), requests
    errors = _series(text, "promptwire_errors_total{")
    assert errors == ['promptwire_errors_total{code="timeout",status="504"} 1.0'], errors


async def test_upstream_seconds_observed_for_grpc_streams_and_models_name_their_backend(
    make_upstream: Any,
) -> None:
    from gateway.core.gateway import Gateway
    from tests.support.grpc_stub import serving_stub

    up = make_upstream(latency_s=0.05)
    gw = Gateway(GatewayConfig.model_validate(_cfg(up.url)))
    await gw.start()
    try:
        async with serving_stub(gw) as stub:
            [m async for m in stub.Chat(_chat(), timeout=10)]
            [m async for m in stub.Generate(gateway_pb2.GenerateRequest(model="test-model", prompt="x"), timeout=10)]
            models = (await stub.ListModels(gateway_pb2.ListModelsRequest())).models
        text = gw.metrics.render().decode()
    finally:
        await gw.aclose()
    assert 'promptwire_upstream_seconds_count{backend="up"} 2.0' in text
    [total] = _series(text, 'promptwire_upstream_seconds_sum{backend="up"}')
    assert float(total.split()[-1]) >= 0.1  # each waited for the upstream's 50 ms latency
    assert models and {m.provider for m in models} == {"up"}  # the backend's name, as documented


async def test_reflection_v1_and_v1alpha(make_upstream: Any) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    from gateway.core.gateway import Gateway
    from gateway.grpc.server import SERVICE_NAME, start_grpc_server

    gw = Gateway(GatewayConfig.model_validate(_cfg(make_upstream().url)))
    await gw.start()
    handle = await start_grpc_server(gw, "127.0.0.1", 0, health_interval_s=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            for version in ("v1", "v1alpha"):
                # v1 and v1alpha messages are the same on the wire; only the method path differs
                info = channel.stream_stream(
                    f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                    request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
                )
                requests = [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
                ]
                replies = [r async for r in info(iter(requests), timeout=10)]
                names = {s.name for s in replies[0].list_services_response.service}
                assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
                files = replies[1].file_descriptor_response.file_descriptor_proto
                assert any(b"ChoiceDelta" in f for f in files), version
                # every listed service can be described (a client walking the list must not hit a hole)
                described = [r async for r in info(iter([reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol=n) for n in sorted(names)]), timeout=10)]
                assert all(r.HasField("file_descriptor_response") for r in described), version
    finally:
        await handle.stop(0)
        await gw.aclose()


_TOOL_CHUNKS = [
    {"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
    {"refusal": "partly"},
]  # fmt: skip


async def _tool_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A raw upstream that streams a tool call (the fake upstream only streams text)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if head.startswith(b"GET"):
                body = json.dumps({"object": "list", "data": [{"id": "tool-model", "object": "model"}]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
                continue
            events = [{"id": "c1", "model": "tool-model", "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
                      for d in _TOOL_CHUNKS]
            events.append({"id": "c1", "model": "tool-model",
                           "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
            events.append({"id": "c1", "model": "tool-model", "choices": [],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
            payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_chat_streams_tool_calls_and_refusal_end_to_end() -> None:
    server = await asyncio.start_server(_tool_upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with grpc_stub(_cfg(f"http://127.0.0.1:{port}/v1")) as stub:
            extra = json.dumps({"tools": [{"type": "function", "function": {"name": "get_weather"}}]})
            req = _chat(model="tool-model", sampling=options_pb2.SamplingParams(extra_json=extra))
            msgs = [m async for m in stub.Chat(req, timeout=10)]
    finally:
        server.close()
        await server.wait_closed()
    calls = [c for m in msgs for ch in m.choices for c in ch.tool_calls]
    assert [c.id for c in calls if c.id] == ["call_9"]
    assert calls[0].function.name == "get_weather"
    assert "".join(c.function.arguments for c in calls if c.index == 0) == '{"city": "Oslo"}'
    assert "".join(ch.refusal for m in msgs for ch in m.choices) == "partly"
    assert msgs[-1].done and msgs[-1].choices[0].finish_reason == "tool_calls"
    assert msgs[-1].usage.completion_tokens == 7


async def test_unauthenticated_calls_do_not_use_up_model_labels(make_upstream: Any) -> None:
    import hashlib

    from gateway.core.gateway import Gateway
    from gateway.observe.metrics import MAX_MODEL_LABELS
    from tests.support.grpc_stub import serving_stub

    up = make_upstream()
    key = hashlib.sha256(b"sk-good").hexdigest()
    cfg = _cfg(up.url, auth={"keys": [{"id": "team", "sha256": key}]})
    gw = Gateway(GatewayConfig.model_validate(cfg))
    await gw.start()
    try:
        async with serving_stub(gw) as stub:
            for i in range(MAX_MODEL_LABELS + 5):  # no key: rejected, must not claim label slots
                with pytest.raises(grpc.aio.AioRpcError):
                    [m async for m in stub.Chat(_chat(model=f"junk-{i}"), timeout=10)]
            good = (("authorization", "Bearer sk-good"),)
            msgs = [m async for m in stub.Chat(_chat(model="test-model"), metadata=good, timeout=10)]
            assert msgs[-1].done
        reg = gw.metrics.registry
        assert reg.get_sample_value("promptwire_requests_total", {
            "model": "test-model", "kind": "chat", "stream": "true", "code": "200"}) == 1
        assert reg.get_sample_value("promptwire_requests_total", {
            "model": "unknown", "kind": "chat", "stream": "true", "code": "401"}) == MAX_MODEL_LABELS + 5
    finally:
        await gw.aclose()
