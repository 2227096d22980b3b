"""The HTTP front end: OpenAI-compatible routes on Starlette, SSE pass-through, one error handler."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.core.gateway import ApiKey, Gateway, GatewayStream
from gateway.errors import BodyTooLarge, InvalidRequest, Overloaded, PromptwireError, UpstreamStatusError
from gateway.http.models import ChatCompletionRequest, CompletionRequest, openapi_document
from gateway.observe.health import health_routes
from gateway.observe.logs import access_log, error_log
from gateway.observe.metrics import CONTENT_TYPE
from gateway.stages.condense_history import parse_body as parse_condense_body
from gateway.types import ChatMessage, GatewayRequest, RequestKind, StageStats

__all__ = ["GatewayApp", "create_app", "error_response"]

logger = logging.getLogger(__name__)
_GONE = object()  # json_body: the client left before the whole body arrived

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CORE_KEYS = frozenset({"model", "messages", "prompt", "stream", "promptwire"})
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
_DONE = b"data: [DONE]\n\n"


def error_response(exc: PromptwireError, request_id: str | None = None) -> Response:
    """The one place a PromptwireError becomes an HTTP response (OpenAI's error JSON)."""
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, Overloaded | UpstreamStatusError) and retry_after is not None:
        headers["retry-after"] = str(max(1, round(retry_after)))
    if request_id:
        headers["x-request-id"] = request_id
    return JSONResponse(exc.to_openai(), status_code=exc.http_status, headers=headers)


def _stats_header(stats: Sequence[StageStats]) -> bytes:
    if not stats:
        return b"[]"
    return json.dumps([s.to_dict() for s in stats], separators=(",", ":")).encode()


def _param_of(err: Mapping[str, Any], data: Any) -> str:
    """The failing field as OpenAI names it (``messages[0].content[1].text``): the error's location
    walked through the request itself, so pydantic's union-branch tags (``list[ContentPart]``, ``str``)
    that are not keys of the body are left out."""
    out = ""
    node = data
    loc = tuple(err.get("loc", ()))
    for i, part in enumerate(loc):
        if isinstance(part, int):
            if isinstance(node, list) and 0 <= part < len(node):
                node = node[part]
                out += f"[{part}]"
        elif isinstance(node, dict) and (part in node or (i == len(loc) - 1 and err.get("type") == "missing")):
            node = node.get(part)
            out += ("." if out else "") + part
    return out


_RID_PREFIX = uuid.uuid4().hex[:16]
_rid_counter = itertools.count(1)


def _request_id(raw: bytes | None) -> str:
    """The client's x-request-id when sane, else a fresh one (process-random prefix + counter: unique
    across replicas without a syscall per request)."""
    if raw and len(raw) <= 200 and raw.isascii():
        text = raw.decode()
        if text.isprintable():
            return text
    return f"{_RID_PREFIX}{next(_rid_counter):016x}"


