"""The HTTP proxy end to end: the real openai SDK -> running promptwire -> real fake upstream."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.support.proxy import upstream_config

MSG = [{"role": "user", "content": "hello little world"}]


@pytest.fixture
def up_and_proxy(make_upstream: Any, make_proxy: Any) -> tuple[Any, Any]:
    up = make_upstream()
    return up, make_proxy(upstream_config(up.url))


def test_chat_passes_parameters_through_faithfully(up_and_proxy: tuple[Any, Any]) -> None:
    up, proxy = up_and_proxy
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with proxy.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="test-model", messages=MSG, n=2, stop=["zzz"], max_tokens=50, max_completion_tokens=40,
            temperature=0.5, top_p=0.9, seed=7, logprobs=True, top_logprobs=2,
            response_format={"type": "json_object"}, tools=tools, tool_choice="auto",
            extra_body={"some_vendor_field": {"x": [1, 2]}, "promptwire": {}},
            extra_headers={"x-request-id": "req-abc-123"},
        )
    resp = raw.parse()
    assert [c.message.content for c in resp.choices] == ["echo: hello little world"] * 2
    assert resp.usage is not None and resp.usage.completion_tokens == 8
    sent = up.requests[-1]
    assert sent.body == {
        "model": "test-model", "messages": MSG, "n": 2, "stop": ["zzz"], "max_tokens": 50,
        "max_completion_tokens": 40, "temperature": 0.5, "top_p": 0.9, "seed": 7, "logprobs": True,
        "top_logprobs": 2, "response_format": {"type": "json_object"}, "tools": tools, "tool_choice": "auto",
        "some_vendor_field": {"x": [1, 2]},
    }
    assert sent.headers["x-request-id"] == "req-abc-123"
    assert raw.headers["x-request-id"] == "req-abc-123"
    assert json.loads(raw.headers["x-promptwire-stats"]) == []
    assert 0 <= float(raw.headers["x-promptwire-overhead-ms"]) < 1000


def test_non_streamed_bytes_are_the_upstreams(up_and_proxy: tuple[Any, Any]) -> None:
    up, proxy = up_and_proxy
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json={"model": "test-model", "messages": MSG})
    assert r.status_code == 200
    # the fake upstream writes JSON with ", " separators; a re-serialising proxy would not keep them
    assert b'"object": "chat.completion"' in r.content
    assert len(r.headers["x-request-id"]) == 32  # generated when the client sends none
    assert up.requests[-1].headers["x-request-id"] == r.headers["x-request-id"]


def test_completions_endpoint(up_and_proxy: tuple[Any, Any]) -> None:
    up, proxy = up_and_proxy
    with proxy.client() as client:
        resp = client.completions.create(model="test-model", prompt="one two three", max_tokens=2, echo=False)
    assert resp.choices[0].text == "echo: one"
    assert resp.choices[0].finish_reason == "length"
    assert up.requests[-1].path == "/v1/completions"
    assert up.requests[-1].body == {"model": "test-model", "prompt": "one two three", "max_tokens": 2, "echo": False}


def test_streaming_chat_with_usage(up_and_proxy: tuple[Any, Any]) -> None:
    up, proxy = up_and_proxy
    with proxy.client() as client:
        stream = client.chat.completions.create(
            model="test-model", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello little world"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 3 + 4
    assert up.requests[-1].body["stream_options"] == {"include_usage": True}


def test_streaming_completions(up_and_proxy: tuple[Any, Any]) -> None:
    _, proxy = up_and_proxy
    with proxy.client() as client:
        chunks = list(client.completions.create(model="test-model", prompt="a b", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "echo: a b"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_sse_is_byte_compatible(up_and_proxy: tuple[Any, Any]) -> None:
    _, proxy = up_and_proxy
    with proxy.http() as http, http.stream(
        "POST", "/v1/chat/completions", json={"model": "test-model", "messages": MSG, "stream": True}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        stats = json.loads(r.headers["x-promptwire-stats"])
        body = b"".join(r.iter_bytes())
    assert stats == []
    events = body.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    for ev in events[:-2]:
        assert ev.startswith(b'data: {"id": "chatcmpl-')  # the upstream's bytes, untouched
        json.loads(ev[len(b"data: "):])


def test_models_and_health_endpoints(up_and_proxy: tuple[Any, Any]) -> None:
    _, proxy = up_and_proxy
    with proxy.client() as client:
        assert [m.id for m in client.models.list()] == ["test-model", "test-model-2"]
    with proxy.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
        doc = http.get("/openapi.json").json()
        assert "/v1/chat/completions" in doc["paths"]
        assert "promptwire" in doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
        missing = http.get("/v1/nothing-here")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
        metrics = http.get("/metrics").text
    assert "promptwire_in_flight" in metrics


def test_metrics_count_requests_and_tokens(up_and_proxy: tuple[Any, Any]) -> None:
    _, proxy = up_and_proxy
    with proxy.client() as client:
        client.chat.completions.create(model="test-model", messages=MSG)
        list(client.chat.completions.create(model="test-model", messages=MSG, stream=True,
                                            stream_options={"include_usage": True}))
    with proxy.http() as http:
        text = http.get("/metrics").text
    assert 'promptwire_requests_total{code="200",kind="chat",model="test-model",stream="false"} 1.0' in text
    assert 'promptwire_requests_total{code="200",kind="chat",model="test-model",stream="true"} 1.0' in text
    assert 'promptwire_prompt_tokens_total{model="test-model"} 6.0' in text
    assert 'promptwire_completion_tokens_total{model="test-model"} 8.0' in text
    assert 'promptwire_overhead_seconds_count{kind="chat"} 2.0' in text
    assert 'promptwire_time_to_first_token_seconds_count{model="test-model"} 1.0' in text


def test_routing_by_discovery_default_and_rename(make_upstream: Any, make_proxy: Any) -> None:
    a = make_upstream(models=["a-model"])
    b = make_upstream(models=["b-model", "b-other"])
    cfg = upstream_config(a.url, b.url, models=[{"match": "alias", "upstream_model": "b-other", "backends": ["up2"]}])
    proxy = make_proxy(cfg)
    with proxy.client() as client:
        assert sorted(m.id for m in client.models.list()) == ["a-model", "alias", "b-model", "b-other"]
        client.chat.completions.create(model="b-model", messages=MSG)  # discovered on up2
        assert b.requests[-1].body["model"] == "b-model"
        client.chat.completions.create(model="alias", messages=MSG)  # route renames it
        assert b.requests[-1].body["model"] == "b-other"
        n_a = a.app.generation_requests
        with pytest.raises(openai.NotFoundError):  # unknown: the default (first) backend decides, here 404
            client.chat.completions.create(model="zzz", messages=MSG)
        assert a.app.generation_requests == n_a + 1
