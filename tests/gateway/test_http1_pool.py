"""The upstream HTTP/1.1 pool against a real server: keep-alive reuse and the max_connections cap."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from gateway.providers.http1 import ConnectError, HTTP1Pool
from tests.support.proxy import upstream_config

BODY = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "a b c"}]}).encode()
HEADERS = [(b"content-type", b"application/json")]


async def _one(pool: HTTP1Pool) -> bytes:
    resp = await pool.request(b"POST", "/chat/completions", HEADERS, BODY, 5.0)
    try:
        assert resp.status == 200
        return await resp.read()
    finally:
        resp.release()


async def test_sequential_requests_share_one_connection(make_upstream: Any) -> None:
    up = make_upstream()
    pool = HTTP1Pool(up.url)
    try:
        for _ in range(5):
            assert json.loads(await _one(pool))["choices"]
        assert len(up.app.connections) == 1
        assert pool.open_connections == 1
    finally:
        pool.close()


async def _until(cond: Any, timeout: float = 20.0) -> None:
    """Yield to the loop until ``cond()`` holds (a state the loop reaches, not a time); the bound only
    stops a test that would hang."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0)


async def test_max_connections_caps_open_connections_and_queues_the_rest(make_upstream: Any) -> None:
    hold = threading.Event()
    up = make_upstream(hold=hold)
    pool = HTTP1Pool(up.url, max_connections=2)
    try:
        requests = asyncio.gather(*[_one(pool) for _ in range(8)])
        await asyncio.to_thread(up.wait_arrived, 2)  # two held upstream; the other six wait for a slot
        await _until(lambda: pool.waiting == 6)
        assert pool.open_connections == 2 and up.app.generation_requests == 2
        hold.set()
        bodies = await requests
        assert all(json.loads(b)["choices"] for b in bodies)
        assert up.app.generation_requests == 8
        assert len(up.app.connections) == 2
        assert pool.waiting == 0
    finally:
        hold.set()
        pool.close()


