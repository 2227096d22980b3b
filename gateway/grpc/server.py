"""The gRPC front end: promptwire.v1.Gateway over grpc.aio, plus grpc.health.v1 and server reflection."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gateway.core.gateway import Gateway, GatewayStream
from gateway.errors import PromptwireError
from gateway.grpc import convert as conv
from gateway.grpc.decode import UndecodableRequests
from gateway.observe.health import HealthStatus
from gateway.observe.logs import access_log, error_log
from gateway.observe.metrics import Metrics
from gateway.types import GatewayRequest
from protos.promptwire.v1 import compress_pb2, gateway_pb2, gateway_pb2_grpc

__all__ = ["SERVICE_NAME", "CompressHandler", "GrpcHandle", "prepare_grpc_server", "start_grpc_server"]

logger = logging.getLogger(__name__)

SERVICE_NAME: str = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
"""``promptwire.v1.Gateway``: the service name in health checks and reflection."""

CompressHandler = Callable[[compress_pb2.CompressRequest], Awaitable[compress_pb2.CompressResponse]]
"""``await handler(request) -> response``: the Compress logic, e.g. ``gateway.stages.compress_api.CompressAPI.handle_proto``;
it raises PromptwireError subclasses, which the servicer maps like any other."""

STATS_KEY = "x-promptwire-stats"
OVERHEAD_KEY = "x-promptwire-overhead-ms"
PARAM_KEY = "x-promptwire-error-param"
CODE_KEY = "x-promptwire-error-code"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _api_key(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The key from `authorization: Bearer KEY` or `x-api-key: KEY` metadata, None when absent."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif key == "x-api-key" and isinstance(value, str) and value:
            return value
    return None


def _request_id(context: grpc.aio.ServicerContext[Any, Any], field: str) -> str:
    """The client's id (request field, else `x-request-id` metadata) when sane, else a fresh one."""
    candidates = [field, *(v for k, v in context.invocation_metadata() or () if k == "x-request-id")]
    for raw in candidates:
        if isinstance(raw, str) and raw and len(raw) <= 200 and raw.isascii() and raw.isprintable():
            return raw
    return uuid.uuid4().hex


def _trailers(request_id: str | None, stream: GatewayStream | None) -> list[tuple[str, str]]:
    out = [] if request_id is None else [("x-request-id", request_id)]
    if stream is not None:
        out += [(STATS_KEY, conv.stats_json(stream.stats)), (OVERHEAD_KEY, f"{stream.overhead_ms:.3f}")]
    return out


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: PromptwireError,
    trailers: list[tuple[str, str]],
    decoder: str | None = None,
) -> NoReturn:
    """The one place a PromptwireError becomes a gRPC status."""
    details = exc.client_message
    trailers = list(trailers)
    if exc.param:
        path = conv.grpc_param(exc.param, decoder)
        details = f"{details} (parameter: {path})"
        trailers.append((PARAM_KEY, path))
    retry_after = getattr(exc, "retry_after", None)
    if exc.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None:
        trailers.append(("retry-after", f"{retry_after:g}"))
    if exc.code:
        trailers.append((CODE_KEY, exc.code))
    await context.abort(exc.grpc_code, details, trailing_metadata=tuple(trailers))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


@dataclasses.dataclass(slots=True)
class _Call:
    """What an RPC knows about itself so far, for its error status, trailers and log lines."""

    request_id: str | None = None
    stream: GatewayStream | None = None  # set once the first upstream chunk is in hand
    decoder: str | None = None
    model: str = "unknown"  # the client's model name once the request authenticated and validated


