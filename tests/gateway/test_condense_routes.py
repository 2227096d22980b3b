"""POST /v1/condense_history and gRPC CondenseHistory on running gateways (uvicorn / grpc.aio, port 0)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from compressors.diff_history import apply, normalise
from gateway.config import GatewayConfig
from gateway.core.gateway import Gateway
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2
from tests.compressors.test_diff_history_chat import conversation
from tests.support.grpc_stub import serving_stub
from tests.support.proxy import upstream_config

KEY = "sk-test-condense"
AUTH = {"keys": [
    {"id": "all", "sha256": hashlib.sha256(KEY.encode()).hexdigest()},
    {"id": "compress-only", "sha256": hashlib.sha256(b"sk-compress").hexdigest(), "stages": ["compress"]},
]}
BEARER = {"authorization": f"Bearer {KEY}"}


def _rebuild(messages: list[dict[str, Any]], observations: list[dict[str, Any]]) -> dict[int, str | None]:
    """What a client can rebuild from the route's answer alone."""
    last: dict[str, str] = {}
    out: dict[int, str | None] = {}
    for o in observations:
        text = messages[o["index"]]["content"]
        if o["kind"] == "placeholder":
            out[o["index"]] = None
            continue
        if o["kind"] == "diff":
            text = apply(last[o["group"]], text)
        last[o["group"]] = out[o["index"]] = text
    return out


