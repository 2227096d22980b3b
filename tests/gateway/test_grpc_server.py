"""The gRPC front end end to end: a real grpc.aio server on port 0, H1's Gateway, the real fake upstream."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.config import GatewayConfig
from gateway.core.gateway import Gateway
from gateway.grpc.server import SERVICE_NAME, GrpcHandle, start_grpc_server
from protos.promptwire.v1 import common_pb2, compress_pb2, gateway_pb2, gateway_pb2_grpc, options_pb2
from tests.support.upstream import UpstreamServer
from tests.support.wait import BOUND_S, until_async

KEY = "sk-test-grpc"


class RecordingGateway(Gateway):
    """The real Gateway, remembering the requests the front end built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Any] = []

    async def generate_stream(self, req: Any, **kw: Any) -> Any:
        self.seen.append(req)
        return await super().generate_stream(req, **kw)


@dataclass
class Served:
    upstream: UpstreamServer
    gateway: Gateway
    handle: GrpcHandle
    channel: grpc.aio.Channel
    stub: gateway_pb2_grpc.GatewayStub


@pytest.fixture
def upstream() -> Any:
    with UpstreamServer() as up:
        yield up


@pytest.fixture
async def serve(upstream: UpstreamServer) -> AsyncIterator[Callable[..., Any]]:
    """Factory: serve(limits=..., keys=...) -> Served, torn down after the test."""
    started: list[Served] = []

    async def make(*, limits: dict[str, Any] | None = None, auth: bool = False, **extra: Any) -> Served:
        raw: dict[str, Any] = {
            "backends": {"up": {"type": "openai", "base_url": upstream.url}},
            "limits": limits or {},
            **extra,
        }
        if auth:
            raw["auth"] = {"keys": [{"id": "team-a", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}
        gw = RecordingGateway(GatewayConfig.model_validate(raw))
        await gw.start()
        handle = await start_grpc_server(gw, "127.0.0.1", 0, health_interval_s=None)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}")
        served = Served(upstream, gw, handle, channel, gateway_pb2_grpc.GatewayStub(channel))
        started.append(served)
        return served

    yield make
    for s in started:
        await s.channel.close()
        await s.handle.stop(0)
        await s.gateway.aclose()


def _chat(text: str, **fields: Any) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(
        model="test-model", messages=[common_pb2.ChatMessage(role="user", content=text)], **fields
    )


async def _collect(call: Any) -> tuple[list[Any], dict[str, str]]:
    messages = [m async for m in call]
    trailers = {k: v for k, v in (await call.trailing_metadata() or ())}
    return messages, trailers


async def test_chat_streams_deltas_then_finish_reason_usage_and_stats(serve: Any) -> None:
    s = await serve()
    call = s.stub.Chat(_chat("hello big world"), metadata=(("x-request-id", "client-req-1"),))
    messages, trailers = await _collect(call)
    assert ("x-request-id", "client-req-1") in tuple(await call.initial_metadata())
    *deltas, last = messages
    assert len(deltas) >= 4  # one word per upstream chunk, not buffered into one message
    assert "".join(c.text for m in deltas for c in m.choices) == "echo: hello big world"
    assert deltas[0].choices[0].role == "assistant"
    assert all(not c.finish_reason for m in deltas for c in m.choices)
    assert not any(m.done for m in deltas)
    assert last.done and [(c.index, c.finish_reason) for c in last.choices] == [(0, "stop")]
    # the fake upstream counts words: prompt "hello big world" = 3, reply 4 words
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 4, 7)
    assert last.id.startswith("chatcmpl-") and last.model == "test-model"
    assert json.loads(trailers["x-promptwire-stats"]) == []
    overhead = float(trailers["x-promptwire-overhead-ms"])
    assert 0 <= overhead < 1000 and last.overhead_ms == pytest.approx(overhead, abs=1e-3)
    body = s.upstream.requests[-1].body
    assert body is not None and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hello big world"}]
    [req] = s.gateway.seen
    assert req.kind == "chat" and req.deadline is None and req.request_id == "client-req-1"
    assert s.upstream.requests[-1].headers.get("x-request-id") == "client-req-1"
    labels = {"model": "test-model", "kind": "chat", "stream": "true", "code": "200"}
    assert s.gateway.metrics.registry.get_sample_value("promptwire_requests_total", labels) == 1