@asynccontextmanager
async def _status(
    context: grpc.aio.ServicerContext[Any, Any], metrics: Metrics, call: _Call | None = None
) -> AsyncIterator[None]:
    """Every RPC body runs inside this: gateway errors and unexpected failures become statuses (and
    log lines, as over HTTP) here."""
    try:
        yield
    except PromptwireError as exc:
        code = exc.label
        metrics.errors.labels(str(exc.http_status), code).inc()
        if call is None:  # ListModels, Compress: the id is only needed now
            call = _Call(request_id=_request_id(context, ""))
        elif call.request_id is None:
            call.request_id = _request_id(context, "")
        started = call.stream is not None
        error_log(logger, "grpc", call.request_id, exc.http_status, code, exc.message, started)
        await _abort(context, exc, _trailers(call.request_id, call.stream), call.decoder)
    except grpc.aio.AbortError:
        raise
    except Exception:
        rid = call.request_id if call is not None else None
        logger.exception(
            "request %s: gRPC call from %s failed", rid, _peer(context), extra={"request_id": rid, "api": "grpc"}
        )
        metrics.errors.labels("500", "internal_error").inc()
        trailers = () if rid is None else (("x-request-id", rid),)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error in the gateway", trailing_metadata=trailers)


def _peer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    try:
        return str(context.peer())
    except Exception:  # pragma: no cover - peer() only fails on a torn-down call
        return "?"


