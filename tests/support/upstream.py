"""A real OpenAI-wire-format HTTP server on 127.0.0.1 for tests and benchmarks, with fault knobs.

It answers /v1/chat/completions, /v1/completions (streamed and not) and /v1/models by echoing the
prompt ("echo: <last user text>"), one word per streamed chunk, honouring n, max_tokens /
max_completion_tokens, stop and stream_options.include_usage. Knobs (attributes of ``Knobs``,
changeable while running) add latency, fail the next N requests (5xx, or 429 with Retry-After),
drop the connection mid-stream or hang. Every request is recorded (path, headers, JSON body).

    with UpstreamServer() as up:          # runs in its own thread and event loop
        up.knobs.fail_next = 2
        client = openai.OpenAI(base_url=up.url, api_key="x")

Run standalone (benchmarks): ``python -m tests.support.upstream --port 8000 --latency-ms 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn

__all__ = ["Knobs", "RecordedRequest", "UpstreamServer", "make_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class Knobs:
    """Behaviour of the fake upstream; tests may change fields while it runs."""

    models: list[str] = field(default_factory=lambda: ["test-model", "test-model-2"])
    latency_s: float = 0.0
    """Delay before the response (before the first chunk when streaming)."""
    chunk_delay_s: float = 0.0
    """Delay between streamed chunks."""
    fail_next: int = 0
    """The next N generation requests fail with ``fail_status``."""
    fail_status: int = 500
    retry_after: str | None = None
    """Retry-After header value sent with the failures (e.g. "1" for 429)."""
    die_after_chunks: int | None = None
    """Streams: drop the connection (no terminating chunk, no [DONE]) after this many chunks."""
    reply: str | None = None
    """Fixed reply text instead of the echo."""
    api_key: str | None = None
    """When set, requests without ``Authorization: Bearer <api_key>`` get 401."""
    gate: threading.Event | None = None
    """Streams: after the first chunk, wait until this is set (holds a request in flight, e.g. across a
    SIGTERM, without timing)."""
    echo_in_errors: bool = False
    """Injected failures quote the request's messages / prompt in their error message (as pydantic-based
    servers such as vLLM do), to see that no prompt text reaches the gateway's logs that way."""
    hold: threading.Event | None = None
    """Every generation request waits for this before it is answered (``UpstreamServer.wait_arrived(n)``
    then says when n of them are held): concurrency without timing."""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


def _error(status: int, message: str, etype: str, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": etype, "param": param, "code": code}}).encode()


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts) if p or i == 0]


