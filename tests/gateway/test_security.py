"""Security: keys on every route, keys never echoed or logged, per-key allowlists, no client-chosen
upstream or header, size limits, no prompt text in the logs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import httpx
import pytest
from starlette.routing import Route

from gateway.config import GatewayConfig
from gateway.config.stages import NoConfig
from gateway.core.gateway import Gateway
from gateway.http.app import create_app
from gateway.stages.base import StageResult
from gateway.stages.table import StageEntry
from gateway.types import ChatMessage, GatewayRequest, StageStats
from protos.promptwire.v1 import common_pb2, compress_pb2, gateway_pb2
from tests.support.grpc_stub import serving_channel, serving_stub

KEY_A = "sk-test-alpha-0123456789abcdef"
KEY_B = "sk-test-bravo-fedcba9876543210"
SECRETS = (KEY_A, KEY_B, hashlib.sha256(KEY_A.encode()).hexdigest(), hashlib.sha256(KEY_B.encode()).hexdigest(),
           "sk-upstream-secret-42")
PUBLIC = {"/healthz", "/readyz"}


def _keys(**extra: Any) -> dict[str, Any]:
    return {"keys": [
        {"id": "alpha", "sha256": hashlib.sha256(KEY_A.encode()).hexdigest(), "models": ["test-model"],
         "stages": []},
        {"id": "bravo", "sha256": hashlib.sha256(KEY_B.encode()).hexdigest(), "models": ["test-*"]},
    ], **extra}


class Mark:
    """A test-only stage in the compress stage's place (so that gRPC's StageOverrides.compress reaches it):
    it appends " [marked]" to the last message, to see whether it ran."""

    name = "compress"

    def validate(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        return dict(options)

    async def apply(self, req: GatewayRequest, options: Mapping[str, Any]) -> StageResult:
        last = req.messages[-1]
        msgs = (*req.messages[:-1], ChatMessage(last.role, f"{last.text()} [marked]"))
        return StageResult(dataclasses.replace(req, messages=msgs), StageStats("compress", 1, 2, 0.0))


@pytest.fixture(autouse=True)
def _mark(register_stage: Any) -> None:
    register_stage(StageEntry("compress", (), "test stage", NoConfig, lambda config, deps: Mark(), "CompressOptions"))


def _config(url: str, **auth: Any) -> dict[str, Any]:
    return {"auth": _keys(**auth), "backends": {"up": {"type": "openai", "base_url": url,
                                                       "api_key": "sk-upstream-secret-42"}},
            "models": [{"match": "test-*", "stages": [{"name": "compress", "enabled": False, "client_options": ["*"]}]}]}


@pytest.fixture
async def gw(make_upstream: Any) -> AsyncIterator[tuple[Gateway, Any]]:
    up = make_upstream()
    gateway = Gateway(GatewayConfig.model_validate(_config(up.url)))
    await gateway.start()
    try:
        yield gateway, up
    finally:
        await gateway.aclose()


def _http(gateway: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw")


async def test_every_http_route_but_health_needs_a_key(gw: tuple[Gateway, Any]) -> None:
    gateway, _ = gw
    app = create_app(gateway)
    routes = [(r.path, m) for r in app.starlette.routes if isinstance(r, Route) for m in sorted(r.methods or ())
              if m != "HEAD"]
    assert {p for p, _ in routes} >= {"/v1/chat/completions", "/v1/models", "/metrics", "/openapi.json"}
    async with _http(gateway) as http:
        for path, method in routes:
            for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
                r = await http.request(method, path, headers=headers, content=b"{}")
                if path in PUBLIC:
                    assert r.status_code in (200, 503), (path, r.status_code)
                else:
                    assert r.status_code == 401, (method, path, headers, r.status_code)
                    assert r.json()["error"]["code"] == "invalid_api_key"
        for path, method in routes:
            if method == "GET":
                r = await http.get(path, headers={"authorization": f"Bearer {KEY_B}"})
                assert r.status_code in (200, 503), (path, r.status_code)


async def test_metrics_can_be_public(make_upstream: Any) -> None:
    up = make_upstream()
    gateway = Gateway(GatewayConfig.model_validate(_config(up.url, metrics_public=True)))
    await gateway.start()
    try:
        async with _http(gateway) as http:
            assert (await http.get("/metrics")).status_code == 200
            assert (await http.get("/openapi.json")).status_code == 401
    finally:
        await gateway.aclose()


async def test_every_grpc_method_needs_a_key(gw: tuple[Gateway, Any]) -> None:
    gateway, _ = gw
    service = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
    async with serving_channel(gateway) as channel:  # every method of the service, called by name
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            request = _request_for(method.input_type.name)
            codes = []
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", f"Bearer {KEY_B}"),)):
                call = (channel.unary_stream if method.server_streaming else channel.unary_unary)(
                    path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b)
                try:
                    if method.server_streaming:
                        async for _ in call(request, metadata=metadata, timeout=10):
                            pass
                    else:
                        await call(request, metadata=metadata, timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code())
            if codes[2] == grpc.StatusCode.UNIMPLEMENTED:  # a reserved method: nothing behind it yet
                continue
            assert codes[:2] == [grpc.StatusCode.UNAUTHENTICATED] * 2, (method.name, codes)
            assert codes[2] != grpc.StatusCode.UNAUTHENTICATED, method.name


def _request_for(name: str) -> Any:
    if name == "ChatRequest":
        return gateway_pb2.ChatRequest(model="test-model", messages=[common_pb2.ChatMessage(role="user", content="x")])
    if name == "GenerateRequest":
        return gateway_pb2.GenerateRequest(model="test-model", prompt="x")
    if name == "CompressRequest":
        return compress_pb2.CompressRequest(text="x")
    return getattr(gateway_pb2, name)()


def _no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a key reached the output: {secret[:8]}..."


async def test_keys_never_appear_in_responses_or_logs(gw: tuple[Gateway, Any], caplog: pytest.LogCaptureFixture) -> None:
    gateway, up = gw
    caplog.set_level(logging.DEBUG)
    body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    seen: list[str] = []
    async with _http(gateway) as http:
        for key in (KEY_A, KEY_B, KEY_A + "x", "", KEY_B[:-1]):
            for headers in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}):
                for path, kw in (("/v1/chat/completions", {"json": body}), ("/v1/chat/completions",
                                 {"json": {**body, "model": "other"}}), ("/v1/chat/completions",
                                 {"json": {**body, "promptwire": {"compress": {"rate": 0.5}}}}),
                                 ("/v1/models", {}), ("/v1/compress", {"json": {"text": "x"}})):
                    r = await http.request("POST" if "json" in kw else "GET", path, headers=headers, **kw)
                    seen.append(json.dumps(dict(r.headers)) + r.text)
    async with serving_stub(gateway) as stub:
        for key in (KEY_A, KEY_B + "!"):
            try:
                async for m in stub.Chat(gateway_pb2.ChatRequest(model="nope", messages=[
                        common_pb2.ChatMessage(role="user", content="x")]), metadata=(("x-api-key", key),), timeout=10):
                    seen.append(str(m))
            except grpc.aio.AioRpcError as e:
                seen.append(f"{e.details()} {e.trailing_metadata()} {e.initial_metadata()}")
    for text in seen:
        _no_secrets(text)
    for rec in caplog.records:
        _no_secrets(rec.getMessage() + json.dumps(rec.__dict__, default=str))
    # the upstream got its own key, not the client's
    assert {r.headers.get("authorization") for r in up.requests if r.path != "/v1/models"} == {
        "Bearer sk-upstream-secret-42"}


async def test_per_key_model_and_stage_allowlists_on_both_front_ends(gw: tuple[Gateway, Any]) -> None:
    gateway, up = gw
    body = {"model": "test-model-2", "messages": [{"role": "user", "content": "hi"}]}
    async with _http(gateway) as http:
        a = {"authorization": f"Bearer {KEY_A}"}
        b = {"authorization": f"Bearer {KEY_B}"}
        r = await http.post("/v1/chat/completions", json=body, headers=a)  # alpha: test-model only
        assert (r.status_code, r.json()["error"]["param"]) == (403, "model")
        assert (await http.post("/v1/chat/completions", json=body, headers=b)).status_code == 200
        models = (await http.get("/v1/models", headers=a)).json()["data"]
        assert [m["id"] for m in models] == ["test-model"]
        marked = {**body, "model": "test-model", "promptwire": {"compress": {}}}
        r = await http.post("/v1/chat/completions", headers=a, json=marked)  # alpha: no stages at all
        assert (r.status_code, r.json()["error"]["param"]) == (403, "promptwire.compress")
        r = await http.post("/v1/chat/completions", headers=b, json=marked)
        assert r.status_code == 200 and up.requests[-1].body["messages"][-1]["content"] == "hi [marked]"
    async with serving_stub(gateway) as stub:
        req = gateway_pb2.ChatRequest(model="test-model-2", messages=[common_pb2.ChatMessage(role="user", content="x")])
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in stub.Chat(req, metadata=(("authorization", f"Bearer {KEY_A}"),), timeout=10):
                pass
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
        msgs = [m async for m in stub.Chat(req, metadata=(("authorization", f"Bearer {KEY_B}"),), timeout=10)]
        assert msgs[-1].done
        listed = await stub.ListModels(gateway_pb2.ListModelsRequest(),
                                       metadata=(("authorization", f"Bearer {KEY_A}"),), timeout=10)
        assert [m.id for m in listed.models] == ["test-model"]
        req = gateway_pb2.ChatRequest(model="test-model", messages=[common_pb2.ChatMessage(role="user", content="x")])
        req.stages.compress.options.SetInParent()
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in stub.Chat(req, metadata=(("authorization", f"Bearer {KEY_A}"),), timeout=10):
                pass
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
        msgs = [m async for m in stub.Chat(req, metadata=(("authorization", f"Bearer {KEY_B}"),), timeout=10)]
        assert msgs[-1].done and up.requests[-1].body["messages"][-1]["content"] == "x [marked]"


async def test_no_client_chosen_upstream_url_or_header(gw: tuple[Gateway, Any]) -> None:
    """Body fields and request ids cannot change where the request goes or which headers go with it."""
    gateway, up = gw
    hostile = {
        "model": "test-model", "messages": [{"role": "user", "content": "hi"}],
        "base_url": "http://169.254.169.254/latest", "api_base": "http://evil.example/v1",
        "extra_headers": {"authorization": "Bearer stolen"}, "headers": {"x-evil": "1"},
        "user": "u\r\nx-evil: 1",
    }
    async with _http(gateway) as http:
        for rid in ("ok-id", "caf\u00e9".encode(), "a" * 500, "tab\there", b"\x7f\x01"):
            r = await http.post("/v1/chat/completions", json=hostile,
                                headers={"authorization": f"Bearer {KEY_B}", "x-request-id": rid})
            assert r.status_code == 200, r.text
            sent = up.requests[-1]
            assert sent.path == "/v1/chat/completions"
            assert "x-evil" not in sent.headers and sent.headers["authorization"] == "Bearer sk-upstream-secret-42"
            assert sent.headers["x-request-id"] == r.headers["x-request-id"]
            assert sent.headers["x-request-id"].isprintable() and len(sent.headers["x-request-id"]) <= 200
            assert sent.body is not None and sent.body["user"] == "u\r\nx-evil: 1"  # a JSON string, not a header
        r = await http.post("/v1/chat/completions", headers={"authorization": f"Bearer {KEY_B}"},
                            json={**hostile, "model": "../../admin?x=1#\r\nhost: evil"})
        assert up.requests[-1].path == "/v1/chat/completions"  # the model goes in the body, never the URL
    async with serving_stub(gateway) as stub:
        req = gateway_pb2.ChatRequest(model="test-model", request_id="id\r\nx-evil: 1",
                                      messages=[common_pb2.ChatMessage(role="user", content="x")])
        async for _ in stub.Chat(req, metadata=(("authorization", f"Bearer {KEY_B}"),
                                                ("x-request-id", "m" * 300)), timeout=10):
            pass
        assert "x-evil" not in up.requests[-1].headers
        assert up.requests[-1].headers["x-request-id"].isprintable()


async def test_size_limits_on_both_front_ends(make_upstream: Any) -> None:
    up = make_upstream()
    cfg = _config(up.url)
    cfg["limits"] = {"max_body_bytes": 4096, "max_prompt_chars": 1000}
    gateway = Gateway(GatewayConfig.model_validate(cfg))
    await gateway.start()
    auth = {"authorization": f"Bearer {KEY_B}"}
    try:
        async with _http(gateway) as http:
            big = {"model": "test-model", "messages": [{"role": "user", "content": "x" * 5000}]}
            r = await http.post("/v1/chat/completions", json=big, headers=auth)
            assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")

            async def chunks() -> Any:  # no content-length: the limit still holds while reading
                for _ in range(10):
                    yield b" " * 1000

            r = await http.post("/v1/chat/completions", content=chunks(), headers=auth)
            assert r.status_code == 413
            r = await http.post("/v1/chat/completions", headers=auth,
                                json={"model": "test-model", "messages": [{"role": "user", "content": "y" * 1500}]})
            assert (r.status_code, r.json()["error"]["code"]) == (400, "prompt_too_large")
            r = await http.post("/v1/compress", json={"text": "z" * 5000}, headers=auth)
            assert r.status_code == 413
        async with serving_stub(gateway) as stub:
            for content, code in (("x" * 5000, grpc.StatusCode.RESOURCE_EXHAUSTED),
                                  ("y" * 1500, grpc.StatusCode.INVALID_ARGUMENT)):
                req = gateway_pb2.ChatRequest(model="test-model",
                                              messages=[common_pb2.ChatMessage(role="user", content=content)])
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    async for _ in stub.Chat(req, metadata=tuple(auth.items()), timeout=10):
                        pass
                assert ei.value.code() == code
    finally:
        await gateway.aclose()
    assert all(len(json.dumps(r.body)) < 4096 for r in up.requests if r.body)
