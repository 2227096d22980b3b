"""server.health_port: gRPC health and /healthz /readyz on one port, nothing else; liveness vs readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.observe.health import LIVENESS_SERVICE, HealthListener, HealthStatus

READY = "promptwire.v1.Gateway"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FakeGateway:
    """What the listener reads of the gateway: ready() and shutting_down."""

    def __init__(self) -> None:
        self.is_ready = True
        self.shutting_down = False

    async def ready(self) -> bool:
        return self.is_ready and not self.shutting_down


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeGateway, HealthStatus, HealthListener]]:
    gw = FakeGateway()
    status = HealthStatus(gw, ("", READY))  # type: ignore[arg-type]
    listener = await HealthListener.start(gw, status, "127.0.0.1", 0)  # type: ignore[arg-type]
    yield gw, status, listener
    await status.close()
    await listener.stop()


async def check(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(resp.status)


async def test_grpc_health_and_http_on_one_port(served: tuple[FakeGateway, HealthStatus, HealthListener]) -> None:
    _, _, listener = served
    port = listener.port
    assert await check(port, "") == SERVING
    assert await check(port, READY) == SERVING
    assert await check(port, LIVENESS_SERVICE) == SERVING
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200


async def test_nothing_else_is_served(served: tuple[FakeGateway, HealthStatus, HealthListener]) -> None:
    port = served[2].port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        for path in ("/metrics", "/v1/models", "/openapi.json"):
            assert (await http.get(path)).status_code == 404, path
        r = await http.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert r.status_code == 404
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary("/promptwire.v1.Gateway/ListModels")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_readiness_follows_the_gateway_liveness_does_not(
    served: tuple[FakeGateway, HealthStatus, HealthListener],
) -> None:
    gw, status, listener = served
    port = listener.port
    gw.is_ready = False  # e.g. the upstream is unreachable: out of the Service, but not restarted
    await status.set_ready(await gw.ready())
    assert await check(port, READY) == NOT_SERVING and await check(port, "") == NOT_SERVING
    assert await check(port, LIVENESS_SERVICE) == SERVING
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200

    gw.is_ready = True
    await status.set_ready(True)
    assert await check(port, READY) == SERVING
    gw.shutting_down = True  # SIGTERM: readiness off for good, liveness on while draining
    await status.shutdown()
    await status.set_ready(True)
    assert await check(port, READY) == NOT_SERVING
    assert await check(port, LIVENESS_SERVICE) == SERVING
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        r = await http.get("/readyz")
        assert r.status_code == 503 and r.json() == {"status": "shutting down"}


async def test_stop_closes_the_port(served: tuple[FakeGateway, HealthStatus, HealthListener]) -> None:
    _, status, listener = served
    await status.close()
    await listener.stop()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}", timeout=5) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/healthz")


def test_config_key_and_cli_flag() -> None:
    from gateway.cli import _serve_config, build_parser

    parser, _ = build_parser()
    args = parser.parse_args(["serve", "--upstream", "http://127.0.0.1:9/v1", "--health-port", "8081"])
    config, _ = _serve_config(args, env={})
    assert (config.server.health_port, config.server.health_host) == (8081, "0.0.0.0")
    args = parser.parse_args(["serve", "--upstream", "http://127.0.0.1:9/v1"])
    assert _serve_config(args, env={})[0].server.health_port is None  # off unless asked for


@pytest.mark.parametrize(("server", "message"), [
    ("{health_port: 8080}", "health_port 8080 is also http_port"),
    ("{grpc_port: 9000, health_port: 9000}", "health_port 9000 is also grpc_port"),
    ("{health_port: 70000}", "health_port"),
])
def test_health_port_config_errors(server: str, message: str) -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config(f"server: {server}")
