"""Every fault of the fault-injecting upstream (tests/support/faults.py), end to end over HTTP (whole and
streamed) and gRPC: what the client sees, how many attempts reached the upstream, that nothing outlives
its time limit by more than a second, and that a client leaving closes the upstream connection within
100 ms."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio

from gateway.config import GatewayConfig
from gateway.core.gateway import Gateway
from protos.promptwire.v1 import common_pb2, gateway_pb2
from tests.support.faults import FaultServer
from tests.support.grpc_stub import serving_stub
from tests.support.proxy import RunningProxy

READ_S = 0.5  # backends.<name>.timeouts.read_s: the longest silence
REQUEST_S = 1.5  # limits.request_timeout_s: the whole request
ATTEMPTS = 3  # retries.max_attempts
LIMIT = 1024 * 1024  # max_response_bytes (the oversized mode sends 4 MiB)
CLOSE_WITHIN_S = 0.1
MSG = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Expect:
    """What the client sees for one fault: HTTP status of a whole response; for a stream, the status and
    the error event's code (None: an ordinary error response before the stream started); the gRPC code;
    attempts at the upstream; the time limit that ends it (seconds) or None when it fails at once."""

    whole: int
    stream_status: int
    stream_error: str | None
    grpc: grpc.StatusCode
    attempts: int
    limit_s: float | None = None


UNAVAILABLE, DEADLINE = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
EXPECT: dict[str, Expect] = {
    "500": Expect(502, 502, None, UNAVAILABLE, ATTEMPTS),
    "503": Expect(502, 502, None, UNAVAILABLE, ATTEMPTS),
    "429": Expect(429, 429, None, grpc.StatusCode.RESOURCE_EXHAUSTED, ATTEMPTS),
    "slow_headers": Expect(504, 504, None, DEADLINE, 1, READ_S),
    "slow_body": Expect(504, 200, "timeout", DEADLINE, 1, READ_S),
    "reset_before_first_byte": Expect(502, 502, None, UNAVAILABLE, 1),
    "reset_mid_stream": Expect(502, 200, "upstream_error", UNAVAILABLE, 1),
    "truncated_sse": Expect(502, 200, "upstream_error", UNAVAILABLE, 1),
    "invalid_json": Expect(502, 200, "upstream_error", UNAVAILABLE, 1),
    "oversized": Expect(502, 200, "upstream_error", UNAVAILABLE, 1),
    "never_ends": Expect(504, 200, "timeout", DEADLINE, 1, REQUEST_S),
}


def _config(url: str) -> dict[str, Any]:
    return {
        "server": {"grpc_port": None},
        "limits": {"request_timeout_s": REQUEST_S},
        "backends": {"up": {"type": "openai", "base_url": url, "models": ["m"], "max_response_bytes": LIMIT,
                            "timeouts": {"connect_s": 2, "read_s": READ_S, "total_s": 30},
                            "retries": {"max_attempts": ATTEMPTS, "backoff_s": 0.001, "max_backoff_s": 0.002}}},
    }


def _bound(expect: Expect) -> float:
    """How long the client may wait: the fault's time limit plus one second (the issue's rule), or the
    request's own limit plus one second for faults that should fail at once."""
    return (expect.limit_s if expect.limit_s is not None else REQUEST_S) + 1.0


@pytest.fixture(scope="module")
def proxied() -> Any:
    """One fault server and one proxy on it for the module; each test sets the mode (and the count)."""
    with FaultServer() as up, RunningProxy(_config(up.url)) as proxy:
        yield up, proxy


def _mode(up: FaultServer, mode: str) -> None:
    up.mode = mode
    up.attempts = 0


@pytest.mark.parametrize("mode", list(EXPECT))
def test_http_whole_response(mode: str, proxied: Any) -> None:
    expect = EXPECT[mode]
    up, proxy = proxied
    _mode(up, mode)
    with proxy.http() as http:
        t0 = time.monotonic()
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": MSG})
        took = time.monotonic() - t0
    assert r.status_code == expect.whole, r.text
    err = r.json()["error"]
    assert err["message"] and "Traceback" not in r.text
    if mode == "429":
        assert r.headers["retry-after"] == "1"
    assert up.attempts == expect.attempts
    assert took < _bound(expect), f"{mode}: {took:.2f} s"


def _sse(text: str) -> tuple[list[dict[str, Any]], bool]:
    """The stream's data events (parsed) and whether it ended with [DONE]."""
    events, done = [], False
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[6:]
            if payload == "[DONE]":
                done = True
            else:
                events.append(json.loads(payload))  # every relayed event is whole JSON
    return events, done


