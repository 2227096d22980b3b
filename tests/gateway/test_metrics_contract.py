"""Metrics and timeouts at their edges: bounded model labels, every HTTP status counted, no "None"
labels, streams cut at request_timeout_s."""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.support.proxy import upstream_config


def test_model_label_cardinality_is_bounded(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    cfg = upstream_config(up.url, models=[{"match": "alias-*", "upstream_model": "test-model"}])
    proxy = make_proxy(cfg)
    n = 250  # > the 200 the HTTP requests_total bound allows per kind
    with proxy.http() as http:
        for _ in range(n):
            r = http.post(
                "/v1/chat/completions",
                json={
                    "model": f"alias-{uuid.uuid4().hex}",
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                },
            )
            assert r.status_code == 200
        text = http.get("/metrics").text
    for fam in (
        "promptwire_time_to_first_token_seconds_count",
        "promptwire_prompt_tokens_total",
        "promptwire_completion_tokens_total",
        "promptwire_requests_total",
    ):
        series = [ln for ln in text.splitlines() if ln.startswith(fam) and "alias-" in ln]
        assert len(series) <= 200, f"{fam}: {len(series)} series from client-chosen model names"


def test_http_errors_are_counted_in_requests_total(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(upstream_config(up.url))
    with proxy.http() as http:
        assert (
            http.post("/v1/chat/completions", json={"model": "test-model", "messages": []}).status_code == 400
        )
        assert (
            http.post(
                "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}
            ).status_code
            == 404
        )
        up.knobs.fail_next = 3
        assert (
            http.post(
                "/v1/chat/completions",
                json={"model": "test-model", "messages": [{"role": "user", "content": "x"}]},
            ).status_code
            == 502
        )
        text = http.get("/metrics").text
    codes = {
        ln.split('code="')[1].split('"')[0]
        for ln in text.splitlines()
        if ln.startswith("promptwire_requests_total{")
    }
    assert {"400", "404", "502"} <= codes, f"requests_total codes seen: {codes}"


def test_stream_ends_at_request_timeout(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(chunk_delay_s=1.9)
    proxy = make_proxy(upstream_config(up.url, limits={"request_timeout_s": 2}))
    t = time.monotonic()
    with proxy.http() as http:
        with http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "test-model",
                "stream": True,
                "messages": [{"role": "user", "content": "a b c d e f g"}],
            },
        ) as r:
            body = r.read()
    took = time.monotonic() - t
    assert b'"timeout"' in body
    assert took < 2 + 1.0, f"request_timeout_s=2 but the stream ran {took:.2f}s"


def test_errors_total_has_no_python_none_label(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(upstream_config(up.url))
    with proxy.http() as http:
        http.post("/v1/chat/completions", json={"model": "test-model", "messages": []})
        text = http.get("/metrics").text
    assert 'code="None"' not in text


def test_upstream_seconds_is_timed_under_the_backend_that_answered(make_upstream: Any, make_proxy: Any) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()  # nothing listens there
    up = make_upstream()
    cfg = upstream_config(up.url)
    cfg["backends"]["dead"] = {"type": "openai", "base_url": f"http://127.0.0.1:{dead}/v1",
                               "retries": {"max_attempts": 1}}
    cfg["models"] = [{"match": "fo-*", "backends": ["dead", "up1"], "upstream_model": "test-model"}]
    proxy = make_proxy(cfg)
    with proxy.http() as http:
        for stream in (False, True):
            r = http.post("/v1/chat/completions", json={"model": "fo-1", "stream": stream,
                                                        "messages": [{"role": "user", "content": "a"}]})
            assert r.status_code == 200
        text = http.get("/metrics").text
    counts = {ln.split("{")[1].split("}")[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
              if ln.startswith("promptwire_upstream_seconds_count{")}
    assert counts.get('backend="up1"') == 2  # both answered by up1 (one whole, one streamed)
    assert counts.get('backend="dead"') == 2  # and both failed attempts on dead timed too
