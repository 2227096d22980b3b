"""Log lines of gRPC requests (and the HTTP lines they mirror): access lines, error lines, request ids
as a structured field, never prompt text."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import grpc
import pytest

from gateway.observe.logs import JsonFormatter
from protos.promptwire.v1 import common_pb2, gateway_pb2
from tests.support.grpc_stub import grpc_stub
from tests.support.proxy import upstream_config
from tests.support.wait import until, until_async

SECRET = "zebra-marmalade-7731"  # in every prompt; must never reach a log line
ACCESS_FIELDS = {"request_id", "api", "model", "kind", "stream", "status", "ms", "overhead_ms", "stages"}


def _chat(model: str = "test-model", **kw: Any) -> gateway_pb2.ChatRequest:
    msg = common_pb2.ChatMessage(role="user", content=f"say {SECRET}")
    return gateway_pb2.ChatRequest(model=model, messages=[msg], **kw)


def _cfg(url: str, **extra: Any) -> dict[str, Any]:
    return {"backends": {"up": {"type": "openai", "base_url": url, "retries": {"max_attempts": 1}}}, **extra}


def _lines(caplog: pytest.LogCaptureFixture, rid: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "request_id", None) == rid]


def _no_prompt_text(caplog: pytest.LogCaptureFixture) -> None:
    fmt = JsonFormatter()
    assert all(SECRET not in fmt.format(r) for r in caplog.records)


async def test_grpc_access_line_per_rpc_and_error_lines(
    make_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    up = make_upstream()
    with caplog.at_level(logging.DEBUG):
        async with grpc_stub(_cfg(up.url, server={"access_log": True})) as stub:
            msgs = [m async for m in stub.Chat(_chat(request_id="grpc-ok-1"), timeout=10)]
            with pytest.raises(grpc.aio.AioRpcError) as nf:  # the upstream's 404: NOT_FOUND
                [m async for m in stub.Chat(_chat(model="nope", request_id="grpc-404-1"), timeout=10)]
            up.knobs.fail_next, up.knobs.fail_status = 1, 500
            with pytest.raises(grpc.aio.AioRpcError) as unavailable:
                [m async for m in stub.Chat(_chat(request_id="grpc-500-1"), timeout=10)]
    assert msgs[-1].done
    assert nf.value.code() == grpc.StatusCode.NOT_FOUND
    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE

    [ok] = _lines(caplog, "grpc-ok-1")  # success: only the access line
    assert ok.levelno == logging.INFO and ACCESS_FIELDS <= set(vars(ok))
    got = {k: getattr(ok, k) for k in ("api", "model", "kind", "stream", "status")}
    assert got == {"api": "grpc", "model": "test-model", "kind": "chat", "stream": True, "status": 200}
    assert ok.ms >= ok.overhead_ms >= 0 and ok.stages == []

    for rid, status, level in (("grpc-404-1", 404, logging.INFO), ("grpc-500-1", 502, logging.WARNING)):
        lines = _lines(caplog, rid)
        [error] = [r for r in lines if not hasattr(r, "kind")]
        [access] = [r for r in lines if hasattr(r, "kind")]
        assert (error.levelno, error.status, error.api) == (level, status, "grpc"), rid
        assert access.status == status and access.stages == [] and access.overhead_ms == 0.0
    _no_prompt_text(caplog)


async def test_grpc_errors_are_logged_without_access_log(
    make_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    up = make_upstream()
    cfg = _cfg(up.url, auth={"keys": [{"id": "k", "sha256": hashlib.sha256(b"sk-test-key-1").hexdigest()}]})
    with caplog.at_level(logging.INFO):
        async with grpc_stub(cfg) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as e:  # no key
                [m async for m in stub.Chat(_chat(request_id="grpc-401-1"), timeout=10)]
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as e:  # ListModels: the id comes from metadata
                await stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=[("x-request-id", "grpc-lm-1")])
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert dict(e.value.trailing_metadata())["x-request-id"] == "grpc-lm-1"
    for rid in ("grpc-401-1", "grpc-lm-1"):
        [line] = _lines(caplog, rid)  # the error line only: access_log is off
        assert (line.levelno, line.status, line.code) == (logging.INFO, 401, "invalid_api_key"), vars(line)
    _no_prompt_text(caplog)


async def test_grpc_mid_stream_failure_and_cancel_are_logged(
    make_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    up = make_upstream(die_after_chunks=2)
    with caplog.at_level(logging.INFO):
        async with grpc_stub(_cfg(up.url, server={"access_log": True})) as stub:
            with pytest.raises(grpc.aio.AioRpcError):
                [m async for m in stub.Chat(_chat(request_id="grpc-mid-1"), timeout=10)]
            up.knobs.die_after_chunks, up.knobs.chunk_delay_s = None, 0.3
            call = stub.Chat(_chat(request_id="grpc-cancel-1"), timeout=10)
            await call.read()  # the first message: the stream has started
            call.cancel()
            await until_async(lambda: len(_lines(caplog, "grpc-cancel-1")) >= 2, "the cancelled call's log lines")
    failed = _lines(caplog, "grpc-mid-1")
    assert {(r.levelno, r.status) for r in failed} == {(logging.WARNING, 502), (logging.INFO, 502)}
    assert any("after it started" in r.getMessage() for r in failed)
    cancelled = _lines(caplog, "grpc-cancel-1")
    assert {r.levelno for r in cancelled} == {logging.INFO}
    assert [r.status for r in cancelled if hasattr(r, "kind")] == [499]
    _no_prompt_text(caplog)


def test_http_error_and_access_lines_carry_the_request_id(
    make_upstream: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    up = make_upstream()
    proxy = make_proxy(upstream_config(up.url, server={"grpc_port": None, "access_log": True}))
    body = {"model": "test-model", "messages": [{"role": "user", "content": SECRET}], "temperature": "hot"}
    with caplog.at_level(logging.INFO), proxy.http() as http:
        r = http.post("/v1/chat/completions", json=body, headers={"x-request-id": "http-400-1"})
        assert r.status_code == 400
        until(lambda: len(_lines(caplog, "http-400-1")) >= 2, "the error and access lines")
    lines = _lines(caplog, "http-400-1")
    [error] = [r for r in lines if not hasattr(r, "kind")]
    [access] = [r for r in lines if hasattr(r, "kind")]
    assert (error.levelno, error.status, error.api) == (logging.INFO, 400, "http")
    assert ACCESS_FIELDS <= set(vars(access)) and (access.status, access.api) == (400, "http")
    _no_prompt_text(caplog)


def test_json_lines_have_request_id_as_a_field() -> None:
    rec = logging.LogRecord("gateway.grpc.server", logging.WARNING, __file__, 1, "request %s: %s", ("r-9", "x"), None)
    rec.__dict__.update({"request_id": "r-9", "status": 502})
    out = json.loads(JsonFormatter().format(rec))
    assert (out["request_id"], out["status"], out["level"]) == ("r-9", 502, "warning")
