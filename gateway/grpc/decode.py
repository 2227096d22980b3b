"""gRPC requests whose bytes are not a valid message answer INVALID_ARGUMENT, not UNKNOWN.

grpcio decodes a request before any servicer code runs, and a ``DecodeError`` there becomes status
UNKNOWN with a traceback in the log. This interceptor decodes leniently (the error is kept as a value)
and answers such a request with INVALID_ARGUMENT naming the message type, before the method runs."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

__all__ = ["UndecodableRequests"]


class _Undecodable:
    """What the lenient deserializer returns for bytes that do not decode."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as e:
            return _Undecodable(str(e))

    return parse


async def _reject(request: _Undecodable, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {request.reason}")


def _unary_request(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """The method's behaviour, answering undecodable requests itself."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await _reject(request, context)
            async for item in behaviour(request, context):
                yield item

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await _reject(request, context)
        result = behaviour(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


class UndecodableRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpcio ships no stubs
    """Unary-request methods (unary-unary and server-streaming) decode leniently; see the module doc."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        kind = "unary_stream" if handler.response_streaming else "unary_unary"
        behaviour = getattr(handler, kind)
        if behaviour is None:
            return handler
        replace: Any = handler._replace  # grpcio's handlers are namedtuples
        updated: grpc.RpcMethodHandler = replace(request_deserializer=_lenient(handler.request_deserializer),
                                                 **{kind: _unary_request(behaviour)})
        return updated
