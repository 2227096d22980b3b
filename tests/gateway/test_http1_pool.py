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
