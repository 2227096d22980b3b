"""Retries, Retry-After, failover, mid-stream failure and client cancellation, end to end."""

from __future__ import annotations

import socket
import time
from typing import Any

import openai
import pytest

from tests.support.proxy import upstream_config
from tests.support.wait import BOUND_S, until

MSG = [{"role": "user", "content": "a b c d e f"}]


def _fast_retries(cfg: dict[str, Any], **kw: Any) -> dict[str, Any]:
    for b in cfg["backends"].values():
        b["retries"] = {"backoff_s": 0.01, **kw}
    return cfg


def _wait_for(cond: Any, timeout: float = BOUND_S) -> bool:
    until(cond, bound_s=timeout)
    return True


def test_retries_5xx_then_succeeds(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(fail_next=2, fail_status=503)
    proxy = make_proxy(_fast_retries(upstream_config(up.url), max_attempts=3))
    with proxy.client() as client:
        assert client.chat.completions.create(model="test-model", messages=MSG).choices[0].message.content
    assert up.app.generation_requests == 3
    with proxy.http() as http:
        assert 'promptwire_upstream_retries_total{backend="up1",reason="503"} 2.0' in http.get("/metrics").text


def test_429_retry_after_is_honoured(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(fail_next=1, fail_status=429, retry_after="0.4")
    proxy = make_proxy(_fast_retries(upstream_config(up.url)))
    t = time.monotonic()
    with proxy.client() as client:
        client.chat.completions.create(model="test-model", messages=MSG)
    assert time.monotonic() - t >= 0.4
    assert up.app.generation_requests == 2


def test_429_with_long_retry_after_goes_to_the_client(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(fail_next=1, fail_status=429, retry_after="120")
    proxy = make_proxy(_fast_retries(upstream_config(up.url)))
    with proxy.client() as client, pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="test-model", messages=MSG)
    assert ei.value.response.headers["retry-after"] == "120"
    assert up.app.generation_requests == 1


def test_4xx_is_not_retried(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(fail_next=1, fail_status=422)
    proxy = make_proxy(_fast_retries(upstream_config(up.url)))
    with proxy.client() as client, pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="test-model", messages=MSG)
    assert up.app.generation_requests == 1


def test_failover_to_the_next_upstream(make_upstream: Any, make_proxy: Any) -> None:
    bad = make_upstream(fail_next=100, fail_status=500)
    good = make_upstream()
    cfg = _fast_retries(upstream_config(bad.url, good.url), max_attempts=1)
    cfg["models"] = [{"match": "test-*", "backends": ["up1", "up2"]}]
    proxy = make_proxy(cfg)
    with proxy.client() as client:
        assert client.chat.completions.create(model="test-model", messages=MSG).choices[0].message.content
        chunks = list(client.chat.completions.create(model="test-model", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: a b c d e f"
    assert bad.app.generation_requests == 2 and good.app.generation_requests == 2


def test_connect_error_retries_then_fails_over(make_upstream: Any, make_proxy: Any) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    good = make_upstream()
    cfg = _fast_retries(upstream_config(dead, good.url), max_attempts=2)
    cfg["models"] = [{"match": "*", "backends": ["up1", "up2"]}]
    proxy = make_proxy(cfg)
    with proxy.client() as client:
        assert client.chat.completions.create(model="test-model", messages=MSG).choices[0].message.content
    with proxy.http() as http:
        text = http.get("/metrics").text
    assert 'promptwire_upstream_retries_total{backend="up1",reason="connect"} 1.0' in text
    assert 'promptwire_upstream_retries_total{backend="up1",reason="failover"} 1.0' in text


def test_mid_stream_failure_ends_with_an_error_event(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(die_after_chunks=3)
    proxy = make_proxy(upstream_config(up.url))
    with proxy.client() as client, pytest.raises(openai.APIError) as ei:
        for _ in client.chat.completions.create(model="test-model", messages=MSG, stream=True):
            pass
    assert "broke off" in ei.value.message or "without [DONE]" in ei.value.message
    with proxy.http() as http, http.stream(
        "POST", "/v1/chat/completions", json={"model": "test-model", "messages": MSG, "stream": True}
    ) as r:
        body = b"".join(r.iter_bytes())
    events = [e for e in body.split(b"\n\n") if e]
    assert len(events) == 4  # three upstream chunks, then the error
    assert events[-1].startswith(b'data: {"error":')
    assert b"[DONE]" not in body


def test_client_cancelling_a_stream_closes_the_upstream(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(chunk_delay_s=0.2)
    proxy = make_proxy(upstream_config(up.url))
    with proxy.client() as client:
        stream = client.chat.completions.create(model="test-model", messages=MSG, stream=True)
        next(iter(stream))
        stream.close()
    assert _wait_for(lambda: up.app.disconnects == 1)
    assert up.app.streams_completed == 0
    assert _wait_for(lambda: proxy.gateway.in_flight == 0)


def test_client_disconnect_before_response_closes_the_upstream(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(latency_s=3.0)
    proxy = make_proxy(upstream_config(up.url))
    with proxy.client(timeout=0.3) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="test-model", messages=MSG)
    assert _wait_for(lambda: up.app.disconnects == 1)
    assert _wait_for(lambda: proxy.gateway.in_flight == 0)


def test_upstream_connections_are_kept_alive_and_reused(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(upstream_config(up.url))
    with proxy.client() as client:
        for _ in range(5):
            assert client.chat.completions.create(model="test-model", messages=MSG).choices[0].message.content
            assert list(client.chat.completions.create(model="test-model", messages=MSG, stream=True))
    assert up.app.generation_requests == 10
    # one request at a time: the one pooled connection carries all ten, whole and streamed alike
    assert len(up.app.connections) == 1


def _open_connections(proxy: Any) -> int:
    pool = proxy.gateway.router.providers["up1"]._pool_
    return 0 if pool is None else int(pool.open_connections)


def test_upstream_closing_idle_keep_alive_connections(make_proxy: Any) -> None:
    from tests.support.upstream import UpstreamServer

    with UpstreamServer(keep_alive_s=0.2) as up:  # closes idle connections after 0.2 s
        proxy = make_proxy(upstream_config(up.url))
        with proxy.client() as client:
            for _ in range(3):
                assert client.chat.completions.create(model="test-model", messages=MSG).choices[0].message.content
                list(client.chat.completions.create(model="test-model", messages=MSG, stream=True))
                # the upstream closes the idle connection (keep_alive_s): wait until the gateway saw it go
                until(lambda: _open_connections(proxy) == 0, "the upstream to close the idle connection")
        assert up.app.generation_requests == 6  # no failed attempt had to be retried
