"""OpenTelemetry tracing (`otel: true`): spans of real requests through a running proxy, read from the
SDK's in-memory exporter; trace context in (client traceparent) and out (upstream traceparent)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.observe import tracing
from gateway.types import ChatMessage, GatewayRequest
from tests.gateway.test_pipeline import KEEP_LAST, _config
from tests.support.proxy import RunningProxy, upstream_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(autouse=True)
def _no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """No exporter from the environment: each test reads spans from its own in-memory exporter."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)


def _traced(proxy: RunningProxy) -> InMemorySpanExporter:
    assert proxy.gateway is not None and proxy.gateway.tracer.enabled
    exporter = InMemorySpanExporter()
    proxy.gateway.tracer.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _by_name(spans: Any) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def _one_trace(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, dict[str, list[ReadableSpan]]]:
    spans = exporter.get_finished_spans()
    names = _by_name(spans)
    (root,) = names["promptwire.generate"]
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    for s in spans:
        if s is not root:
            assert s.parent is not None and s.parent.span_id == root.context.span_id, s.name
    return root, names


HISTORY = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "an answer"},
    {"role": "user", "content": "and then"},
]


def test_chat_request_records_root_stage_and_upstream_spans(make_upstream: Any, make_proxy: Any,
                                                           register_stage: Any) -> None:
    register_stage(KEEP_LAST)
    up = make_upstream()
    proxy = make_proxy({**_config(up.url), "otel": True})
    exporter = _traced(proxy)
    with proxy.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="test-model", messages=HISTORY)
    rid = raw.headers["x-request-id"]
    root, names = _one_trace(exporter)
    assert set(names) == {"promptwire.generate", "promptwire.stage.keep_last", "promptwire.upstream"}
    a = root.attributes
    assert root.kind == SpanKind.SERVER and root.parent is None
    assert root.status.status_code == StatusCode.OK
    assert a["promptwire.request_id"] == rid
    assert a["gen_ai.request.model"] == "test-model" and a["promptwire.kind"] == "chat"
    assert a["gen_ai.operation.name"] == "chat" and a["promptwire.stream"] is False
    assert a["promptwire.outcome"] == "ok"
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    usage = raw.parse().usage
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens > 0
    assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens > 0
    assert 0 < a["promptwire.overhead_ms"] < 1000
    (stage,) = names["promptwire.stage.keep_last"]
    assert stage.attributes["promptwire.stage.choice"] == "kept 1"
    assert stage.attributes["promptwire.stage.tokens_saved"] > 0
    (upstream,) = names["promptwire.upstream"]
    assert upstream.kind == SpanKind.CLIENT and upstream.status.status_code == StatusCode.OK
    assert upstream.attributes["promptwire.backend"] == "up1"
    # stages run before the upstream call, and both inside the root
    assert root.start_time <= stage.start_time <= stage.end_time <= upstream.start_time
    assert upstream.end_time <= root.end_time


def test_stream_spans_cover_the_whole_stream(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(chunk_delay_s=0.02)
    proxy = make_proxy({**upstream_config(up.url), "otel": True})
    exporter = _traced(proxy)
    with proxy.client() as client:
        chunks = list(client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "one two three four"}], stream=True,
            stream_options={"include_usage": True},
        ))
    assert chunks[-1].usage is not None
    root, names = _one_trace(exporter)
    a = root.attributes
    assert a["promptwire.stream"] is True and a["promptwire.outcome"] == "ok"
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.output_tokens"] == chunks[-1].usage.completion_tokens > 0
    assert a["promptwire.ttft_ms"] >= a["promptwire.overhead_ms"] > 0
    (upstream,) = names["promptwire.upstream"]
    assert [e.name for e in upstream.events] == ["first_chunk"]
    # the upstream span lasts until the stream's end: 5 words, 20 ms apart
    assert (upstream.end_time - upstream.start_time) / 1e6 >= 60
    assert upstream.status.status_code == StatusCode.OK


