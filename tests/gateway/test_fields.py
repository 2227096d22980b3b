"""Request values checked as OpenAI does, by one table, identically over HTTP and gRPC; a backend may opt out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from gateway.config import GatewayConfig
from gateway.core.fields import FIELDS, MAX_N, ROLES, check_fields
from gateway.core.gateway import Gateway
from gateway.errors import InvalidRequest
from gateway.grpc.convert import grpc_param
from gateway.http.app import create_app
from gateway.http.models import openapi_document
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2
from tests.support.grpc_stub import serving_stub

USER = {"role": "user", "content": "hi"}
_TYPED = {"max_tokens", "temperature", "top_p", "seed", "n", "presence_penalty", "frequency_penalty", "stop"}

# (extra chat body fields, the parameter the 400 names); the issue's own examples first
BAD_CHAT: list[tuple[dict[str, Any], str]] = [
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [USER, {"role": "Assistant", "content": "x"}]}, "messages[1].role"),
    ({"temperature": 1e9}, "temperature"),
    ({"top_p": 3.0}, "top_p"),
    ({"n": 100000}, "n"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.0001}, "temperature"),
    ({"top_p": -0.5}, "top_p"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.01}, "frequency_penalty"),
    ({"n": 0}, "n"),
    ({"n": 129}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logit_bias": {"50256": 101}}, "logit_bias"),
    ({"logit_bias": {"hello": 1}}, "logit_bias"),
]
GOOD_CHAT: list[dict[str, Any]] = [
    {"temperature": 0}, {"temperature": 2}, {"top_p": 0.0}, {"top_p": 1}, {"presence_penalty": -2},
    {"frequency_penalty": 2.0}, {"n": 1}, {"n": 128}, {"max_tokens": 1}, {"logprobs": True, "top_logprobs": 20},
    {"logprobs": True, "top_logprobs": 0}, {"stop": ["a", "b", "c", "d"]}, {"stop": "x"},
    {"logit_bias": {"50256": -100}}, {"messages": [{"role": r, "content": "x"} for r in ROLES[:4]] + [USER]},
]


def _grpc_chat(extra: dict[str, Any]) -> gateway_pb2.ChatRequest:
    """The same request as a ChatRequest: typed fields where gRPC has them, the rest in extra_json."""
    messages = [common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in extra.get("messages", [USER])]
    typed = {k: v for k, v in extra.items() if k in _TYPED}
    if isinstance(typed.get("stop"), str):
        typed["stop"] = [typed["stop"]]
    if "logprobs" in extra:
        typed["logprobs"] = extra["logprobs"]
    if "top_logprobs" in extra:
        typed["top_logprobs"] = extra["top_logprobs"]
        typed.setdefault("logprobs", extra.get("logprobs", False))
    rest = {k: v for k, v in extra.items() if k not in _TYPED and k not in {"messages", "logprobs", "top_logprobs"}}
    if "max_completion_tokens" in rest:
        typed["max_tokens"] = rest.pop("max_completion_tokens")
    sampling = options_pb2.SamplingParams(**typed, extra_json=json.dumps(rest) if rest else "")
    return gateway_pb2.ChatRequest(model="test-model", messages=messages, sampling=sampling)


@pytest.fixture
async def fronts(make_upstream: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any, Any]]:
    """One gateway served over HTTP (in-process ASGI) and gRPC (a real server), and its upstream."""
    up = make_upstream(models=["test-model", "vllm-model"])
    cfg = {"backends": {"up": {"type": "openai", "base_url": up.url, "models": ["test-model"]},
                        "vllm": {"type": "openai", "base_url": up.url, "models": ["vllm-model"],
                                 "openai_limits": False}}}
    gw = Gateway(GatewayConfig.model_validate(cfg))
    await gw.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gw))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http, serving_stub(gw) as stub:
            yield http, stub, up
    finally:
        await gw.aclose()


async def _grpc_error(stub: Any, req: gateway_pb2.ChatRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stub.Chat(req, timeout=10):
            pass
    trailers = dict(ei.value.trailing_metadata() or ())
    return ei.value.code(), trailers.get("x-promptwire-error-param", "")


@pytest.mark.parametrize(("extra", "param"), BAD_CHAT, ids=[p + ":" + json.dumps(e)[:40] for e, p in BAD_CHAT])
async def test_bad_values_are_rejected_alike_on_http_and_grpc(fronts: Any, extra: dict[str, Any], param: str) -> None:
    http, stub, up = fronts
    before = up.app.generation_requests
    r = await http.post("/v1/chat/completions", json={"model": "test-model", "messages": [USER], **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"
    code, grpc_path = await _grpc_error(stub, _grpc_chat(extra))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_path == grpc_param(param)
    assert up.app.generation_requests == before  # nothing reached the upstream


@pytest.mark.parametrize("extra", GOOD_CHAT, ids=[json.dumps(e)[:40] for e in GOOD_CHAT])
async def test_values_within_openai_limits_pass_on_both(fronts: Any, extra: dict[str, Any]) -> None:
    http, stub, _ = fronts
    r = await http.post("/v1/chat/completions", json={"model": "test-model", "messages": [USER], **extra})
    assert r.status_code == 200, r.text
    msgs = [m async for m in stub.Chat(_grpc_chat(extra), timeout=10)]
    assert msgs[-1].done


async def test_non_finite_numbers_are_400(fronts: Any) -> None:
    http, stub, _ = fronts
    body = '{"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    r = await http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    code, path = await _grpc_error(stub, _grpc_chat({"top_p": float("inf")}))
    assert (code, path) == (grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_p")


async def test_completion_rules(fronts: Any) -> None:
    http, stub, _ = fronts
    for extra, param in (({"logprobs": 6}, "logprobs"), ({"best_of": 21}, "best_of"),
                         ({"n": 3, "best_of": 2}, "best_of"), ({"temperature": 3}, "temperature")):
        r = await http.post("/v1/completions", json={"model": "test-model", "prompt": "x", **extra})
        assert (r.status_code, r.json()["error"]["param"]) == (400, param)
    req = gateway_pb2.GenerateRequest(model="test-model", prompt="x",
                                      sampling=options_pb2.SamplingParams(logprobs=True, top_logprobs=6))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stub.Generate(req, timeout=10):
            pass
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_backend_can_opt_out_of_openai_limits(fronts: Any) -> None:
    """vLLM takes temperature 5, other roles, more stop strings: `openai_limits: false` lets them through."""
    http, stub, up = fronts
    wide = {"temperature": 5.0, "top_p": 1.5, "stop": ["1", "2", "3", "4", "5", "6"],
            "messages": [{"role": "ipython", "content": "x"}, USER]}
    r = await http.post("/v1/chat/completions", json={"model": "vllm-model", "messages": [USER], **wide})
    assert r.status_code == 200, r.text
    sent = up.requests[-1].body
    assert sent["temperature"] == 5.0 and sent["messages"][0]["role"] == "ipython"
    req = _grpc_chat(wide)
    req.model = "vllm-model"
    msgs = [m async for m in stub.Chat(req, timeout=10)]
    assert msgs[-1].done and up.requests[-1].body["top_p"] == 1.5
    # n and max_tokens are checked for every backend
    r = await http.post("/v1/chat/completions", json={"model": "vllm-model", "messages": [USER], "n": 0})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "n")


async def test_max_n_is_a_configurable_lower_cap(make_upstream: Any) -> None:
    up = make_upstream()
    gw = Gateway(GatewayConfig.model_validate(
        {"limits": {"max_n": 4}, "backends": {"up": {"type": "openai", "base_url": up.url}}}))
    await gw.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gw))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http, serving_stub(gw) as stub:
            ok = await http.post("/v1/chat/completions", json={"model": "test-model", "messages": [USER], "n": 4})
            assert ok.status_code == 200
            r = await http.post("/v1/chat/completions", json={"model": "test-model", "messages": [USER], "n": 5})
            assert (r.status_code, r.json()["error"]["param"]) == (400, "n")
            assert "between 1 and 4" in r.json()["error"]["message"]
            assert await _grpc_error(stub, _grpc_chat({"n": 5})) == (grpc.StatusCode.INVALID_ARGUMENT, "sampling.n")
    finally:
        await gw.aclose()
    with pytest.raises(ValueError, match="max_n"):
        GatewayConfig.model_validate({"limits": {"max_n": 129}})


def test_openapi_document_shows_the_tables_bounds() -> None:
    schemas = openapi_document("x")["components"]["schemas"]
    for rule in FIELDS:
        for model, kind in (("ChatCompletionRequest", "chat"), ("CompletionRequest", "completion")):
            if kind in rule.kinds:
                prop = schemas[model]["properties"][rule.name]
                assert prop["minimum"] == rule.minimum
                assert prop.get("maximum") == (MAX_N if rule.name == "n" else rule.maximum)
    assert schemas["ChatMessageModel"]["properties"]["role"]["enum"] == list(ROLES)


def test_check_fields_ignores_types_the_front_ends_own() -> None:
    check_fields("chat", {"temperature": "hot", "n": None, "stop": "x"})  # types: pydantic / protobuf
    with pytest.raises(InvalidRequest) as ei:
        check_fields("chat", {"n": 2.5})
    assert ei.value.param == "n"
    check_fields("chat", {"temperature": 9}, openai_limits=False)
    with pytest.raises(InvalidRequest):
        check_fields("chat", {"n": 200}, openai_limits=False)
