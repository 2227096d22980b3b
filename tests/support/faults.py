"""A fault-injecting OpenAI-compatible upstream: a real HTTP/1.1 server on 127.0.0.1 (raw asyncio, in a
thread of its own) whose every answer misbehaves the way ``mode`` says, and that records each
connection's open and close (so a test can see how soon the gateway let go of it).

    with FaultServer("reset_mid_stream") as up:
        ... point a gateway at up.url ...
        up.attempts            # generation requests received (1 + the gateway's retries)
        up.wait_closed(0)      # when the first connection was closed (monotonic), waited for on an event

Modes (MODES): ok, 500, 503, 429 (with Retry-After), slow_headers, slow_body, reset_before_first_byte,
reset_mid_stream, truncated_sse, invalid_json, oversized, never_ends, hold (answers the head and first
chunk, then nothing until ``release()`` or the client leaves: for cancellation tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MODES", "ConnRecord", "FaultServer", "read_request"]

MODES = ("ok", "500", "503", "429", "slow_headers", "slow_body", "reset_before_first_byte", "reset_mid_stream",
         "truncated_sse", "invalid_json", "oversized", "never_ends", "hold")


@dataclass
class ConnRecord:
    """One TCP connection from the gateway."""

    opened_at: float
    closed_at: float | None = None
    """time.monotonic() when the server saw the connection end (EOF, reset, or its own close)."""
    closed: threading.Event = field(default_factory=threading.Event)
    requests: int = 0


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """One HTTP/1.1 request from a raw connection: its target path and its body (content-length framed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    return lines[0].split(" ")[1], await reader.readexactly(length)


def _chunk_json(i: int, text: str) -> bytes:
    return json.dumps({"id": "chatcmpl-f", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}).encode()


def _event(payload: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    data = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


_SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_END = b"0\r\n\r\n"


def _json_response(status: int, body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 %d X" % status, b"content-type: application/json", b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _completion(text: str = "fine") -> bytes:
    return json.dumps({"id": "chatcmpl-f", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


class FaultServer:
    """The upstream; ``mode`` may be changed between requests. Timing knobs: ``slow_s`` (how long slow
    modes stay silent), ``trickle_s`` (the gap between pieces of a never-ending body), ``retry_after``,
    ``oversize_bytes``."""

    def __init__(self, mode: str = "ok", *, slow_s: float = 30.0, trickle_s: float = 0.05,
                 retry_after: str = "0", oversize_bytes: int = 4 * 1024 * 1024) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.slow_s = slow_s
        self.trickle_s = trickle_s
        self.retry_after = retry_after
        self.oversize_bytes = oversize_bytes
        self._released: asyncio.Event | None = None  # mode hold: set by release(), in the server's loop
        self.connections: list[ConnRecord] = []
        self.attempts = 0
        """Generation requests received (first tries and retries)."""
        self.first_byte_sent = threading.Event()
        """Set when some response's first byte went out (streams: with their first chunk)."""
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._new_conn = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ----- per connection ---------------------------------------------------------------------------

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec = ConnRecord(time.monotonic())
        with self._new_conn:
            self.connections.append(rec)
            self._new_conn.notify_all()
        try:
            while True:
                path, body = await read_request(reader)
                rec.requests += 1
                if path.endswith("/models"):
                    writer.write(_json_response(200, b'{"object": "list", "data": [{"id": "m", "object": "model"}]}'))
                    await writer.drain()
                    continue
                self.attempts += 1
                req = json.loads(body) if body else {}
                if not await self._answer(req, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            rec.closed_at = time.monotonic()
            rec.closed.set()

    async def _gone(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait up to ``seconds`` for the client to close the connection (True when it did)."""
        try:
            async with asyncio.timeout(seconds):
                data = await reader.read(1)
                return data == b""
        except TimeoutError:
            return False

    async def _held(self, reader: asyncio.StreamReader) -> bool:
        """Mode hold: wait for ``release`` or for the client to leave, whichever comes first (True: it left)."""
        assert self._released is not None
        gone = asyncio.ensure_future(reader.read(1))
        released = asyncio.ensure_future(self._released.wait())
        await asyncio.wait({gone, released}, return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            released.cancel()
            return gone.result() == b""
        gone.cancel()
        return False

    async def _answer(self, req: dict[str, Any], reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        """Answer one request as the mode says (a model named ``fault-<mode>`` picks its own: a soak mixes
        them); False: the connection ends here."""
        model = req.get("model")
        mode = model[6:] if isinstance(model, str) and model[6:] in MODES and model.startswith("fault-") else self.mode
        stream = bool(req.get("stream"))
        if mode in ("500", "503"):
            err = json.dumps({"error": {"message": f"injected {mode}", "type": "server_error"}}).encode()
            w.write(_json_response(int(mode), err))
        elif mode == "429":
            err = json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}}).encode()
            w.write(_json_response(429, err, b"retry-after: " + self.retry_after.encode()))
        elif mode == "reset_before_first_byte":
            w.transport.abort()
            return False
        elif mode == "slow_headers":
            await self._gone(reader, self.slow_s)
            return False
        elif mode == "invalid_json":
            if stream:
                w.write(_SSE_HEAD + _event(_chunk_json(0, "a")) + _event(b'{"id": "chatcmpl-f", "choices": [{"ind')
                        + _event(b"[DONE]") + _END)
            else:
                w.write(_json_response(200, b'{"id": "chatcmpl-f", "object": "chat.completion", "choi'))
        elif mode == "oversized":
            big = b"x" * self.oversize_bytes
            if stream:
                w.write(_SSE_HEAD + _event(_chunk_json(0, "a")))
                w.write(_event(_chunk_json(1, big.decode())) + _event(b"[DONE]") + _END)
            else:
                w.write(_json_response(200, _completion(big.decode())))
        elif stream:
            return await self._stream(mode, reader, w)
        elif mode in ("slow_body", "never_ends", "hold", "reset_mid_stream", "truncated_sse"):
            body = _completion()
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
                    + body[:10])
            await w.drain()
            self.first_byte_sent.set()
            if mode in ("reset_mid_stream", "truncated_sse"):
                if mode == "reset_mid_stream":
                    w.transport.abort()
                return False  # truncated: the connection ends 10 bytes into the body
            if mode == "hold":
                if await self._held(reader):
                    return False
                w.write(body[10:])
            else:
                for b in body[10:]:
                    if await self._gone(reader, self.slow_s if mode == "slow_body" else self.trickle_s):
                        return False
                    w.write(bytes([b]))
                    await w.drain()
        else:  # ok
            w.write(_json_response(200, _completion()))
        await w.drain()
        self.first_byte_sent.set()
        return True

    async def _stream(self, mode: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_SSE_HEAD + _event(_chunk_json(0, "first")))
        await w.drain()
        self.first_byte_sent.set()
        if mode == "reset_mid_stream":
            w.write(_event(_chunk_json(1, " second")))
            await w.drain()
            w.transport.abort()
            return False
        if mode == "truncated_sse":  # the body ends cleanly, mid-event, with no [DONE]
            w.write(b"%x\r\n%s\r\n" % (20, b'data: {"id": "chatcm') + _END)
            await w.drain()
            return True
        if mode == "slow_body":  # silent after the first chunk for longer than the read timeout
            await self._gone(reader, self.slow_s)
            return False
        if mode == "hold" and await self._held(reader):
            return False
        if mode == "never_ends":
            i = 1
            while not await self._gone(reader, self.trickle_s):
                w.write(_event(_chunk_json(i, " more")))
                await w.drain()
                i += 1
            return False
        w.write(_event(_chunk_json(1, " done")) + _event(b"[DONE]") + _END)
        await w.drain()
        return True

    # ----- lifecycle --------------------------------------------------------------------------------

    def release(self) -> None:
        """Mode hold: let the held responses finish."""
        assert self._loop is not None and self._released is not None
        self._loop.call_soon_threadsafe(self._released.set)

    def wait_connection(self, index: int, timeout: float = 30) -> ConnRecord:
        """The ``index``-th connection, waited for (a condition variable, no polling)."""
        with self._new_conn:
            if not self._new_conn.wait_for(lambda: len(self.connections) > index, timeout):
                raise TimeoutError(f"no connection #{index} within {timeout} s")
            return self.connections[index]

    def wait_closed(self, index: int, timeout: float = 30) -> float:
        """When connection ``index`` was closed (monotonic), waited for on its event."""
        rec = self.wait_connection(index, timeout)
        if not rec.closed.wait(timeout):
            raise TimeoutError(f"connection #{index} still open after {timeout} s")
        assert rec.closed_at is not None
        return rec.closed_at

    async def _main(self, sock: socket.socket, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._released = asyncio.Event()
        server = await asyncio.start_server(self._conn, sock=sock)
        ready.set()
        async with server:
            await self._stop.wait()
            self._released.set()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> FaultServer:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(sock, ready),), daemon=True,
                                        name=f"faults-{self.port}")
        self._thread.start()
        assert ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