def test_failures_and_failover_are_recorded(make_upstream: Any, make_proxy: Any) -> None:
    bad, good = make_upstream(fail_next=1), make_upstream()
    cfg = {**upstream_config(bad.url, good.url), "otel": True,
           "models": [{"match": "test-model", "backends": ["up1", "up2"]}]}
    cfg["backends"]["up1"]["retries"] = {"max_attempts": 1}
    proxy = make_proxy(cfg)
    exporter = _traced(proxy)
    with proxy.client() as client:
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
    root, names = _one_trace(exporter)
    assert root.status.status_code == StatusCode.OK
    failed, ok = sorted(names["promptwire.upstream"], key=lambda s: s.start_time)
    assert failed.attributes["promptwire.backend"] == "up1" and failed.status.status_code == StatusCode.ERROR
    assert ok.attributes["promptwire.backend"] == "up2" and ok.status.status_code == StatusCode.OK
    assert failed.context.span_id != ok.context.span_id

    exporter.clear()
    with proxy.client() as client, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="test-model-2", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"promptwire": {"nope": {}}})
    # a request refused before any upstream call still gets its root span, marked failed
    (root,) = exporter.get_finished_spans() or [None]
    assert root is not None and root.name == "promptwire.generate"
    assert root.status.status_code == StatusCode.ERROR and root.attributes["promptwire.outcome"] == "error"
    assert root.attributes["promptwire.http_status"] == 400


def test_incoming_traceparent_is_the_parent(make_upstream: Any, make_proxy: Any) -> None:
    """The core honours a W3C traceparent in the headers the front end hands it (ASGI bytes or gRPC str)."""
    up = make_upstream()
    proxy = make_proxy({**upstream_config(up.url), "otel": True})
    exporter = _traced(proxy)
    gw = proxy.gateway
    assert gw is not None
    for headers in ([(b"host", b"x"), (b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"k=v")],
                    [("traceparent", TRACEPARENT), ("tracestate", "k=v")]):
        exporter.clear()
        req = GatewayRequest("rid-1", "chat", "test-model", (ChatMessage("user", "hi"),))
        proxy.run(gw.generate(req, trace_headers=headers))
        root, _ = _one_trace(exporter)
        assert format(root.context.trace_id, "032x") == TRACE_ID
        assert root.parent is not None and root.parent.is_remote
        assert format(root.parent.span_id, "016x") == PARENT_ID
        assert root.context.trace_state.get("k") == "v"
    # garbage is ignored: a new trace
    exporter.clear()
    req = GatewayRequest("rid-2", "chat", "test-model", (ChatMessage("user", "hi"),), stream=True)

    async def stream() -> None:
        s = await gw.generate_stream(req, trace_headers=[(b"traceparent", b"00-zz-zz-01")])
        try:
            async for _ in s:
                pass
        finally:
            await s.aclose()

    proxy.run(stream())
    root, _ = _one_trace(exporter)
    assert root.parent is None and format(root.context.trace_id, "032x") != TRACE_ID


def test_http_client_traceparent_is_honoured(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy({**upstream_config(up.url), "otel": True})
    exporter = _traced(proxy)
    for stream in (False, True):
        exporter.clear()
        with proxy.client(default_headers={"traceparent": TRACEPARENT}) as client:
            out = client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}],
                                                 stream=stream)
            if stream:
                list(out)  # type: ignore[arg-type]
        root, _ = _one_trace(exporter)
        assert format(root.context.trace_id, "032x") == TRACE_ID
        assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID


