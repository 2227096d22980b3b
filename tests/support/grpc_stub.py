"""A started Gateway behind a real grpc.aio server on 127.0.0.1 (port 0), yielding a client stub."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from gateway.config import GatewayConfig
from gateway.core.gateway import Gateway
from gateway.grpc.server import start_grpc_server
from protos.promptwire.v1 import gateway_pb2_grpc

__all__ = ["grpc_stub", "serving_channel", "serving_stub"]


@contextlib.asynccontextmanager
async def serving_channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    """A gRPC server for an already started ``gateway`` and a channel to it; both closed on exit."""
    handle = await start_grpc_server(gateway, "127.0.0.1", 0, health_interval_s=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            yield channel
    finally:
        await handle.stop(0)


@contextlib.asynccontextmanager
async def serving_stub(gateway: Gateway) -> AsyncIterator[Any]:
    """A gRPC server for an already started ``gateway`` and a stub on it; both closed on exit."""
    async with serving_channel(gateway) as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def grpc_stub(config: Mapping[str, Any]) -> AsyncIterator[Any]:
    """Build and start a Gateway from a config dict, serve it over gRPC, yield a stub; close all on exit."""
    gw = Gateway(GatewayConfig.model_validate(dict(config)))
    await gw.start()
    try:
        async with serving_stub(gw) as stub:
            yield stub
    finally:
        await gw.aclose()
