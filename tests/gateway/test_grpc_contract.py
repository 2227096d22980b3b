"""gRPC front end at its edges: the request id that goes upstream, deadlines in the metrics."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from gateway.config import GatewayConfig
from protos.promptwire.v1 import common_pb2, gateway_pb2
from tests.support.grpc_stub import grpc_stub


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
    from gateway.service import Gateway
    from tests.support.grpc_stub import serving_stub

    up = make_upstream(chunk_delay_s=0.3)
    gw = Gateway(GatewayConfig.model_validate(_cfg(up.url)))
    await gw.start()
    try:
        async with serving_stub(gw) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                [m async for m in stub.Chat(_chat(), timeout=0.8)]
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(0.1)
        text = gw.metrics.render().decode()
    finally:
        await gw.aclose()
    assert 'code="504"' in text, [
        ln for ln in text.splitlines() if ln.startswith("promptwire_requests_total{")
    ]