async def test_a_cancelled_waiter_does_not_take_a_slot(make_upstream: Any) -> None:
    hold = threading.Event()
    up = make_upstream(hold=hold)
    pool = HTTP1Pool(up.url, max_connections=1)
    try:
        first = asyncio.create_task(_one(pool))
        await asyncio.to_thread(up.wait_arrived, 1)  # first holds the only connection
        queued = asyncio.create_task(_one(pool))
        await _until(lambda: pool.waiting == 1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        hold.set()
        await first
        await asyncio.wait_for(_one(pool), 10.0)  # the slot came back: the next request gets it
        assert len(up.app.connections) == 1
    finally:
        hold.set()
        pool.close()


async def test_failed_connects_give_their_slot_back() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    pool = HTTP1Pool(f"http://127.0.0.1:{port}/v1", max_connections=1)
    for _ in range(3):  # each attempt must find the slot free again
        with pytest.raises(ConnectError):
            await pool.request(b"POST", "/chat/completions", HEADERS, BODY, 1.0)
    assert pool.open_connections == 0


def test_backend_max_connections_bounds_the_proxy_upstream_connections(make_upstream: Any, make_proxy: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    up = make_upstream(latency_s=0.05)
    cfg = upstream_config(up.url)
    for b in cfg["backends"].values():
        b["max_connections"] = 2
    proxy = make_proxy(cfg)
    with proxy.client() as client, ThreadPoolExecutor(8) as ex:
        msgs = [{"role": "user", "content": "x y"}]
        results = list(ex.map(lambda _: client.chat.completions.create(model="test-model", messages=msgs),
                              range(8)))
    assert all(r.choices[0].message.content for r in results)
    assert up.app.generation_requests == 8
    assert len(up.app.connections) <= 2
    with proxy.http() as http:
        text = http.get("/metrics").text
    assert 'promptwire_upstream_connections{backend="up1"} 2.0' in text
    assert 'promptwire_upstream_waiting{backend="up1"} 0.0' in text


async def test_a_slow_stream_reader_pauses_the_upstream_socket() -> None:
    """Backpressure: the upstream streams 8 MiB as fast as it can; the reader takes its time. The pool
    must stop reading (pause the socket) instead of buffering everything, and lose nothing."""
    from gateway.providers import http1

    line = b"data: " + b"x" * 1017 + b"\n"  # 1 KiB per line
    n_lines = 8192
    sent_all = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(len(BODY))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(0, n_lines, 64):
            piece = line * 64
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        sent_all.set()
        await reader.read()  # keep-alive: wait for the client to go
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = HTTP1Pool(f"http://127.0.0.1:{port}/v1")
    try:
        resp = await pool.request(b"POST", "/chat/completions", HEADERS, BODY, 5.0)
        conn = resp._conn
        got = 0
        peak = 0
        async for ln in resp.lines():
            got += 1
            peak = max(peak, conn.buffered)
            if got % 256 == 0:
                await asyncio.sleep(0.01)  # a slow client
                peak = max(peak, conn.buffered)
            assert ln == line[:-1]
        assert got == n_lines
        # never much more than the pause mark buffered (plus what one socket read can add), not 8 MiB
        assert http1._PAUSE_AT <= 256 * 1024
        assert peak <= 768 * 1024, peak
        assert sent_all.is_set()
        resp.release()
        assert pool.open_connections == 1 and len(pool._idle) == 1  # clean end: pooled, reading again
        assert not pool._idle[0].paused
    finally:
        pool.close()
        for w in writers:
            w.close()
            await w.wait_closed()
        server.close()
        await server.wait_closed()


# ----- a scripted raw upstream in the test's own loop ---------------------------------------------------

Script = Any  # async (request_number_on_connection, reader, writer) -> bool (True: keep the connection)


class _Raw:
    """A raw-socket upstream on 127.0.0.1 whose replies come from ``script``; records request heads."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.heads: list[bytes] = []
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> _Raw:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self._writers:
            w.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks)
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                self.heads.append(head)
                n += 1
                if not await self.script(n, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # a script still waiting when the test ends is cancelled: end quietly
        finally:
            writer.close()
            self._tasks.discard(task)


def _reply(body: bytes, *extra: bytes, version: bytes = b"HTTP/1.1", length: bool = True) -> bytes:
    head = [version + b" 200 OK", b"content-type: application/json", *extra]
    if length:
        head.append(b"content-length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def _answer_ok(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    """A raw upstream script: every request gets a 200 with ``{}``; the connection stays open."""
    w.write(_reply(b"{}"))
    await w.drain()
    return True


async def _ask(pool: HTTP1Pool, **kw: Any) -> bytes:
    resp = await pool.request(b"POST", "/chat/completions", HEADERS, BODY, 5.0, **kw)
    try:
        return await resp.read()
    finally:
        resp.release()


@pytest.mark.parametrize("version, extra", [(b"HTTP/1.0", ()), (b"HTTP/1.1", (b"connection: close",))])
async def test_a_close_delimited_body_is_complete_at_eof(version: bytes, extra: tuple[bytes, ...]) -> None:
    async def script(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_reply(b'{"ok": 1}', *extra, version=version, length=False))
        await w.drain()
        return False  # the close ends the body

    async with _Raw(script) as up:
        pool = HTTP1Pool(up.url)
        try:
            assert await _ask(pool) == b'{"ok": 1}'
            assert await _ask(pool) == b'{"ok": 1}'  # each on its own connection, nothing pooled
            assert up.connections == 2 and pool.open_connections == 0
        finally:
            pool.close()


async def test_bytes_on_an_idle_connection_never_answer_the_next_request() -> None:
    idle = asyncio.Event()
    stray_sent = asyncio.Event()

    async def script(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_reply(b'"reply %d"' % n))
        await w.drain()
        if n == 1 and up.connections == 1:  # then, unasked, a whole second response while it sits idle
            await idle.wait()
            w.write(_reply(b'"unsolicited"'))
            await w.drain()
            stray_sent.set()
        return True

    async with _Raw(script) as up:
        pool = HTTP1Pool(up.url)
        try:
            assert await _ask(pool) == b'"reply 1"'
            idle.set()  # the reply was read and the connection pooled: now the stray bytes
            await stray_sent.wait()
            await _until(lambda: pool.open_connections == 0)  # the stray bytes closed the idle connection
            assert await _ask(pool) == b'"reply 1"'  # a new connection: its first reply, not the stray one
            assert await _ask(pool) == b'"reply 2"'
            assert up.connections == 2
        finally:
            pool.close()


async def test_bytes_after_a_complete_response_keep_the_response_and_drop_the_connection() -> None:
    async def script(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_reply(b'"whole"') + b"garbage that is not HTTP\r\n")  # one packet
        await w.drain()
        return True

    async with _Raw(script) as up:
        pool = HTTP1Pool(up.url)
        try:
            assert await _ask(pool) == b'"whole"'
            assert await _ask(pool) == b'"whole"'
            assert up.connections == 2  # the first connection was not reused
        finally:
            pool.close()


async def test_only_a_drop_right_after_the_write_counts_as_a_stale_connection(monkeypatch: Any) -> None:
    """A reused connection closed with no reply is stale (safe to resend) only when the close comes
    within _STALE_WINDOW_S of the write; one the upstream held longer may have run the request: that is a
    broken response. The window is set to always / never instead of racing a clock."""
    from gateway.providers import http1
    from gateway.providers.http1 import ProtocolError, StaleConnection

    async def script(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if n == 1:
            w.write(_reply(b"{}"))
            await w.drain()
            return True
        return False  # close without a reply

    async with _Raw(script) as up:
        pool = HTTP1Pool(up.url)
        try:
            monkeypatch.setattr(http1, "_STALE_WINDOW_S", 1e9)  # any close counts as "at once"
            await _ask(pool)
            with pytest.raises(StaleConnection):
                await _ask(pool)
            monkeypatch.setattr(http1, "_STALE_WINDOW_S", -1.0)  # any close counts as "held a while"
            await _ask(pool)
            with pytest.raises(ProtocolError) as e:
                await _ask(pool)
            assert not isinstance(e.value, StaleConnection)
        finally:
            pool.close()


async def test_fresh_skips_idle_connections_and_keeps_the_cap() -> None:
    async with _Raw(_answer_ok) as up:
        pool = HTTP1Pool(up.url, max_connections=2)
        try:
            await asyncio.gather(*[_ask(pool) for _ in range(2)])
            assert up.connections == 2 and len(pool._idle) == 2
            await _ask(pool, fresh=True)  # at the cap: an idle one makes room for the new one
            assert up.connections == 3 and pool.open_connections == 2
        finally:
            pool.close()


async def test_done_without_the_terminating_chunk_gives_the_slot_back(monkeypatch: Any) -> None:
    from gateway.providers import http1

    monkeypatch.setattr(http1, "_END_GRACE_S", 0.01)

    async def script(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        w.write(b"e\r\ndata: [DONE]\n\n\r\n")  # and then never the terminating 0-chunk
        await w.drain()
        await asyncio.Event().wait()  # silent until the test ends
        return False

    async with _Raw(script) as up:
        pool = HTTP1Pool(up.url, max_connections=1)
        try:
            resp = await pool.request(b"POST", "/chat/completions", HEADERS, BODY, 5.0)
            async for line in resp.lines():
                if line == b"data: [DONE]":
                    break
            resp.release_at_end()
            assert pool.open_connections == 1
            await _until(lambda: pool.open_connections == 0)  # closed, not parked forever holding the only slot
        finally:
            pool.close()


async def test_a_spare_request_does_not_queue_behind_max_connections() -> None:
    async with _Raw(_answer_ok) as up:
        pool = HTTP1Pool(up.url, max_connections=1)
        try:
            held = await pool.request(b"POST", "/chat/completions", HEADERS, BODY, 5.0)  # the only slot
            assert await asyncio.wait_for(_ask(pool, spare=True), 2.0) == b"{}"
            assert pool.open_connections == 1 and not pool._idle  # the spare one was closed, not pooled
            await held.read()
            held.release()
        finally:
            pool.close()


async def test_the_base_url_query_goes_on_every_request() -> None:
    async with _Raw(_answer_ok) as up:
        pool = HTTP1Pool(up.url + "/?api-version=2024-06-01")
        try:
            await _ask(pool)
            resp = await pool.request(b"GET", "/models", HEADERS, b"", 5.0)
            await resp.read()
            resp.release()
            assert up.heads[0].startswith(b"POST /v1/chat/completions?api-version=2024-06-01 HTTP/1.1\r\n")
            assert up.heads[1].startswith(b"GET /v1/models?api-version=2024-06-01 HTTP/1.1\r\n")
        finally:
            pool.close()


async def test_host_header_of_an_ipv6_literal_keeps_its_brackets() -> None:
    assert HTTP1Pool("http://[::1]:8000/v1").host_header == b"[::1]:8000"
    assert HTTP1Pool("https://[2001:db8::1]/v1").host_header == b"[2001:db8::1]"
    assert HTTP1Pool("http://example.com:80/v1").host_header == b"example.com"


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n"])
async def test_interim_1xx_before_the_final_response(interim: bytes) -> None:
    async def script(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(interim)
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(_reply(b'{"ok": 1}'))
        await w.drain()
        return True
    async with _Raw(script) as up:
        pool = HTTP1Pool(up.url)
        try:
            resp = await pool.request(b"POST", "/chat/completions", [], b"{}", 5.0)
            status = resp.status
            body = await resp.read()
            resp.release()
            assert (status, body) == (200, b'{"ok": 1}')
        finally:
            pool.close()


async def test_readiness_probe_on_a_stale_keepalive_connection(monkeypatch: Any) -> None:
    """The upstream closed the idle connection just as the probe went out (same race as F2 for POSTs):
    GET /models is idempotent, yet the probe is not resent and /readyz flips to 503 for 2 s."""
    from gateway.config import OpenAIBackendConfig
    from gateway.providers import openai as prov
    body = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
    async def script(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if n == 2:  # the reused connection: dropped with no reply, right after the request came
            return False
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await w.drain()
        return True
    async with _Raw(script) as up:
        p = prov.OpenAIProvider("up", OpenAIBackendConfig(base_url=up.url))
        try:
            assert await p.ready() is True           # connection 1, pooled
            monkeypatch.setattr(prov, "_READY_CACHE_S", 0.0)
            p._ready_at = -1e9
            assert await p.ready() is True, "a stale pooled connection made the upstream look down"
        finally:
            await p.aclose()


async def test_a_wait_cut_by_the_deadline_says_so(make_upstream: Any) -> None:
    import time

    from gateway.providers.http1 import ReadTimeout

    up = make_upstream(latency_s=600.0)  # never answers within the test
    pool = HTTP1Pool(up.url)
    try:
        with pytest.raises(ReadTimeout, match="time limit"):  # not "sent nothing within the read timeout"
            await pool.request(b"POST", "/chat/completions", HEADERS, BODY, 30.0, time.monotonic() + 0.2)
        with pytest.raises(ReadTimeout, match="read timeout"):
            await pool.request(b"POST", "/chat/completions", HEADERS, BODY, 0.2, time.monotonic() + 30)
    finally:
        pool.close()
