"""Error statuses reach the real openai SDK as its own exception classes, in OpenAI's error JSON."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import openai
import pytest

from tests.support.proxy import upstream_config
from tests.support.wait import until

MSG = [{"role": "user", "content": "hi"}]


def test_400_invalid_body_names_the_parameter(make_upstream: Any, make_proxy: Any) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url))
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="test-model", messages=[{"role": "user"}], n=0)
    assert ei.value.status_code == 400
    assert ei.value.body["param"] == "n"  # type: ignore[index]
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_401_without_a_valid_key(make_upstream: Any, make_proxy: Any) -> None:
    sha = hashlib.sha256(b"sk-good").hexdigest()
    proxy = make_proxy(upstream_config(make_upstream().url, auth={"keys": [{"id": "team", "sha256": sha}]}))
    with proxy.client(api_key="sk-bad") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="test-model", messages=MSG)
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json={"model": "test-model", "messages": MSG})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = http.post("/v1/chat/completions", json={"model": "test-model", "messages": MSG},
                       headers={"x-api-key": "sk-good"})
        assert ok.status_code == 200
    with proxy.client(api_key="sk-good") as client:
        assert client.chat.completions.create(model="test-model", messages=MSG).choices[0].message.content


def test_404_unknown_model_from_upstream(make_upstream: Any, make_proxy: Any) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url))
    with proxy.client() as client, pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="no-such-model", messages=MSG)
    assert ei.value.code == "model_not_found"  # the upstream's error body is passed through


def test_413_body_too_large(make_upstream: Any, make_proxy: Any) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url, limits={"max_body_bytes": 2000}))
    big = [{"role": "user", "content": "x" * 5000}]
    with proxy.client() as client, pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model="test-model", messages=big)
    assert ei.value.status_code == 413
    assert ei.value.code == "body_too_large"


def test_429_when_too_many_in_flight(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(latency_s=0.6)
    proxy = make_proxy(upstream_config(up.url, limits={"max_in_flight": 1, "retry_after_s": 3}))
    done: list[str] = []

    def slow() -> None:
        with proxy.client() as client:
            done.append(client.chat.completions.create(model="test-model", messages=MSG).choices[0].message.content)

    t = threading.Thread(target=slow)
    t.start()
    until(lambda: proxy.gateway.in_flight == 1, "the first request to be in flight")
    with proxy.client() as client, pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="test-model", messages=MSG)
    assert ei.value.response.headers["retry-after"] == "3"
    t.join()
    assert done == ["echo: hi"]


def test_502_when_upstream_keeps_failing(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(fail_next=100, fail_status=500)
    cfg = upstream_config(up.url)
    cfg["backends"]["up1"]["retries"] = {"max_attempts": 2, "backoff_s": 0.01}
    proxy = make_proxy(cfg)
    with proxy.client() as client, pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model="test-model", messages=MSG)
    assert ei.value.status_code == 502
    assert up.app.generation_requests == 2


def test_503_no_backend_says_how_to_add_one(make_proxy: Any) -> None:
    proxy = make_proxy({"server": {"grpc_port": None}})
    with proxy.client() as client:
        assert list(client.models.list()) == []
        with pytest.raises(openai.InternalServerError) as ei:
            client.chat.completions.create(model="anything", messages=MSG)
    assert ei.value.status_code == 503
    assert ei.value.code == "no_backend"
    assert "--upstream" in ei.value.message and "--model" in ei.value.message


def test_504_request_timeout(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(latency_s=60.0)  # never answers in time
    proxy = make_proxy(upstream_config(up.url, limits={"request_timeout_s": 0.3}))
    t = time.monotonic()
    with proxy.client() as client, pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model="test-model", messages=MSG)
    assert ei.value.status_code == 504
    assert time.monotonic() - t < 0.3 + 1.0  # the limit, plus a second at most
    until(lambda: up.app.disconnects == 1, "the abandoned upstream request to be closed")


def test_prompt_too_large_is_400(make_upstream: Any, make_proxy: Any) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url, limits={"max_prompt_chars": 10,
                                                                     "max_prompt_tokens": 1000}))
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "y" * 11}])
    assert ei.value.code == "prompt_too_large" and ei.value.param == "messages"
    proxy2 = make_proxy(upstream_config(make_upstream().url, limits={"max_prompt_tokens": 5}))
    with proxy2.client() as client:
        client.completions.create(model="test-model", prompt="one two three")
        with pytest.raises(openai.BadRequestError) as ei:
            client.completions.create(model="test-model", prompt="one two three four five six seven")
    assert ei.value.param == "prompt" and "tokens" in ei.value.message


def test_per_key_models(make_upstream: Any, make_proxy: Any) -> None:
    keys = [{"id": "a", "sha256": hashlib.sha256(b"ka").hexdigest(), "models": ["test-model"]}]
    proxy = make_proxy(upstream_config(make_upstream().url, auth={"keys": keys}))
    with proxy.client(api_key="ka") as client:
        client.chat.completions.create(model="test-model", messages=MSG)
        with pytest.raises(openai.PermissionDeniedError) as ei:
            client.chat.completions.create(model="test-model-2", messages=MSG)
    assert ei.value.param == "model"
