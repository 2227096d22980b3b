"""The HTTP surface's contract at its edges: strict types, auth on every route, limits that count every
prompt form, error params and ids, pass-through of what the client did not send, local model names."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.proxy import upstream_config

M = [{"role": "user", "content": "hi"}]
C = "/v1/chat/completions"


@pytest.mark.parametrize("text", [5, None])
def test_content_part_with_non_string_text_is_400_not_500(
    make_upstream: Any, make_proxy: Any, text: Any
) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url))
    with proxy.http() as http:
        r = http.post(
            C,
            json={
                "model": "test-model",
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
            },
            headers={"x-request-id": "rid-1"},
        )
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.headers.get("x-request-id") == "rid-1"


@pytest.mark.parametrize("value", ["false", "no", "0"])
def test_stream_string_false_is_not_served_as_a_stream(
    make_upstream: Any, make_proxy: Any, value: str
) -> None:
    up = make_upstream()
    proxy = make_proxy(upstream_config(up.url))
    with proxy.http() as http:
        r = http.post(C, json={"model": "test-model", "messages": M, "stream": value})
    # either reject the wrong type (400) or honour the validated value (False) -- never stream
    assert r.status_code == 400 or r.headers["content-type"].startswith("application/json"), r.headers[
        "content-type"
    ]


@pytest.mark.parametrize(
    "field,value", [("temperature", "0.5"), ("n", "2"), ("max_tokens", True), ("seed", "7")]
)
def test_known_fields_are_type_checked(make_upstream: Any, make_proxy: Any, field: str, value: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(upstream_config(up.url))
    with proxy.http() as http:
        r = http.post(C, json={"model": "test-model", "messages": M, field: value})
    assert r.status_code == 400, (
        f"{field}={value!r} accepted and sent upstream as {up.requests[-1].body.get(field)!r}"
    )


def test_models_list_requires_a_key_when_auth_is_on(make_upstream: Any, make_proxy: Any) -> None:
    sha = hashlib.sha256(b"k").hexdigest()
    proxy = make_proxy(
        upstream_config(
            make_upstream().url, auth={"keys": [{"id": "a", "sha256": sha, "models": ["test-model"]}]}
        )
    )
    with proxy.client(api_key="wrong") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_models_list_only_shows_the_keys_models(make_upstream: Any, make_proxy: Any) -> None:
    sha = hashlib.sha256(b"k").hexdigest()
    proxy = make_proxy(
        upstream_config(
            make_upstream().url, auth={"keys": [{"id": "a", "sha256": sha, "models": ["test-model"]}]}
        )
    )
    with proxy.client(api_key="k") as client:
        assert [m.id for m in client.models.list().data] == ["test-model"]


@pytest.mark.parametrize("limits", [{"max_prompt_chars": 100}, {"max_prompt_tokens": 100}])
def test_prompt_limit_counts_token_id_prompts(
    make_upstream: Any, make_proxy: Any, limits: dict[str, int]
) -> None:
    up = make_upstream()
    proxy = make_proxy(upstream_config(up.url, limits=limits))
    with proxy.client() as client, pytest.raises(openai.BadRequestError):
        client.completions.create(model="test-model", prompt=[1] * 5000)


def test_unknown_promptwire_option_with_null_value_is_400(make_upstream: Any, make_proxy: Any) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url))
    with proxy.http() as http:
        r = http.post(C, json={"model": "test-model", "messages": M, "promptwire": {"bogus": None}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "promptwire.bogus", r.text


def test_error_param_names_the_field_not_pydantic_union_branches(make_upstream: Any, make_proxy: Any) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url))
    with proxy.http() as http:
        r1 = http.post(C, json={"model": "test-model", "messages": [{"role": "user", "content": 5}]})
        r2 = http.post(C, json={"model": "test-model", "messages": M, "promptwire": {"compress": True}})
    assert r1.json()["error"]["param"] == "messages[0].content", r1.json()
    assert r2.json()["error"]["param"] == "promptwire.compress", r2.json()


def test_request_id_echoed_on_every_error(make_upstream: Any, make_proxy: Any) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url))
    with proxy.http() as http:
        r405 = http.get(C, headers={"x-request-id": "rid-405"})
        r404 = http.post("/v1/nope", json={}, headers={"x-request-id": "rid-404"})
    assert r405.headers.get("x-request-id") == "rid-405"
    assert r404.headers.get("x-request-id") == "rid-404"


def test_message_without_content_key_is_passed_verbatim(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(upstream_config(up.url))
    msg = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    with proxy.http() as http:
        http.post(
            C,
            json={
                "model": "test-model",
                "messages": [*M, msg, {"role": "tool", "tool_call_id": "c", "content": "1"}],
            },
        )
    assert up.requests[-1].body["messages"][1] == msg


def test_openapi_lists_every_route(make_upstream: Any, make_proxy: Any) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url))
    with proxy.http() as http:
        paths = http.get("/openapi.json").json()["paths"]
    assert "/v1/compress" in paths


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from decoders.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("llama"), "llama", seed=3)


def test_unknown_model_on_local_backend_is_404(llama_dir: Path, make_proxy: Any) -> None:
    # the embedded default (`make run`) is exactly this: one local backend, models: [tiny-llama]
    proxy = make_proxy(
        {
            "server": {"grpc_port": None},
            "backends": {"tiny": {"type": "local", "model_path": str(llama_dir), "models": ["tiny-llama"]}},
        }
    )
    with proxy.client() as client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=M, max_tokens=2)  # type: ignore[arg-type]


def test_reserved_decoder_on_local_model_message_is_not_self_contradictory(
    llama_dir: Path, make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.stages.table import DECODERS, DecoderEntry

    monkeypatch.setitem(DECODERS, "future", DecoderEntry("future", (), "reserved, not built", None, "", ""))
    proxy = make_proxy(
        {
            "server": {"grpc_port": None},
            "backends": {"tiny": {"type": "local", "model_path": str(llama_dir), "models": ["tiny-llama"]}},
        }
    )
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model="tiny-llama", messages=M, extra_body={"promptwire": {"decoder": {"name": "future"}}}
        )  # type: ignore[arg-type]
    assert ei.value.code == "decoder_not_available" and ei.value.param == "promptwire.decoder.name"
    assert "not served by" not in ei.value.message and "reserved" in ei.value.message, ei.value.message


def test_upstream_errors_do_not_reveal_internal_urls(make_proxy: Any) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    proxy = make_proxy(
        upstream_config(
            f"http://127.0.0.1:{port}/v1",
            backends={
                "up1": {
                    "type": "openai",
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "models": ["m"],
                    "retries": {"max_attempts": 1},
                }
            },
        )
    )
    with proxy.http() as http:
        r = http.post(C, json={"model": "m", "messages": M})
    assert r.status_code == 502 and str(port) not in r.text, r.text
