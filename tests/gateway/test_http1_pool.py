"""The upstream HTTP/1.1 pool against a real server: keep-alive reuse and the max_connections cap."""

from __future__ import annotations

import asyncio
import json
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


async def test_max_connections_caps_open_connections_and_queues_the_rest(make_upstream: Any) -> None:
    up = make_upstream(latency_s=0.05)
    pool = HTTP1Pool(up.url, max_connections=2)
    try:
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, pool.open_connections)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        bodies = await asyncio.gather(*[_one(pool) for _ in range(8)])
        watcher.cancel()
        assert all(json.loads(b)["choices"] for b in bodies)
        assert up.app.generation_requests == 8
        assert len(up.app.connections) == 2
        assert peak == 2
        assert pool.waiting == 0
    finally:
        pool.close()


async def test_a_cancelled_waiter_does_not_take_a_slot(make_upstream: Any) -> None:
    up = make_upstream(latency_s=0.2)
    pool = HTTP1Pool(up.url, max_connections=1)
    try:
        first = asyncio.create_task(_one(pool))
        await asyncio.sleep(0.05)  # first holds the only connection
        queued = asyncio.create_task(_one(pool))
        await asyncio.sleep(0.01)
        assert pool.waiting == 1
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        await first
        await asyncio.wait_for(_one(pool), 2.0)  # the slot came back: the next request gets it
        assert len(up.app.connections) == 1
    finally:
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