def test_http_condenses_without_any_stage_configured(make_proxy: Any) -> None:
    proxy = make_proxy({"server": {"grpc_port": None}, "auth": AUTH})
    msgs = conversation(6, tools=("look", "status"))
    with proxy.http(headers=BEARER) as http:
        r = http.post("/v1/condense_history", json={"messages": msgs, "window": 2}, headers={"x-request-id": "c1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "c1"
    body = r.json()
    assert [m["role"] for m in body["messages"]] == [m["role"] for m in msgs]
    kinds = [(o["group"], o["kind"]) for o in body["observations"]]
    assert kinds == [("look", "placeholder"), ("status", "placeholder"), ("look", "full"), ("status", "full"),
                     ("look", "diff"), ("status", "diff")]
    stats = body["stats"]
    assert stats["stage"] == "condense_history" and stats["tokens_after"] < stats["tokens_before"]
    assert stats["extra"] == {"observations": 6, "observations_diffed": 2, "placeholders": 2}
    rebuilt = _rebuild(body["messages"], body["observations"])
    for o in body["observations"]:
        original = msgs[o["index"]]["content"]
        expected = None if o["kind"] == "placeholder" else original if o["kind"] == "full" else normalise(original)
        assert rebuilt[o["index"]] == expected


def test_http_applies_the_operator_defaults(make_proxy: Any) -> None:
    proxy = make_proxy({"server": {"grpc_port": None}, "stages": {"condense_history": {"defaults": {"window": 1}}}})
    msgs = conversation(4, tools=("look",))
    with proxy.http() as http:
        default = http.post("/v1/condense_history", json={"messages": msgs}).json()
        wider = http.post("/v1/condense_history", json={"messages": msgs, "window": 4}).json()
    assert default["stats"]["extra"]["placeholders"] == 3
    assert wider["stats"]["extra"]["placeholders"] == 0


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"messages": "conversation", "window": 2}, 400, "messages"),
        ({"window": 2}, 400, "messages"),
        ({"messages": [{"content": "no role"}]}, 400, "messages[0]"),
        ({"messages": "M", "window": 0}, 400, "window"),
        ({"messages": "M", "window": 2.5}, 400, "window"),
        ({"messages": "M", "budget_tokens": 30}, 400, "budget_tokens"),
        ({"messages": "M", "roles": []}, 400, "roles"),
        ({"messages": "M", "min_chars": -1}, 400, "min_chars"),
        ({"messages": "M", "bogus": 1}, 400, "bogus"),
        ({"messages": "ORPHAN"}, 400, "messages[5].tool_call_id"),
        ({"messages": "IMAGE"}, 400, "messages[3].content"),
    ],
)
def test_http_bad_input_is_400_naming_the_field(make_proxy: Any, body: dict[str, Any], status: int, param: str) -> None:
    proxy = make_proxy({"server": {"grpc_port": None}})
    msgs = conversation(3)
    if body.get("messages") == "ORPHAN":
        msgs[5]["tool_call_id"] = "call_unknown"
    if body.get("messages") == "IMAGE":
        msgs[3]["content"] = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    if body.get("messages") in ("M", "ORPHAN", "IMAGE"):
        body = {**body, "messages": msgs}
    with proxy.http() as http:
        r = http.post("/v1/condense_history", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_http_auth_and_stage_permissions(make_proxy: Any) -> None:
    proxy = make_proxy({"server": {"grpc_port": None}, "auth": AUTH})
    body = {"messages": conversation(2)}
    with proxy.http() as http:
        assert http.post("/v1/condense_history", json=body).status_code == 401
        r = http.post("/v1/condense_history", json=body, headers={"authorization": "Bearer sk-compress"})
        assert r.status_code == 403 and r.json()["error"]["param"] == "promptwire.condense_history"
        r = http.post("/v1/condense_history", content=b"{not json", headers=BEARER)
        assert r.status_code == 400
        assert "/v1/condense_history" in http.get("/openapi.json", headers=BEARER).json()["paths"]


# --- gRPC --------------------------------------------------------------------------------------------


def _pb_messages(msgs: list[dict[str, Any]]) -> list[common_pb2.ChatMessage]:
    out = []
    for m in msgs:
        pm = common_pb2.ChatMessage(role=m["role"], content=m.get("content") or "")
        if "tool_call_id" in m:
            pm.tool_call_id = m["tool_call_id"]
        for c in m.get("tool_calls") or ():
            pm.tool_calls.append(common_pb2.ToolCall(id=c["id"], type="function", function=common_pb2.FunctionCall(
                name=c["function"]["name"], arguments=c["function"]["arguments"])))
        out.append(pm)
    return out


@pytest.fixture
async def stub(make_upstream: Any) -> AsyncIterator[Any]:
    up = make_upstream()
    spec = {"name": "condense_history", "enabled": False, "client_options": ["*"]}
    config = upstream_config(up.url, auth=AUTH, models=[{"match": "test-model", "stages": [spec]}])
    gw = Gateway(GatewayConfig.model_validate(config))
    await gw.start()
    try:
        async with serving_stub(gw) as s:
            s.upstream = up
            yield s
    finally:
        await gw.aclose()


METADATA = (("authorization", f"Bearer {KEY}"),)


async def test_grpc_condense_history(stub: Any) -> None:
    msgs = conversation(6, tools=("look",))
    call = stub.CondenseHistory(gateway_pb2.CondenseHistoryRequest(
        messages=_pb_messages(msgs), options=options_pb2.CondenseHistoryOptions(window=3), request_id="g1"),
        metadata=METADATA)
    resp = await call
    trailers = dict(await call.trailing_metadata())
    assert resp.request_id == "g1" and trailers["x-request-id"] == "g1"
    assert [o.kind for o in resp.observations] == ["placeholder"] * 3 + ["full", "diff", "diff"]
    assert resp.stats.stage == "condense_history" and resp.stats.tokens_after < resp.stats.tokens_before
    assert dict(resp.stats.extra) == {"observations": 6.0, "observations_diffed": 2.0, "placeholders": 3.0}
    assert json.loads(trailers["x-promptwire-stats"])[0]["extra"]["placeholders"] == 3
    out = [{"role": m.role, "content": m.content} for m in resp.messages]
    assert [m.tool_call_id for m in resp.messages if m.role == "tool"] == [f"call_{k}" for k in range(6)]
    assert [c.function.name for m in resp.messages for c in m.tool_calls] == ["look"] * 6
    rebuilt = _rebuild(out, [{"index": o.index, "group": o.group, "kind": o.kind} for o in resp.observations])
    assert rebuilt[resp.observations[-1].index] == normalise(msgs[-1]["content"])


@pytest.mark.parametrize(
    ("options", "mutate", "param"),
    [
        ({"window": 0}, None, "options.window"),
        ({"budget_tokens": 10}, None, "options.budget_tokens"),
        ({"roles": [""]}, None, "options.roles"),
        ({}, "orphan", "messages[5].tool_call_id"),
    ],
)
async def test_grpc_bad_input_is_invalid_argument_naming_the_field(
    stub: Any, options: dict[str, Any], mutate: str | None, param: str
) -> None:
    msgs = conversation(3)
    if mutate == "orphan":
        msgs[5]["tool_call_id"] = "call_unknown"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CondenseHistory(gateway_pb2.CondenseHistoryRequest(
            messages=_pb_messages(msgs), options=options_pb2.CondenseHistoryOptions(**options)), metadata=METADATA)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("x-promptwire-error-param", param) in tuple(err.value.trailing_metadata() or ())


async def test_grpc_condense_history_needs_a_key(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CondenseHistory(gateway_pb2.CondenseHistoryRequest(messages=_pb_messages(conversation(1))))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_grpc_chat_turns_the_stage_on_per_request(stub: Any) -> None:
    msgs = conversation(4, tools=("look",))
    stages = options_pb2.StageOverrides(condense_history=options_pb2.CondenseHistoryStage(
        options=options_pb2.CondenseHistoryOptions(window=2)))
    call = stub.Chat(gateway_pb2.ChatRequest(model="test-model", messages=_pb_messages(msgs), stages=stages),
                     metadata=METADATA)
    replies = [m async for m in call]
    assert replies[-1].stats[0].stage == "condense_history"
    sent = stub.upstream.requests[-1].body["messages"]
    tools = [i for i, m in enumerate(msgs) if m["role"] == "tool"]
    assert sent[tools[0]]["content"] == "[earlier look output omitted: 14 lines]"
    assert sent[tools[2]]["content"] == msgs[tools[2]]["content"]
    assert sent[tools[3]]["content"].startswith("@@ -")
    bad = options_pb2.StageOverrides(condense_history=options_pb2.CondenseHistoryStage(
        options=options_pb2.CondenseHistoryOptions(window=0)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Chat(gateway_pb2.ChatRequest(model="test-model", messages=_pb_messages(msgs),
                                                         stages=bad), metadata=METADATA):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(parameter: stages.condense_history.options.window)" in (err.value.details() or "")