async def _grpc_chat(up: Any, metadata: tuple[tuple[str, str], ...]) -> InMemorySpanExporter:
    """One gRPC Chat through a real gRPC server on a traced gateway; its exporter."""
    import grpc

    from gateway.config import GatewayConfig
    from gateway.core.gateway import Gateway
    from gateway.grpc.server import start_grpc_server
    from protos.promptwire.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    gw = Gateway(GatewayConfig.model_validate({**upstream_config(up.url), "otel": True}))
    await gw.start()
    exporter = InMemorySpanExporter()
    gw.tracer.provider.add_span_processor(SimpleSpanProcessor(exporter))
    handle = await start_grpc_server(gw, "127.0.0.1", 0, health_interval_s=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            req = gateway_pb2.ChatRequest(model="test-model", messages=[common_pb2.ChatMessage(role="user", content="hi")])
            messages = [m async for m in gateway_pb2_grpc.GatewayStub(channel).Chat(req, metadata=metadata)]
            assert messages[-1].done
    finally:
        await handle.stop(0)
        await gw.aclose()
    return exporter


async def test_grpc_requests_are_traced(make_upstream: Any) -> None:
    exporter = await _grpc_chat(make_upstream(), (("x-request-id", "grpc-1"),))
    root, names = _one_trace(exporter)
    assert set(names) == {"promptwire.generate", "promptwire.upstream"}
    a = root.attributes
    assert a["promptwire.request_id"] == "grpc-1" and a["promptwire.stream"] is True
    assert a["promptwire.outcome"] == "ok" and a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.input_tokens"] == 1


async def test_grpc_client_traceparent_is_honoured(make_upstream: Any) -> None:
    exporter = await _grpc_chat(make_upstream(), (("traceparent", TRACEPARENT),))
    root, _ = _one_trace(exporter)
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID


def test_traceparent_is_sent_upstream(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy({**upstream_config(up.url), "otel": True})
    exporter = _traced(proxy)
    for stream in (False, True):
        exporter.clear()
        with proxy.client() as client:
            out = client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}],
                                                 stream=stream)
            if stream:
                list(out)  # type: ignore[arg-type]
        root, names = _one_trace(exporter)
        (upstream,) = names["promptwire.upstream"]
        sent = up.requests[-1].headers.get("traceparent", "")
        # the upstream sees the upstream attempt's span as its parent, in this request's trace, sampled
        version, trace_id, span_id, flags = sent.split("-")
        assert (version, trace_id, span_id) == ("00", f"{root.context.trace_id:032x}", f"{upstream.context.span_id:016x}")
        assert int(flags, 16) & 1


def test_inject_adds_the_current_span_only_when_tracing_is_on() -> None:
    headers: list[tuple[bytes, bytes]] = []
    tracer = tracing.Tracer(True)  # sets the module up (tracing is on in this process from here)
    tracing.inject(headers)
    assert headers == []  # no current span
    req = GatewayRequest("r", "chat", "m", (ChatMessage("user", "hi"),))
    rt = tracer.request(req, None)
    with rt.upstream("b", "m", stream=False):
        tracing.inject(headers)
    rt.end(_completion(), 0.1)
    ((name, value),) = headers
    assert name == b"traceparent" and value.startswith(f"00-{rt.span.get_span_context().trace_id:032x}-".encode())
    tracer.shutdown()


def _completion() -> Any:
    from gateway.types import Completion

    return Completion({"choices": [{"finish_reason": "length"}], "usage": {"prompt_tokens": 1}})


def test_tracing_off_creates_nothing(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(upstream_config(up.url))
    gw = proxy.gateway
    assert gw is not None and not gw.tracer.enabled and gw.tracer.provider is None
    with proxy.client() as client:
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
    assert "traceparent" not in up.requests[-1].headers


def test_provider_from_the_environment(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    t = tracing.Tracer(True)
    assert t.provider.resource.attributes["service.name"] == "promptwire"
    t.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gw")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    t = tracing.Tracer(True)
    assert t.provider.resource.attributes["service.name"] == "edge-gw"
    processors = t.provider._active_span_processor._span_processors
    assert [type(p) for p in processors] == [BatchSpanProcessor]
    t.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        with caplog.at_level(logging.WARNING):
            t = tracing.Tracer(True)
        assert "opentelemetry-exporter-otlp-proto-http is not installed" in caplog.text
        assert t.enabled  # spans and propagation still work, nothing is exported
        t.shutdown()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.Tracer(True).enabled


@pytest.fixture
def batch_exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


def test_spans_are_flushed_when_the_gateway_closes(
    make_upstream: Any, batch_exporter: InMemorySpanExporter
) -> None:
    up = make_upstream()
    proxy = RunningProxy({**upstream_config(up.url), "otel": True}).start()
    try:
        assert proxy.gateway is not None
        # batched with a long delay: nothing is exported until the provider is flushed
        proxy.gateway.tracer.provider.add_span_processor(
            BatchSpanProcessor(batch_exporter, schedule_delay_millis=600_000)
        )
        with proxy.client() as client:
            client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
        assert batch_exporter.get_finished_spans() == ()
    finally:
        proxy.stop()
    assert {s.name for s in batch_exporter.get_finished_spans()} == {"promptwire.generate", "promptwire.upstream"}