class _Servicer(gateway_pb2_grpc.GatewayServicer):
    """promptwire.v1.Gateway: protobuf → GatewayRequest → Gateway → protobuf."""

    def __init__(self, gateway: Gateway, compress: CompressHandler | None) -> None:
        self._gateway = gateway
        self._compress = compress
        self._access_log = gateway.config.server.access_log

    def _key_id(self, context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        key = self._gateway.authenticate(_api_key(context))
        return None if key is None else key.id

    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._stream(request, context, gateway_pb2.GenerateResponse)

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._stream(request, context, gateway_pb2.ChatResponse)

    async def _stream(
        self,
        request: gateway_pb2.GenerateRequest | gateway_pb2.ChatRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        response: type[gateway_pb2.GenerateResponse] | type[gateway_pb2.ChatResponse],
    ) -> None:
        # Written with context.write rather than as an async generator so that cancellation (client
        # gone, deadline) lands in this frame and the `finally` closes the upstream request at once.
        received = time.perf_counter()
        kind = "chat" if isinstance(request, gateway_pb2.ChatRequest) else "completion"
        call = _Call()
        stream: GatewayStream | None = None
        status = 0  # set on every way out; 0 only while running, or if cancelled (client gone / deadline)
        try:
            call.decoder = request.decoder.WhichOneof("decoder") if request.HasField("decoder") else None
            async with _status(context, self._gateway.metrics, call):
                try:
                    call.request_id = request_id = _request_id(context, request.request_id)
                    req = self._request(request, context, request_id, received)
                    call.model = req.model
                    call.stream = stream = await self._gateway.generate_stream(
                        req, trace_headers=context.invocation_metadata())
                    await context.send_initial_metadata((("x-request-id", request_id),))
                    state = conv.StreamState(kind=req.kind, request_id=request_id)
                    async for chunk in stream:
                        deltas = state.feed(chunk)
                        if deltas:
                            await context.write(
                                response(id=state.response_id, model=state.model, choices=deltas)
                            )
                    final = state.final_fields()
                    stats = conv.stage_stats(stream.stats)
                    await context.write(response(**final, stats=stats, overhead_ms=stream.overhead_ms))
                    context.set_trailing_metadata(tuple(_trailers(None, stream)))
                    status = 200
                except PromptwireError as exc:
                    status = exc.http_status  # _status logs and counts it
                    raise
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    status = 500
                    raise
                finally:
                    if stream is not None:
                        await stream.aclose()
        except asyncio.CancelledError:
            if not status:  # not already answered with an error (a timeout racing the deadline)
                status = self._cancelled(context, call)
            raise
        finally:
            self._count(call.model, kind, status or 499)
            if self._access_log:
                access_log(
                    logger, "grpc", call.request_id or "", request.model, kind, True, status or 499, received,
                    stream.overhead_ms if stream is not None else 0.0, stream.stats if stream is not None else (),
                )

    def _cancelled(self, context: grpc.aio.ServicerContext[Any, Any], call: _Call) -> int:
        """The status of an RPC cancelled by grpc: 504 when its deadline passed, else 499 (client gone)."""
        remaining = context.time_remaining()
        started = "mid-stream" if call.stream is not None else "before the response"
        rid = call.request_id
        if remaining is not None and remaining <= 0:
            self._gateway.metrics.errors.labels("504", "timeout").inc()
            error_log(logger, "grpc", rid, 504, "timeout", f"the gRPC deadline passed {started}")
            return 504
        logger.info("request %s: client cancelled %s", rid, started, extra={"request_id": rid, "api": "grpc"})
        return 499

    def _count(self, model: str, kind: str, status: int) -> None:
        m = self._gateway.metrics
        m.child(m.requests, m.model_label(model), kind, "true", str(status)).inc()

    def _request(
        self,
        request: gateway_pb2.GenerateRequest | gateway_pb2.ChatRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        request_id: str,
        received: float,
    ) -> GatewayRequest:
        key_id = self._key_id(context)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        if isinstance(request, gateway_pb2.ChatRequest):
            req = conv.chat_request(request, request_id=request_id, deadline=deadline, received_at=received)
        else:
            req = conv.generate_request(
                request, request_id=request_id, deadline=deadline, received_at=received
            )
        return req if key_id is None else dataclasses.replace(req, api_key_id=key_id)

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.ListModelsResponse:
        async with _status(context, self._gateway.metrics):
            key = self._gateway.authenticate(_api_key(context))
            return conv.model_list(await self._gateway.list_models(key))
        raise AssertionError("unreachable")  # pragma: no cover - _status returns or raises

    async def Compress(
        self, request: compress_pb2.CompressRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> compress_pb2.CompressResponse:
        async with _status(context, self._gateway.metrics):
            key = self._gateway.authenticate(_api_key(context))
            if self._compress is None:  # no compressor configured: 503 / UNAVAILABLE, as over HTTP
                return await self._gateway.compress(key, lambda api: api.handle_proto(request))
            return await self._compress(request)
        raise AssertionError("unreachable")  # pragma: no cover

    async def CondenseHistory(
        self, request: gateway_pb2.CondenseHistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.CondenseHistoryResponse:
        call = _Call(request_id=_request_id(context, request.request_id))
        async with _status(context, self._gateway.metrics, call):
            key = self._gateway.authenticate(_api_key(context))
            messages, options = conv.condense_history_call(request)
            outcome = await self._gateway.condense_history(key, messages, options, option_prefix="options.")
            context.set_trailing_metadata(
                (("x-request-id", call.request_id or ""), (STATS_KEY, conv.stats_json([outcome.stats]))))
            return conv.condense_history_response(outcome, call.request_id or "")
        raise AssertionError("unreachable")  # pragma: no cover - _status returns or raises



class GrpcHandle:
    """A running gRPC server: its bound port, health statuses and shutdown."""

    def __init__(self, server: grpc.aio.Server, port: int, status: HealthStatus) -> None:
        self.server = server
        self.port = port
        self.status = status
        """Readiness services ("" and promptwire.v1.Gateway) follow Gateway.ready(); ``liveness`` stays
        SERVING until the server stops (shared with the health listener, server.health_port)."""

    async def start(self) -> None:
        """Start serving RPCs (the server was bound by prepare_grpc_server)."""
        await self.server.start()

    async def set_not_serving(self) -> None:
        """Graceful shutdown: readiness NOT_SERVING for good; liveness SERVING while requests drain."""
        await self.status.shutdown()

    async def stop(self, grace: float) -> None:
        """Every service NOT_SERVING, stop accepting RPCs; in-flight ones get `grace` seconds, then are cancelled."""
        await self.status.close()
        await self.server.stop(grace)


def _enable_reflection(server: grpc.aio.Server, names: tuple[str, ...]) -> None:
    """Server reflection as ``grpc.reflection.v1alpha`` and ``grpc.reflection.v1``.

    The installed grpcio-reflection ships only the v1alpha service. The v1 protocol has the same
    messages with the same field numbers (only the package differs), so the v1alpha servicer answers
    v1 calls byte for byte when registered under the v1 name too (grpcurl and current clients try v1
    first). Only v1alpha is listed among the services: the v1 descriptors are not in this process, and
    a client describing every listed service must not hit one it cannot resolve."""
    servicer = reflection.aio.ReflectionServicer(names)
    v1alpha = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
    for service in (v1alpha, REFLECTION_V1):
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        generic = grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler})
        server.add_generic_rpc_handlers((generic,))


async def prepare_grpc_server(
    gateway: Gateway,
    host: str,
    port: int,
    *,
    compress: CompressHandler | None = None,
    status: HealthStatus | None = None,
    max_message_bytes: int | None = None,
    reuse_port: bool = False,
    tls: tuple[bytes, bytes] | None = None,
) -> GrpcHandle:
    """A gRPC server for promptwire.v1.Gateway, grpc.health.v1.Health and reflection, bound to host:port
    (0: a free port) but not started (``await handle.start()``): ``promptwire serve`` binds its ports
    before any model loads, so that a port in use is a one-line error at once. Options as for
    :func:`start_grpc_server`. Raises OSError when the port cannot be bound."""
    if max_message_bytes is None:
        max_message_bytes = gateway.config.limits.max_body_bytes
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max(max_message_bytes, 16 * 1024 * 1024)),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    # bytes that are not a valid request: INVALID_ARGUMENT, not grpcio's UNKNOWN (gateway/grpc/decode.py)
    server = grpc.aio.server(options=options, interceptors=[UndecodableRequests()])
    gateway_pb2_grpc.add_GatewayServicer_to_server(_Servicer(gateway, compress), server)  # type: ignore[no-untyped-call]
    if status is None:
        status = HealthStatus(gateway)
    health_pb2_grpc.add_HealthServicer_to_server(await status.servicer(), server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    _enable_reflection(server, (SERVICE_NAME, health_name, reflection.SERVICE_NAME))
    address = f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    except RuntimeError:  # grpcio raises it for a port it cannot bind
        bound = 0
    if bound == 0:
        raise OSError(errno.EADDRINUSE, f"the gRPC server could not bind {address}")
    return GrpcHandle(server, bound, status)


async def start_grpc_server(
    gateway: Gateway,
    host: str,
    port: int,
    *,
    compress: CompressHandler | None = None,
    health_interval_s: float | None = 5.0,
    status: HealthStatus | None = None,
    max_message_bytes: int | None = None,
    reuse_port: bool = False,
    tls: tuple[bytes, bytes] | None = None,
    **_: Any,
) -> GrpcHandle:
    """Serve promptwire.v1.Gateway, grpc.health.v1.Health and reflection on host:port (0: a free port).

    `compress` handles the Compress RPC (``CompressAPI.handle_proto``: CompressRequest in,
    CompressResponse out); without it Compress answers UNIMPLEMENTED. Health starts SERVING and, with
    `health_interval_s`, follows ``gateway.ready()`` at that period until `set_not_serving()`; the
    ``liveness`` service stays SERVING until `stop()`. `status` shares the statuses with other servers
    (the health listener); default: its own.
    `max_message_bytes` caps request messages (default: the config's ``limits.max_body_bytes``).
    `reuse_port` lets several worker processes share the port (``serve --workers N``); off by default so
    that a second gateway started by mistake fails to bind instead of silently taking half the traffic.
    `tls`: (PEM private key, PEM certificate chain) to serve over TLS.
    Unknown keyword options are ignored so callers can pass the server config through.
    """
    handle = await prepare_grpc_server(gateway, host, port, compress=compress, status=status,
                                       max_message_bytes=max_message_bytes, reuse_port=reuse_port, tls=tls)
    await handle.start()
    if health_interval_s is not None:
        handle.status.start(health_interval_s)
    logger.info("gRPC server listening on %s:%s", host, handle.port)
    return handle
