"""Health: grpc.health.v1 statuses that follow readiness, and the health-only listener (server.health_port)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from gateway.core.gateway import Gateway

__all__ = ["LIVENESS_SERVICE", "READINESS_SERVICES", "HealthListener", "HealthStatus", "QuietServer", "health_routes"]

logger = logging.getLogger(__name__)

LIVENESS_SERVICE = "liveness"
"""gRPC health service name for liveness probes: SERVING while the process serves, draining included.
The readiness names ("" and ``promptwire.v1.Gateway``) follow ``Gateway.ready()`` instead, so an
unreachable upstream takes a pod out of its Service without getting it restarted."""

READINESS_SERVICES = ("", "promptwire.v1.Gateway")
"""gRPC health names that follow readiness: the server as a whole and the Gateway service."""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthStatus:
    """The statuses of one or more ``HealthServicer``s (the API's gRPC server, the health listener).

    Readiness services follow ``gateway.ready()`` every ``interval_s`` from `start()` until
    `shutdown()`, which turns them NOT_SERVING for good; liveness stays SERVING until `close()`."""

    def __init__(self, gateway: Gateway, readiness_services: tuple[str, ...] = READINESS_SERVICES) -> None:
        self._gateway = gateway
        self._readiness = readiness_services
        self._servicers: list[health.aio.HealthServicer] = []
        self._status = _SERVING
        self._shut = False
        self._watch: asyncio.Task[None] | None = None

    async def servicer(self) -> health.aio.HealthServicer:
        """A new servicer carrying the current statuses (add it to a gRPC server)."""
        s = health.aio.HealthServicer()
        self._servicers.append(s)
        await self._apply(s, self._status)
        await s.set(LIVENESS_SERVICE, _SERVING)
        return s

    async def _apply(self, s: health.aio.HealthServicer, status: Any) -> None:
        for name in self._readiness:
            await s.set(name, status)

    async def set_ready(self, ready: bool) -> None:
        if self._shut:
            return
        self._status = _SERVING if ready else _NOT_SERVING
        for s in self._servicers:
            await self._apply(s, self._status)

    def start(self, interval_s: float) -> None:
        """Follow ``gateway.ready()`` at this period (until `shutdown()`)."""
        if self._watch is None:
            self._watch = asyncio.create_task(self._follow(interval_s), name="grpc-health")

    async def _follow(self, interval_s: float) -> None:
        while not self._shut:
            try:
                ready = await self._gateway.ready()
            except Exception:
                logger.warning("readiness check failed; gRPC health NOT_SERVING", exc_info=True)
                ready = False
            await self.set_ready(ready)
            await asyncio.sleep(interval_s)

    async def shutdown(self) -> None:
        """Graceful shutdown began: readiness NOT_SERVING for good; liveness unchanged."""
        await self.set_ready(False)
        self._shut = True
        await self._stop_watch()

    async def close(self) -> None:
        """Every service NOT_SERVING (the servers are about to stop)."""
        self._shut = True
        await self._stop_watch()
        for s in self._servicers:
            await s.enter_graceful_shutdown()

    async def _stop_watch(self) -> None:
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None


def health_routes(gateway: Gateway) -> list[Route]:
    """``GET /healthz`` (the process serves) and ``GET /readyz`` (started, not draining, a backend
    ready), for the API's HTTP app and for the health listener alike."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if await gateway.ready():
            return JSONResponse({"status": "ready"})
        reason = "shutting down" if gateway.shutting_down else "not ready (backends unreachable or starting)"
        return JSONResponse({"status": reason}, status_code=503)

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SNIFF_TIMEOUT_S = 5.0
_MAX_CONNECTIONS = 64
"""Probes come every few seconds; more connections than this at once are refused (closed at accept)."""


class HealthListener:
    """gRPC health and HTTP ``/healthz`` ``/readyz`` on one port, and nothing else.

    For a sidecar whose API listens on localhost only: the kubelet dials the pod IP. Each connection's
    first bytes pick the protocol (the HTTP/2 preface means gRPC, anything else is HTTP/1.1) and the
    connection is relayed to one of two servers on loopback ports: a gRPC server with only the Health
    service, and an HTTP app with only the two routes."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: Any = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc_port = 0
        self._http_port = 0
        self._conns: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, gateway: Gateway, status: HealthStatus, host: str, port: int) -> HealthListener:
        self = cls()
        self._grpc = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(await status.servicer(), self._grpc)
        self._grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        await self._grpc.start()

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self._http_port = sock.getsockname()[1]
        app = Starlette(routes=health_routes(gateway))
        config = uvicorn.Config(app, lifespan="off", http="httptools", loop="none", access_log=False, log_config=None,
                                server_header=False, timeout_graceful_shutdown=1)
        self._http = QuietServer(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]), name="health-http")

        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("health listener (gRPC health, /healthz, /readyz) on %s:%d", host, self.port,
                    extra={"event": "health_listener", "health_port": self.port})
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= _MAX_CONNECTIONS:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._relay(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass  # a probe that went away; nothing to report
        finally:
            self._conns.discard(task)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b""
        async with asyncio.timeout(_SNIFF_TIMEOUT_S):
            while len(head) < 3:
                chunk = await reader.read(len(_H2_PREFACE))
                if not chunk:
                    return
                head += chunk
        port = self._grpc_port if _H2_PREFACE.startswith(head[:3]) else self._http_port
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            up_writer.write(head)
            await _first_done(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._http is not None:
            self._http.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        if self._grpc is not None:
            await self._grpc.stop(0)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(65536):
        dst.write(data)
        await dst.drain()


async def _first_done(*coros: Awaitable[None]) -> None:
    """Run both directions; when one ends (a side closed), cancel the other."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class QuietServer(uvicorn.Server):
    """uvicorn.Server that leaves SIGTERM / SIGINT to ``promptwire serve`` (it drains first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