async def test_generate_passes_sampling_params_and_reports_length(serve: Any) -> None:
    s = await serve()
    sampling = options_pb2.SamplingParams(
        max_tokens=2,
        temperature=0.7,
        top_p=0.9,
        seed=42,
        stop=["zzz"],
        n=2,
        response_format=options_pb2.ResponseFormat(
            json_schema=options_pb2.JsonSchemaFormat(name="out", schema_json='{"type":"object","maxProperties":3}')
        ),
        extra_json='{"top_k": 5}',
    )
    req = gateway_pb2.GenerateRequest(model="test-model", prompt="one two three four", sampling=sampling)
    messages, _ = await _collect(s.stub.Generate(req))
    *deltas, last = messages
    by_index: dict[int, str] = {}
    for m in deltas:
        for c in m.choices:
            by_index[c.index] = by_index.get(c.index, "") + c.text
    assert by_index == {0: "echo: one", 1: "echo: one"}
    assert sorted((c.index, c.finish_reason) for c in last.choices) == [(0, "length"), (1, "length")]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 4)
    body = s.upstream.requests[-1].body
    assert body is not None
    assert {k: body[k] for k in ("prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "top_k")} == {
        "prompt": "one two three four", "max_tokens": 2, "temperature": 0.7, "top_p": 0.9, "seed": 42,
        "stop": ["zzz"], "n": 2, "top_k": 5,
    }  # fmt: skip
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object", "maxProperties": 3}},
    }
    assert "promptwire" not in body


async def test_list_models(serve: Any) -> None:
    s = await serve()
    reply = await s.stub.ListModels(gateway_pb2.ListModelsRequest())
    assert sorted(m.id for m in reply.models) == ["test-model", "test-model-2"]


