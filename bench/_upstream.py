"""A fixed-latency OpenAI-wire-format upstream on 127.0.0.1, cheap enough not to be the bottleneck."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any, cast

import httptools

__all__ = ["UpstreamProtocol", "main", "run_loop", "serve"]

MODEL = "bench-model"
# A realistic chat completion: the upstream's reply is constant, so every target moves the same bytes.
CONTENT = "The quick brown fox jumps over the lazy dog. " * 4
STREAM_PIECES = ("The quick", " brown fox", " jumps over", " the lazy", " dog.")


def _completion_body() -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1764000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": CONTENT},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 40, "total_tokens": 82},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _chunk(delta: dict[str, str], finish: str | None, usage: bool = False) -> bytes:
    chunk: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1764000000,
        "model": MODEL,
        "choices": [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        chunk["usage"] = {"prompt_tokens": 42, "completion_tokens": 5, "total_tokens": 47}
    data = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)  # one HTTP/1.1 chunk per SSE event


COMPLETION = _completion_body()
COMPLETION_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(COMPLETION),
    COMPLETION,
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
# The first event carries the role and the first token (that is what time-to-first-token measures).
STREAM_FIRST = _chunk({"role": "assistant", "content": STREAM_PIECES[0]}, None)
STREAM_REST = [_chunk({"content": p}, None) for p in STREAM_PIECES[1:]]
STREAM_LAST = _chunk({}, "stop")
STREAM_USAGE = _chunk({}, None, usage=True)
STREAM_DONE = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
MODELS = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}
).encode()
MODELS_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(MODELS),
    MODELS,
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection: parse with httptools, answer after the fixed latency via call_later."""

    def __init__(self, latency_s: float, chunk_gap_s: float) -> None:
        self.latency_s = latency_s
        self.chunk_gap_s = chunk_gap_s
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        if path.endswith(b"/chat/completions"):
            stream, usage = _stream_flags(b"".join(self.body))
            if stream:
                self.loop.call_later(self.latency_s, self._stream, 0, usage)
            else:
                self.loop.call_later(self.latency_s, self._write, COMPLETION_RESPONSE)
        elif path.endswith(b"/models"):
            self._write(MODELS_RESPONSE)
        else:
            self._write(NOT_FOUND)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _stream(self, step: int, usage: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # the client went away: stop the stream at once
        if step == 0:
            self.transport.write(STREAM_HEAD + STREAM_FIRST)
        elif step <= len(STREAM_REST):
            self.transport.write(STREAM_REST[step - 1])
        else:
            self.transport.write(STREAM_LAST + (STREAM_USAGE if usage else b"") + STREAM_DONE)
            return
        self.loop.call_later(self.chunk_gap_s, self._stream, step + 1, usage)


def _stream_flags(body: bytes) -> tuple[bool, bool]:
    if b'"stream"' not in body:
        return False, False
    req = json.loads(body)
    opts = req.get("stream_options") or {}
    return bool(req.get("stream")), bool(opts.get("include_usage"))


async def serve(port: int, latency_ms: float, chunk_gap_ms: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(latency_ms / 1000.0, chunk_gap_ms / 1000.0),
        "127.0.0.1",
        port,
        backlog=1024,
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Bounded life: a forgotten upstream exits by itself.
    deadline = time.monotonic() + float(os.environ.get("BENCH_UPSTREAM_MAX_S", "1800"))
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(stop.wait(), timeout=5.0)
        except TimeoutError:
            pass
    server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="time to the reply / first token")
    ap.add_argument("--chunk-gap-ms", type=float, default=2.0, help="gap between streamed chunks")
    args = ap.parse_args(argv)
    run_loop(serve(args.port, args.latency_ms, args.chunk_gap_ms))
    return 0


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (it is in promptwire's lock), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