class _Generate:
    """POST /v1/chat/completions and /v1/completions as a raw ASGI app (the hot path)."""

    def __init__(self, gateway: Gateway, kind: RequestKind) -> None:
        self.gw = gateway
        self.kind: RequestKind = kind
        self.model_cls: type[BaseModel] = ChatCompletionRequest if kind == "chat" else CompletionRequest
        self.access_log = gateway.config.server.access_log
        self.stage_names = frozenset(gateway.stage_table)

    def _log(self, req: GatewayRequest, status: int, overhead_ms: float, stats: Sequence[StageStats],
             t0: float) -> None:
        """One access-log line per request (``server.access_log``), stage stats included, no prompt text."""
        access_log(logger, "http", req.request_id, req.model, req.kind, req.stream, status, t0, overhead_ms, stats)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        gw = self.gw
        auth = rid = clen = xkey = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
            elif k == b"x-request-id":
                rid = v
            elif k == b"content-length":
                clen = v
            elif k == b"x-api-key":
                xkey = v
        request_id = _request_id(rid)
        scope["promptwire.request_id"] = request_id  # for the exception handler
        scope["promptwire.t0"] = t0  # for its access-log line
        token: str | None = None
        if auth is not None:
            scheme, _, rest = auth.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                token = rest.strip()
        elif xkey is not None:
            token = xkey.decode("latin-1")
        key = gw.authenticate(token)
        limit = gw.config.limits.max_body_bytes
        if clen is not None and clen.isdigit() and int(clen) > limit:
            raise BodyTooLarge(f"request body is {int(clen)} bytes, over the limit of {limit}")
        body = await _read_body(receive, limit)
        if body is None:
            return  # client left before sending its whole body: nobody to answer
        req = self._parse(body, request_id, key.id if key is not None else None, t0)
        scope["promptwire.model"] = req.model  # for the request counter if it fails before answering
        scope["promptwire.stream"] = req.stream

        # Client gone (disconnect) -> cancel this task: the provider call is cancelled and its upstream
        # connection closed at once.
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone, task))
        try:
            if req.stream:
                stream = await gw.generate_stream(req, trace_headers=scope["headers"])
            else:
                completion, stats, overhead_ms = await gw.generate(req, trace_headers=scope["headers"])
        except asyncio.CancelledError:
            watcher.cancel()
            if gone.is_set():
                task.uncancel()  # the cancel was ours (client left): finish quietly
                self._count(req.model, req.stream, 499)
                logger.info("request %s: client disconnected before the response", request_id,
                            extra={"request_id": request_id, "api": "http"})
                if self.access_log:
                    self._log(req, 499, 0.0, (), t0)
                return
            raise
        except BaseException:
            watcher.cancel()
            raise
        if not req.stream:
            watcher.cancel()
        if not req.stream:
            raw = completion.to_bytes()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                (b"x-request-id", request_id.encode()),
                (b"x-promptwire-overhead-ms", f"{overhead_ms:.3f}".encode()),
                (b"x-promptwire-stats", _stats_header(stats)),
            ]
            scope["promptwire.started"] = True
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": raw})
            self._count(req.model, False, 200)
            if self.access_log:
                self._log(req, 200, overhead_ms, stats, t0)
            return
        scope["promptwire.started"] = True
        await self._stream(stream, request_id, send, gone, watcher)

    def _parse(self, body: bytes, request_id: str, key_id: str | None, t0: float) -> GatewayRequest:
        try:
            data = json.loads(body.decode())  # str input skips json's slow encoding sniffing
        except ValueError as e:  # UnicodeDecodeError included
            raise InvalidRequest(f"request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise InvalidRequest("request body must be a JSON object")
        try:
            self.model_cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            param = _param_of(err, data)
            raise InvalidRequest(f"{param}: {err['msg']}" if param else err["msg"], param=param or None) from None
        params = {k: v for k, v in data.items() if k not in _CORE_KEYS}
        ext = data.get("promptwire") or {}
        decoder = ext.get("decoder")
        # null means "the operator's default" for a stage; an unknown name is kept so it gets its 400
        stage_options = {k: v for k, v in ext.items() if k != "decoder" and (v is not None or k not in self.stage_names)}
        if self.kind == "chat":
            return GatewayRequest(
                request_id, "chat", data["model"], tuple(ChatMessage.from_dict(m) for m in data["messages"]),
                None, params, bool(data.get("stream")), stage_options, decoder, key_id, None, t0,
            )
        return GatewayRequest(
            request_id, "completion", data["model"], (), data["prompt"], params, bool(data.get("stream")),
            stage_options, decoder, key_id, None, t0,
        )

    async def _stream(
        self, stream: GatewayStream, request_id: str, send: Send, gone: asyncio.Event, watcher: asyncio.Task[None]
    ) -> None:
        model = stream.request.model
        status = 200
        try:
            headers = [
                *_SSE_HEADERS,
                (b"x-request-id", request_id.encode()),
                (b"x-promptwire-overhead-ms", f"{stream.overhead_ms:.3f}".encode()),
                (b"x-promptwire-stats", _stats_header(stream.stats)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            try:
                async for chunk in stream:
                    await send({"type": "http.response.body", "body": b"data: " + chunk.to_bytes() + b"\n\n",
                                "more_body": True})
            except PromptwireError as e:
                # headers are gone: end the stream with an error event (and no [DONE]) so SDKs raise
                status = e.http_status
                error_log(logger, "http", request_id, e.http_status, e.label, e.message, started=True)
                self.gw.metrics.errors.labels(str(e.http_status), e.label).inc()
                payload = json.dumps(e.to_openai(), separators=(",", ":")).encode()
                await send({"type": "http.response.body", "body": b"data: " + payload + b"\n\n",
                            "more_body": False})
                return
            await send({"type": "http.response.body", "body": _DONE, "more_body": False})
        except asyncio.CancelledError:
            if gone.is_set():
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                status = 499
                logger.info("request %s: client disconnected mid-stream", request_id,
                            extra={"request_id": request_id, "api": "http"})
                return
            raise
        finally:
            watcher.cancel()
            await stream.aclose()
            self._count(model, True, status)
            if self.access_log:
                self._log(stream.request, status, stream.overhead_ms, stream.stats, stream.request.received_at)

    def _count(self, model: str, stream: bool, status: int) -> None:
        m = self.gw.metrics
        m.child(m.requests, m.model_label(model), self.kind, "true" if stream else "false", str(status)).inc()


async def _watch_disconnect(receive: Receive, gone: asyncio.Event, task: asyncio.Task[Any]) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            gone.set()
            task.cancel()
            return


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        part = msg.get("body", b"")
        if part:
            size += len(part)
            if size > limit:
                raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
            chunks.append(part)
        if not msg.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _error_to_response(gateway: Gateway, exc: Exception, rid: str | None) -> Response:
    """The HTTP exception handler: any exception before the response started -> OpenAI error JSON."""
    if isinstance(exc, PromptwireError):
        gateway.metrics.errors.labels(str(exc.http_status), exc.label).inc()
        error_log(logger, "http", rid, exc.http_status, exc.label, exc.message)
        return error_response(exc, rid)
    rid_header = {"x-request-id": rid} if rid else {}
    if isinstance(exc, HTTPException):
        body = {"error": {"message": str(exc.detail), "type": "invalid_request_error", "param": None,
                          "code": "not_found" if exc.status_code == 404 else None}}
        return JSONResponse(body, status_code=exc.status_code, headers={**(exc.headers or {}), **rid_header})
    logger.error("request %s: unexpected error", rid, exc_info=exc, extra={"request_id": rid, "api": "http"})
    gateway.metrics.errors.labels("500", "internal_error").inc()
    body = {"error": {"message": "internal error in the gateway", "type": "server_error", "param": None,
                      "code": "internal_error"}}
    return JSONResponse(body, status_code=500, headers=rid_header)


class GatewayApp:
    """The ASGI app: generation routes go straight to their handler (no middleware stack on the hot
    path); everything else goes through Starlette (``.starlette``)."""

    def __init__(self, gateway: Gateway, starlette: Starlette, hot: dict[str, _Generate]) -> None:
        self.gateway = gateway
        self.starlette = starlette
        self._hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self._hot.get(scope["path"])
            if handler is not None:
                try:
                    await handler(scope, receive, send)
                except Exception as exc:
                    if scope.get("promptwire.started"):
                        raise  # too late for a status; the server closes the connection
                    rid = scope.get("promptwire.request_id")
                    response = _error_to_response(self.gateway, exc, rid)
                    handler._count(scope.get("promptwire.model", "unknown"), scope.get("promptwire.stream", False),
                                   response.status_code)
                    if handler.access_log and rid is not None:
                        access_log(logger, "http", rid, scope.get("promptwire.model", ""), handler.kind,
                                   scope.get("promptwire.stream", False), response.status_code,
                                   scope.get("promptwire.t0", time.perf_counter()), 0.0, ())
                    await response(scope, receive, send)
                return
        await self.starlette(scope, receive, send)


def create_app(gateway: Gateway, *, extra_routes: Sequence[BaseRoute] = (), version: str = "0.1.0") -> GatewayApp:
    """The ASGI app serving ``gateway``. ``extra_routes`` (e.g. POST /v1/compress) are added as-is."""
    openapi = json.dumps(openapi_document(version, gateway.stage_table, gateway.decoder_table)).encode()
    hot = {
        "/v1/chat/completions": _Generate(gateway, "chat"),
        "/v1/completions": _Generate(gateway, "completion"),
    }

    def request_rid(request: Request) -> str:
        """The id of a Starlette-routed request (the hot routes read the headers themselves)."""
        return _request_id(request.headers.get("x-request-id", "").encode("latin-1") or None)

    def request_key(request: Request) -> ApiKey | None:
        """Authenticate a Starlette-routed request (its id noted first, for the error answer)."""
        request.scope["promptwire.request_id"] = request_rid(request)
        auth = request.headers.get("authorization")
        token = request.headers.get("x-api-key")
        if auth is not None:
            scheme, _, rest = auth.partition(" ")
            token = rest.strip() if scheme.lower() == "bearer" else None
        return gateway.authenticate(token)

    async def models(request: Request) -> Response:
        key = request_key(request)
        data = [m.to_openai() for m in await gateway.list_models(key)]
        return JSONResponse({"object": "list", "data": data},
                            headers={"x-request-id": request.scope["promptwire.request_id"]})

    metrics_public = gateway.config.auth.metrics_public

    async def metrics(request: Request) -> Response:
        if not metrics_public:
            request_key(request)
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    async def openapi_json(request: Request) -> Response:
        request_key(request)  # with auth on, only /healthz and /readyz (and /metrics if public) need no key
        return Response(openapi, media_type="application/json")

    async def json_body(request: Request) -> Any:
        """A stage API call's parsed JSON body; ``_GONE`` when the client left mid-body."""
        body = await _read_body(request.receive, gateway.config.limits.max_body_bytes)
        if body is None:
            return _GONE
        try:
            return json.loads(body)
        except ValueError as e:
            raise InvalidRequest(f"the request body is not valid JSON: {e}") from None

    async def compress(request: Request) -> Response:
        key = request_key(request)
        rid = request.scope["promptwire.request_id"]
        data = await json_body(request)
        if data is _GONE:
            return Response(status_code=400)  # the client left mid-body: nobody reads this
        result = await gateway.compress(key, lambda api: api.handle_json(data))
        return JSONResponse(result, headers={"x-request-id": rid})

    async def condense_history(request: Request) -> Response:
        key = request_key(request)
        rid = request.scope["promptwire.request_id"]
        data = await json_body(request)
        if data is _GONE:
            return Response(status_code=400)
        messages, options = parse_condense_body(data)
        outcome = await gateway.condense_history(key, messages, options)
        return JSONResponse(outcome.to_json(), headers={"x-request-id": rid})

    async def on_error(request: Request, exc: Exception) -> Response:
        rid = request.scope.get("promptwire.request_id") or request_rid(request)
        return _error_to_response(gateway, exc, rid)

    routes: list[BaseRoute] = [
        # also routed here so other methods get a proper 405 (POST never reaches Starlette)
        Route("/v1/chat/completions", hot["/v1/chat/completions"], methods=["POST"]),
        Route("/v1/completions", hot["/v1/completions"], methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        *health_routes(gateway),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/v1/compress", compress, methods=["POST"]),
        Route("/v1/condense_history", condense_history, methods=["POST"]),
        *extra_routes,
    ]
    if gateway.config.server.playground:
        from gateway.playground import playground_routes

        routes += playground_routes()
    starlette = Starlette(
        routes=routes,
        exception_handlers={PromptwireError: on_error, HTTPException: on_error, Exception: on_error},
    )
    return GatewayApp(gateway, starlette, hot)