@pytest.mark.parametrize("mode", list(EXPECT))
def test_http_stream(mode: str, proxied: Any) -> None:
    expect = EXPECT[mode]
    up, proxy = proxied
    _mode(up, mode)
    with proxy.http() as http:
        t0 = time.monotonic()
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": MSG, "stream": True})
        took = time.monotonic() - t0
    assert r.status_code == expect.stream_status, r.text
    if expect.stream_error is None:
        assert r.json()["error"]["message"]
    else:
        events, done = _sse(r.text)
        assert not done, "a failed stream must not end with [DONE]"
        *chunks, last = events
        assert chunks and all("choices" in c for c in chunks), "the chunks before the fault are relayed"
        assert last["error"]["code"] == expect.stream_error, last
    assert up.attempts == expect.attempts
    assert took < _bound(expect), f"{mode}: {took:.2f} s"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def grpc_served() -> AsyncIterator[tuple[Any, FaultServer]]:
    """One fault server and one gateway on it served over gRPC, for the module."""
    with FaultServer() as up:
        gw = Gateway(GatewayConfig.model_validate(_config(up.url)))
        await gw.start()
        try:
            async with serving_stub(gw) as stub:
                yield stub, up
        finally:
            await gw.aclose()


@pytest_asyncio.fixture
async def grpc_gateway() -> AsyncIterator[Any]:
    """``start(mode)`` -> (stub, upstream): a gateway on a fault server of its own, served over gRPC."""
    opened: list[Any] = []

    async def start(mode: str) -> tuple[Any, FaultServer]:
        up = FaultServer(mode).__enter__()
        gw = Gateway(GatewayConfig.model_validate(_config(up.url)))
        await gw.start()
        serving = serving_stub(gw)
        stub = await serving.__aenter__()
        opened.append((up, gw, serving))
        return stub, up

    yield start
    for up, gw, serving in reversed(opened):
        await serving.__aexit__(None, None, None)
        await gw.aclose()
        up.__exit__(None, None, None)


def _chat() -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(model="m", messages=[common_pb2.ChatMessage(role="user", content="hi")])


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("mode", list(EXPECT))
async def test_grpc(mode: str, grpc_served: tuple[Any, FaultServer]) -> None:
    expect = EXPECT[mode]
    stub, up = grpc_served
    _mode(up, mode)
    got: list[Any] = []
    t0 = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for m in stub.Chat(_chat(), timeout=30):
            got.append(m)
    took = time.monotonic() - t0
    assert ei.value.code() == expect.grpc, (mode, ei.value.code(), ei.value.details())
    assert ei.value.details() and "internal error" not in ei.value.details()
    assert not any(m.done for m in got)
    assert up.attempts == expect.attempts
    assert took < _bound(expect), f"{mode}: {took:.2f} s"


# ----- the client leaves: the upstream connection is closed at once ------------------------------------


def _raw_post(port: int, body: dict[str, Any]) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(data), data))
    return s


@pytest.mark.parametrize("stream", [True, False])
def test_http_client_disconnect_closes_the_upstream_connection(stream: bool, make_proxy: Any) -> None:
    with FaultServer("hold") as up:
        proxy = make_proxy(_config(up.url))
        s = _raw_post(proxy.port, {"model": "m", "messages": MSG, "stream": stream})
        try:
            if stream:  # the first chunk reached the client
                got = b""
                while b"data: " not in got:
                    part = s.recv(65536)
                    assert part, got
                    got += part
            else:  # the upstream sent the head and the first bytes; the gateway waits for the rest
                assert up.first_byte_sent.wait(30)
        finally:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            t_gone = time.monotonic()
            s.close()
        closed_at = up.wait_closed(0)
    assert closed_at - t_gone < CLOSE_WITHIN_S, f"upstream connection closed {closed_at - t_gone:.3f} s later"
    assert up.attempts == 1


async def test_grpc_cancel_closes_the_upstream_connection(grpc_gateway: Any) -> None:
    stub, up = await grpc_gateway("hold")
    call = stub.Chat(_chat(), timeout=30)
    first = await call.read()
    assert first.choices[0].text == "first"
    t_gone = time.monotonic()
    call.cancel()
    closed_at = await asyncio.to_thread(up.wait_closed, 0)
    assert closed_at - t_gone < CLOSE_WITHIN_S, f"upstream connection closed {closed_at - t_gone:.3f} s later"
    assert up.attempts == 1


async def test_grpc_deadline_closes_the_upstream_connection(grpc_gateway: Any) -> None:
    """A client deadline is a client leaving too: the upstream is let go when it passes."""
    stub, up = await grpc_gateway("hold")
    t0 = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stub.Chat(_chat(), timeout=0.5):
            pass
    assert ei.value.code() == DEADLINE
    closed_at = await asyncio.to_thread(up.wait_closed, 0)
    assert closed_at - t0 < 0.5 + 1.0