async def test_health_serving_then_not_serving(serve: Any) -> None:
    s = await serve()
    health = health_pb2_grpc.HealthStub(s.channel)
    for service in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await s.handle.set_not_serving()
    for service in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_follows_gateway_readiness(serve: Any) -> None:
    s = await serve()
    handle = await start_grpc_server(s.gateway, "127.0.0.1", 0, health_interval_s=0.05)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            assert (await health.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
            s.gateway.begin_shutdown()  # readiness false
            status = None

            async def poll() -> None:
                nonlocal status
                while status != health_pb2.HealthCheckResponse.NOT_SERVING:
                    status = (await health.Check(request)).status

            await asyncio.wait_for(poll(), BOUND_S)  # health follows readiness (checked every 0.05 s)
    finally:
        await handle.stop(0)


async def test_reflection_lists_and_describes_the_service(serve: Any) -> None:
    s = await serve()
    stub = reflection_pb2_grpc.ServerReflectionStub(s.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    replies = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = {svc.name for svc in replies[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = replies[1].file_descriptor_response.file_descriptor_proto
    assert files  # the descriptor of gateway.proto (and its imports)
    assert any(b"GenerateRequest" in f for f in files)


async def _code_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _collect(call)
    return err.value


async def test_invalid_argument_names_the_parameter(serve: Any) -> None:
    s = await serve()
    bad = _chat("hi", sampling=options_pb2.SamplingParams(temperature=3.0))
    err = await _code_of(s.stub.Chat(bad))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.temperature" in (err.details() or "")
    assert s.gateway.metrics.registry.get_sample_value(
        "promptwire_errors_total", {"status": "400", "code": "invalid_request_error"}
    ) == 1
    assert ("x-promptwire-error-param", "sampling.temperature") in tuple(err.trailing_metadata() or ())
    # a parameter the gateway core rejects is named by its gRPC field too
    trie = options_pb2.DecoderOptions(trie=options_pb2.TrieDecoder(labels=["a", "b"]))
    err = await _code_of(s.stub.Chat(_chat("hi", decoder=trie)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(parameter: decoder)" in (err.details() or "")
    err = await _code_of(s.stub.Chat(gateway_pb2.ChatRequest(model="test-model")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "(parameter: messages)" in (err.details() or "")
    assert s.upstream.app.generation_requests == 0


async def test_unknown_model_is_not_found(serve: Any) -> None:
    s = await serve()
    req = _chat("hi")
    req.model = "nope"
    err = await _code_of(s.stub.Chat(req))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_authentication(serve: Any) -> None:
    s = await serve(auth=True)
    for metadata in ((), (("authorization", "Bearer wrong"),), (("x-api-key", "wrong"),)):
        err = await _code_of(s.stub.Chat(_chat("hi"), metadata=metadata))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await s.stub.ListModels(gateway_pb2.ListModelsRequest())
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert s.upstream.app.generation_requests == 0
    for metadata in ((("authorization", f"Bearer {KEY}"),), (("x-api-key", KEY),)):
        messages, _ = await _collect(s.stub.Chat(_chat("hi"), metadata=metadata))
        assert messages[-1].done and messages[-1].choices[0].finish_reason == "stop"


async def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    await until_async(predicate, what)


async def test_deadline_exceeded_and_upstream_released(serve: Any) -> None:
    s = await serve()
    s.upstream.knobs.latency_s = 60.0  # never in time
    t0 = time.monotonic()
    err = await _code_of(s.stub.Chat(_chat("slow"), timeout=0.3))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 0.3 + 1.0  # the deadline, plus a second at most
    await _wait_for(lambda: s.gateway.in_flight == 0, "the in-flight slot to be freed")


async def test_gateway_deadline_from_grpc_deadline(serve: Any) -> None:
    """The gRPC deadline reaches the core: the request's own deadline fires, not only the client's."""
    s = await serve()
    s.upstream.knobs.chunk_delay_s = 0.5
    sent = time.monotonic()
    call = s.stub.Chat(_chat("a b c d e f"), timeout=0.8)
    err = await _code_of(call)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [req] = s.gateway.seen
    # time_remaining() rounds to the wire encoding of grpc-timeout: allow a few ms
    assert req.deadline is not None and 0.5 < req.deadline - sent <= 0.85
    await _wait_for(lambda: s.upstream.app.disconnects == 1, "the upstream stream to be closed")
    await _wait_for(lambda: s.gateway.in_flight == 0, "the in-flight slot to be freed")


async def test_client_cancellation_closes_the_upstream_stream(serve: Any) -> None:
    s = await serve()
    s.upstream.knobs.chunk_delay_s = 0.3
    call = s.stub.Chat(_chat("one two three four five six seven eight"))
    first = await call.read()
    assert first.choices
    call.cancel()
    await _wait_for(lambda: s.upstream.app.disconnects == 1, "the upstream stream to be closed")
    await _wait_for(lambda: s.gateway.in_flight == 0, "the in-flight slot to be freed")
    assert s.upstream.app.streams_completed == 0


async def test_upstream_failure_mid_stream_ends_with_an_error_status(serve: Any) -> None:
    s = await serve()
    s.upstream.knobs.die_after_chunks = 3
    call = s.stub.Chat(_chat("one two three four five six"))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for m in call:
            received.append(m)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert received and not any(m.done for m in received)  # text arrived, but never a clean end


async def test_overloaded_is_resource_exhausted_with_retry_after(serve: Any) -> None:
    s = await serve(limits={"max_in_flight": 1, "retry_after_s": 2.5})
    s.upstream.knobs.chunk_delay_s = 0.2
    held = s.stub.Chat(_chat("one two three four"))
    await held.read()  # the only slot is taken
    err = await _code_of(s.stub.Chat(_chat("two")))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after", "2.5") in tuple(err.trailing_metadata() or ())
    held.cancel()


async def test_compress_without_a_compressor_is_unavailable_with_a_message(serve: Any) -> None:
    s = await serve()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.stub.Compress(compress_pb2.CompressRequest(text="hello"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # as HTTP's 503
    assert ("x-promptwire-error-code", "no_compressor") in tuple(err.value.trailing_metadata() or ())
    assert "stages.compress.model" in (err.value.details() or "")  # says how to configure one


class DropLastWord:
    """A real Stage (the protocol's plug point): drops the last word of the last user message."""

    name = "compress"

    def validate(self, options: Any) -> Any:
        from gateway.stages.base import check_options

        return check_options("compress", options, {"rate": float, "force_tokens": list})

    async def apply(self, req: Any, options: Any) -> Any:
        import dataclasses

        from gateway.stages.base import StageResult
        from gateway.types import ChatMessage, StageStats

        last = req.messages[-1]
        words = last.text().split(" ")
        new = ChatMessage(role=last.role, content=" ".join(words[:-1]), extra=last.extra)
        stats = StageStats("compress", len(words), len(words) - 1, 0.25, choice=f"rate={options.get('rate')}",
                           extra={"force_tokens": options.get("force_tokens", [])})  # fmt: skip
        return StageResult(dataclasses.replace(req, messages=(*req.messages[:-1], new)), stats)


async def test_stage_options_from_typed_fields_and_stats_in_trailers(
    upstream: UpstreamServer, register_stage: Any
) -> None:
    import dataclasses

    from gateway.stages.table import STAGES

    register_stage(dataclasses.replace(STAGES["compress"], factory=lambda config, deps: DropLastWord()))
    raw = {
        "backends": {"up": {"type": "openai", "base_url": upstream.url}},
        "default_stages": [{"name": "compress", "options": {"rate": 0.5}, "client_options": ["*"]}],
        "stages": {"compress": {"model": "unused: the test's stage stands in for the compressor"}},
    }
    gw = Gateway(GatewayConfig.model_validate(raw))
    await gw.start()
    handle = await start_grpc_server(gw, "127.0.0.1", 0, health_interval_s=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            options = options_pb2.CompressStageOptions(rate=0.25, force_tokens=["x", "y"])
            stages = options_pb2.StageOverrides(compress=options_pb2.CompressStage(options=options))
            messages, trailers = await _collect(stub.Chat(_chat("keep these words", stages=stages)))
            last = messages[-1]
            assert "".join(c.text for m in messages[:-1] for c in m.choices) == "echo: keep these"
            [st] = last.stats
            assert (st.stage, st.tokens_before, st.tokens_after, st.ms, st.choice) == (
                "compress", 3, 2, 0.25, "rate=0.25"
            )  # fmt: skip
            assert list(st.extra["force_tokens"]) == ["x", "y"]
            assert json.loads(trailers["x-promptwire-stats"]) == [
                {"stage": "compress", "tokens_before": 3, "tokens_after": 2, "ms": 0.25, "choice": "rate=0.25",
                 "extra": {"force_tokens": ["x", "y"]}}
            ]  # fmt: skip
            # `disabled` turns the stage off for this request
            off = options_pb2.StageOverrides(compress=options_pb2.CompressStage(disabled=options_pb2.Disabled()))
            messages, trailers = await _collect(stub.Chat(_chat("keep these words", stages=off)))
            assert "".join(c.text for m in messages[:-1] for c in m.choices) == "echo: keep these words"
            assert json.loads(trailers["x-promptwire-stats"]) == [] and not messages[-1].stats
            # an option the stage does not know is INVALID_ARGUMENT naming the gRPC field
            bad = options_pb2.StageOverrides(
                compress=options_pb2.CompressStage(options=options_pb2.CompressStageOptions(target_token=5))
            )
            err = await _code_of(stub.Chat(_chat("x", stages=bad)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "(parameter: stages.compress.options.target_token)" in (err.details() or "")
    finally:
        await handle.stop(0)
        await gw.aclose()


async def test_compress_calls_the_configured_handler_and_maps_its_errors(upstream: UpstreamServer) -> None:
    from gateway.errors import InvalidRequest

    seen: list[compress_pb2.CompressRequest] = []

    async def handler(req: compress_pb2.CompressRequest) -> compress_pb2.CompressResponse:
        seen.append(req)
        if req.HasField("rate") and not 0 < req.rate <= 1:
            raise InvalidRequest("rate must be in (0, 1]", param="rate")
        words = req.text.split()
        kept = words[::2]
        return compress_pb2.CompressResponse(
            compressed_text=" ".join(kept), origin_tokens=len(words), compressed_tokens=len(kept)
        )

    gw = Gateway(GatewayConfig.model_validate({"backends": {"up": {"type": "openai", "base_url": upstream.url}}}))
    await gw.start()
    handle = await start_grpc_server(gw, "127.0.0.1", 0, compress=handler, health_interval_s=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            reply = await stub.Compress(compress_pb2.CompressRequest(text="a b c d e", rate=0.5))
            assert (reply.compressed_text, reply.origin_tokens, reply.compressed_tokens) == ("a c e", 5, 3)
            assert seen[0].rate == 0.5
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Compress(compress_pb2.CompressRequest(text="x", rate=1.5))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "(parameter: rate)" in (err.value.details() or "")
    finally:
        await handle.stop(0)
        await gw.aclose()


async def test_graceful_shutdown_lets_in_flight_streams_finish(serve: Any) -> None:
    s = await serve()
    s.upstream.knobs.chunk_delay_s = 0.1
    in_flight = s.stub.Chat(_chat("one two three four"))
    assert (await in_flight.read()).choices  # started
    # what `promptwire serve` does on SIGTERM: health off, admission off, then stop with a grace
    await s.handle.set_not_serving()
    s.gateway.begin_shutdown()
    err = await _code_of(s.stub.Chat(_chat("late")))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in (err.details() or "")
    stopping = asyncio.create_task(s.handle.stop(5.0))
    rest = []
    while (m := await in_flight.read()) is not grpc.aio.EOF:
        rest.append(m)
    assert rest[-1].done and rest[-1].choices[0].finish_reason == "stop"
    assert await in_flight.code() == grpc.StatusCode.OK
    await stopping


async def test_request_over_the_body_limit_is_refused(serve: Any) -> None:
    s = await serve(limits={"max_body_bytes": 1000})
    err = await _code_of(s.stub.Chat(_chat("x" * 2000)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # grpc's own answer to an oversized message
    assert s.upstream.app.generation_requests == 0
    messages, _ = await _collect(s.stub.Chat(_chat("small")))
    assert messages[-1].done