class _App:
    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.requests: list[RecordedRequest] = []
        self.streams_started = 0
        self.streams_completed = 0
        self.disconnects = 0
        """Streams whose client went away before the stream ended."""
        self.generation_requests = 0
        self.arrived = threading.Condition()
        """Notified as each generation request arrives (see ``UpstreamServer.wait_arrived``)."""
        self.connections: set[tuple[str, int]] = set()
        """Client (host, port) pairs seen: one per TCP connection the upstream was sent requests on."""
        self._seq = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope.get("client"):
            self.connections.add(tuple(scope["client"]))
        body = b""
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parsed: dict[str, Any] | None = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        path = scope["path"]
        self.requests.append(RecordedRequest(scope["method"], path, headers, parsed))
        k = self.knobs
        if k.api_key is not None and headers.get("authorization") != f"Bearer {k.api_key}":
            await self._send(send, 401, _error(401, "bad upstream key", "invalid_request_error", "invalid_api_key"))
            return
        if path == "/v1/models" and scope["method"] == "GET":
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "upstream"} for m in k.models]
            await self._send(send, 200, json.dumps({"object": "list", "data": data}).encode())
            return
        if path not in ("/v1/chat/completions", "/v1/completions") or scope["method"] != "POST":
            await self._send(send, 404, _error(404, f"no route {path}", "invalid_request_error"))
            return
        self.generation_requests += 1
        with self.arrived:
            self.arrived.notify_all()
        if k.hold is not None:
            await asyncio.to_thread(k.hold.wait, 60.0)
        if k.fail_next > 0:
            k.fail_next -= 1
            extra = [(b"retry-after", k.retry_after.encode())] if k.retry_after is not None else []
            etype = "rate_limit_error" if k.fail_status == 429 else "server_error"
            message = "injected failure"
            if k.echo_in_errors and isinstance(parsed, dict):  # as validating servers do: the input, quoted
                message += f"; input_value={json.dumps(parsed.get('messages') or parsed.get('prompt'))}"
            await self._send(send, k.fail_status, _error(k.fail_status, message, etype), extra)
            return
        if parsed is None or not isinstance(parsed, dict):
            await self._send(send, 400, _error(400, "body must be a JSON object", "invalid_request_error"))
            return
        model = parsed.get("model")
        if model not in k.models:
            msg = f"The model `{model}` does not exist"
            await self._send(send, 404, _error(404, msg, "invalid_request_error", "model_not_found", "model"))
            return
        gone = asyncio.Event()
        watcher = asyncio.create_task(self._watch(receive, gone))
        try:
            if k.latency_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), k.latency_s)
                if gone.is_set():
                    self.disconnects += 1
                    return
            chat = path == "/v1/chat/completions"
            if parsed.get("stream"):
                await self._stream(parsed, chat, gone, send)
            else:
                await self._send(send, 200, json.dumps(self._complete(parsed, chat)).encode())
        finally:
            watcher.cancel()

    async def _watch(self, receive: Receive, gone: asyncio.Event) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                gone.set()
                return

    async def _send(self, send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
        await send({"type": "http.response.body", "body": body})

    def _reply(self, req: dict[str, Any], chat: bool) -> tuple[list[str], str, int]:
        """The reply's word pieces, finish_reason and prompt token count."""
        if chat:
            texts = []
            for m in req.get("messages") or ():
                c = m.get("content")
                if isinstance(c, list):
                    c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
                texts.append((m.get("role"), c or ""))
            user = [t for r, t in texts if r == "user"]
            prompt_text = " ".join(t for _, t in texts)
            last = user[-1] if user else ""
        else:
            p = req.get("prompt")
            last = p if isinstance(p, str) else " ".join(x for x in (p or []) if isinstance(x, str))
            prompt_text = last
        text = self.knobs.reply if self.knobs.reply is not None else f"echo: {last}"
        finish = "stop"
        stop = req.get("stop")
        for s in [stop] if isinstance(stop, str) else (stop or []):
            if s and s in text:
                text = text[: text.index(s)]
        words = _words(text)
        limit = req.get("max_completion_tokens") or req.get("max_tokens")
        if isinstance(limit, int) and len(words) > limit:
            words, finish = words[:limit], "length"
        return words, finish, len(prompt_text.split())

    def _ident(self, chat: bool) -> tuple[str, int]:
        self._seq += 1
        return (f"chatcmpl-{self._seq}" if chat else f"cmpl-{self._seq}"), int(time.time())

    def _complete(self, req: dict[str, Any], chat: bool) -> dict[str, Any]:
        words, finish, n_prompt = self._reply(req, chat)
        n = int(req.get("n") or 1)
        text = "".join(words)
        ident, created = self._ident(chat)
        if chat:
            choices: list[dict[str, Any]] = [
                {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                 "finish_reason": finish}
                for i in range(n)
            ]
        else:
            choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish} for i in range(n)]
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(words) * n,
                 "total_tokens": n_prompt + len(words) * n}
        return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": req["model"], "choices": choices, "usage": usage, "system_fingerprint": "fp_upstream"}

    async def _stream(self, req: dict[str, Any], chat: bool, gone: asyncio.Event, send: Send) -> None:
        words, finish, n_prompt = self._reply(req, chat)
        n = int(req.get("n") or 1)
        ident, created = self._ident(chat)
        obj = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            d: dict[str, Any] = {"id": ident, "object": obj, "created": created, "model": req["model"],
                                 "choices": choices}
            if include_usage:
                d["usage"] = usage
            return b"data: " + json.dumps(d).encode() + b"\n\n"

        events: list[bytes] = []
        for i in range(n):
            if chat:
                events.append(chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None}]))
        for w in words:
            for i in range(n):
                if chat:
                    c = {"index": i, "delta": {"content": w}, "logprobs": None, "finish_reason": None}
                else:
                    c = {"index": i, "text": w, "logprobs": None, "finish_reason": None}
                events.append(chunk([c]))
        for i in range(n):
            if chat:
                events.append(chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}]))
            else:
                events.append(chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": finish}]))
        if include_usage:
            usage = {"prompt_tokens": n_prompt, "completion_tokens": len(words) * n,
                     "total_tokens": n_prompt + len(words) * n}
            events.append(chunk([], usage))
        events.append(b"data: [DONE]\n\n")

        self.streams_started += 1
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        for i, ev in enumerate(events):
            if self.knobs.die_after_chunks is not None and i >= self.knobs.die_after_chunks:
                # abort the connection with a half-sent chunked body: what a crashing server looks like
                raise ConnectionAbortedError("injected mid-stream failure")
            if i == 1 and self.knobs.gate is not None:
                await asyncio.to_thread(self.knobs.gate.wait, 60.0)
            if i and self.knobs.chunk_delay_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), self.knobs.chunk_delay_s)
            if gone.is_set():
                self.disconnects += 1
                return
            await send({"type": "http.response.body", "body": ev, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.streams_completed += 1


def make_app(knobs: Knobs | None = None) -> _App:
    return _App(knobs or Knobs())


class UpstreamServer:
    """The fake upstream running in a background thread (own event loop) on 127.0.0.1."""

    def __init__(self, knobs: Knobs | None = None, *, port: int = 0, keep_alive_s: float = 5.0) -> None:
        self.app = make_app(knobs)
        self._port = port
        self._keep_alive_s = keep_alive_s
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self.port = 0

    @property
    def knobs(self) -> Knobs:
        return self.app.knobs

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.app.requests

    def wait_arrived(self, n: int, timeout: float = 30.0) -> None:
        """Block until ``n`` generation requests have arrived in all (no polling: a condition variable)."""
        app = self.app
        with app.arrived:
            if not app.arrived.wait_for(lambda: app.generation_requests >= n, timeout):
                raise TimeoutError(f"{app.generation_requests} of {n} requests arrived within {timeout} s")

    @property
    def url(self) -> str:
        """Base URL including /v1, as OpenAI clients and promptwire's --upstream take it."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> UpstreamServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="critical", lifespan="off", access_log=False,
                                http="httptools", loop="asyncio", timeout_graceful_shutdown=1,
                                timeout_keep_alive=self._keep_alive_s)
        self._server = uvicorn.Server(config)
        server = self._server
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])),
                                        name=f"upstream-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description="fake OpenAI-compatible upstream for tests and benchmarks")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0)
    ap.add_argument("--model", action="append", help="model names served (repeatable)")
    args = ap.parse_args()
    knobs = Knobs(latency_s=args.latency_ms / 1000, chunk_delay_s=args.chunk_delay_ms / 1000)
    if args.model:
        knobs.models = args.model
    uvicorn.run(make_app(knobs), host=args.host, port=args.port, log_level="warning", lifespan="off",
                access_log=False, http="httptools", loop="uvloop")


if __name__ == "__main__":
    main()
