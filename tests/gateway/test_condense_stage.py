"""The condense_history stage: options, apply on a GatewayRequest, and end to end through a real proxy."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from compressors.diff_history import apply, diff, normalise
from gateway.config import GatewayConfig
from gateway.config.stages import CondenseHistoryConfig
from gateway.core.gateway import Gateway
from gateway.core.pipeline import Pipeline
from gateway.errors import InvalidRequest, UpstreamStatusError
from gateway.grpc.server import start_grpc_server
from gateway.observe.metrics import Metrics
from gateway.stages.condense_history import CondenseHistoryStage, condense, make_condense_history_stage
from gateway.stages.table import STAGES
from gateway.types import ChatMessage, GatewayRequest
from protos.promptwire.v1 import gateway_pb2, gateway_pb2_grpc
from tests.compressors.test_diff_history_chat import conversation
from tests.gateway.test_condense_routes import _pb_messages
from tests.support.proxy import upstream_config


def chat(messages: list[dict[str, Any]]) -> GatewayRequest:
    return GatewayRequest("r1", "chat", "test-model", tuple(ChatMessage.from_dict(m) for m in messages))


def test_the_table_builds_the_stage() -> None:
    assert STAGES["condense_history"].factory == "gateway.stages.condense_history:make_condense_history_stage"
    assert {o.name for o in STAGES["condense_history"].options} == {"window", "budget_tokens", "roles", "min_chars"}


def test_validate_merges_defaults_and_names_bad_options() -> None:
    stage = CondenseHistoryStage({"window": 3, "roles": ["tool"]})
    assert stage.validate({"min_chars": 10}) == {"window": 3, "budget_tokens": None, "roles": ("tool",),
                                                 "min_chars": 10}
    assert stage.validate({"window": 5})["window"] == 5  # the request's option wins
    bad_options: list[tuple[dict[str, Any], str]] = [({"window": 0}, "window"), ({"budget_tokens": -1}, "budget_tokens"),
                       ({"roles": []}, "roles"), ({"roles": [""]}, "roles"), ({"min_chars": "3"}, "min_chars"),
                       ({"window": True}, "window"), ({"bogus": 1}, "bogus")]
    for bad, param in bad_options:
        with pytest.raises(InvalidRequest) as e:
            stage.validate(bad)
        assert e.value.param == f"promptwire.condense_history.{param}", bad


def test_factory_checks_operator_defaults() -> None:
    with pytest.raises(InvalidRequest) as e:
        make_condense_history_stage(CondenseHistoryConfig(defaults={"window": 0}))
    assert e.value.param == "stages.condense_history.defaults.window"


async def test_apply_condenses_tool_outputs_and_reports_stats() -> None:
    msgs = conversation(6)
    req = chat(msgs)
    stage = make_condense_history_stage(CondenseHistoryConfig())
    res = await stage.apply(req, stage.validate({"window": 2}))
    new = res.request.messages
    assert len(new) == len(req.messages)
    assert all(new[i] is req.messages[i] for i, m in enumerate(msgs) if m["role"] != "tool")  # untouched objects
    looks = [i for i, m in enumerate(msgs) if m["role"] == "tool"][0::2]
    assert new[looks[0]].content == "[earlier look output omitted: 14 lines]"
    assert new[looks[1]] is req.messages[looks[1]]  # the anchor
    assert new[looks[2]].content == diff(msgs[looks[1]]["content"], msgs[looks[2]]["content"])
    assert new[looks[2]].extra == {"tool_call_id": msgs[looks[2]]["tool_call_id"]}
    assert apply(new[looks[1]].text(), new[looks[2]].text()) == normalise(msgs[looks[2]]["content"])
    # without a budget the token counts are completed off the request path: provisional stats now,
    # the exact ones (those of counting on the request path) from the settle future
    assert res.stats.tokens_before == res.stats.tokens_after == 0 and res.stats.ms > 0
    assert res.settle is not None
    s = await res.settle
    exact = condense([m.to_dict() for m in req.messages], stage.validate({"window": 2})).stats
    assert (s.tokens_before, s.tokens_after) == (exact.tokens_before, exact.tokens_after)
    assert s.stage == "condense_history" and s.tokens_after < s.tokens_before and s.ms == res.stats.ms
    assert s.extra == {"observations": 6, "observations_diffed": 2, "placeholders": 2}
    assert res.hook is None


async def test_counts_off_the_request_path_equal_the_inline_ones_for_content_parts() -> None:
    msgs = conversation(6)
    tools = [i for i, m in enumerate(msgs) if m["role"] == "tool"]
    for i in tools[1::2]:  # text split over two parts, with a non-text part between them
        text = msgs[i]["content"]
        msgs[i]["content"] = [{"type": "text", "text": text[:20]}, {"type": "image_url", "image_url": {"url": "u"}},
                              {"type": "text", "text": text[20:]}]
    stage = make_condense_history_stage(CondenseHistoryConfig())
    for options in ({}, {"window": 2}):
        opts = stage.validate(options)
        res = await stage.apply(chat(msgs), opts)
        assert res.settle is not None
        got = await res.settle
        exact = condense(msgs, opts).stats
        assert (got.tokens_before, got.tokens_after) == (exact.tokens_before, exact.tokens_after) != (0, 0)


async def test_a_budget_counts_on_the_request_path() -> None:
    req = chat(conversation(6))
    stage = make_condense_history_stage(CondenseHistoryConfig())
    options = stage.validate({"window": 2, "budget_tokens": 100000})
    res = await stage.apply(req, options)
    assert res.settle is None
    exact = condense([m.to_dict() for m in req.messages], options).stats
    assert (res.stats.tokens_before, res.stats.tokens_after) == (exact.tokens_before, exact.tokens_after)
    assert 0 < res.stats.tokens_after < res.stats.tokens_before


async def test_apply_returns_the_same_request_when_nothing_changes() -> None:
    req = chat([{"role": "user", "content": "hi"}])
    stage = CondenseHistoryStage()
    res = await stage.apply(req, stage.validate({}))
    assert res.request is req and res.stats.extra["observations"] == 0
    completion = GatewayRequest("r2", "completion", "m", prompt="plain text")
    res = await stage.apply(completion, stage.validate({}))
    assert res.request is completion and res.stats.choice == "skipped: not a chat request"


@pytest.mark.parametrize(
    ("mutate", "options", "param"),
    [
        (lambda m: m[5].update(tool_call_id="call_x"), {}, "messages[5].tool_call_id"),
        (lambda m: m[3].update(content=[{"type": "image_url", "image_url": {"url": "u"}}]), {},
         "messages[3].content"),
        (lambda m: None, {"budget_tokens": 5}, "promptwire.condense_history.budget_tokens"),
    ],
)
async def test_apply_bad_histories_name_the_parameter(mutate: Any, options: dict[str, Any], param: str) -> None:
    msgs = conversation(3)
    mutate(msgs)
    stage = CondenseHistoryStage()
    with pytest.raises(InvalidRequest) as e:
        await stage.apply(chat(msgs), stage.validate(options))
    assert e.value.param == param and e.value.http_status == 400


# --- end to end: real proxy (uvicorn on 127.0.0.1) in front of a real fake upstream --------------------

def _config(url: str, **stage: Any) -> dict[str, Any]:
    spec = {"name": "condense_history", "client_options": ["*"], **stage}
    return upstream_config(url, models=[{"match": "test-model", "stages": [spec]}],
                           stages={"condense_history": {"defaults": {"min_chars": 10}}})


def test_proxy_sends_the_condensed_history_upstream(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url))
    msgs = conversation(8, tools=("look",))
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json={"model": "test-model", "messages": msgs})
        assert r.status_code == 200, r.text
        stats = json.loads(r.headers["x-promptwire-stats"])
        sent = up.requests[-1].body["messages"]
        r2 = http.post("/v1/chat/completions", json={"model": "test-model", "messages": msgs,
                                                     "promptwire": {"condense_history": {"window": 1}}})
        assert r2.status_code == 200, r2.text
        sent_w1 = up.requests[-1].body["messages"]
        stats_w1 = json.loads(r2.headers["x-promptwire-stats"])
    assert [s["stage"] for s in stats] == ["condense_history"]
    assert stats[0]["extra"] == {"observations": 8, "observations_diffed": 7, "placeholders": 0}
    assert stats[0]["tokens_after"] < stats[0]["tokens_before"]
    tools = [i for i, m in enumerate(msgs) if m["role"] == "tool"]
    assert sent[tools[0]] == msgs[tools[0]] and sent[tools[2]]["content"].startswith("@@ -")
    rebuilt = sent[tools[0]]["content"]
    for i in tools[1:]:  # the upstream can rebuild every output from what it was sent
        rebuilt = apply(rebuilt, sent[i]["content"])
        assert rebuilt == normalise(msgs[i]["content"])
    assert [m["role"] for m in sent] == [m["role"] for m in msgs]
    assert sent[2]["tool_calls"] == msgs[2]["tool_calls"]  # assistant calls untouched
    assert stats_w1[0]["extra"]["placeholders"] == 7
    assert sent_w1[tools[-1]]["content"] == msgs[tools[-1]]["content"]  # window 1: the last one in full


def test_a_history_that_grows_is_still_served(make_upstream: Any, make_proxy: Any) -> None:
    # short outputs that change completely: their diffs are longer than they are (tokens_after >
    # tokens_before); the stage reports it and the request goes through
    up = make_upstream()
    proxy = make_proxy(_config(up.url))
    msgs = conversation(6, tools=("status",))
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json={"model": "test-model", "messages": msgs,
                                                    "promptwire": {"condense_history": {"min_chars": 0}}})
    assert r.status_code == 200, r.text
    st = json.loads(r.headers["x-promptwire-stats"])[0]
    assert st["tokens_after"] > st["tokens_before"]


def _exact(msgs: list[dict[str, Any]], **options: Any) -> tuple[int, int]:
    st = condense(msgs, CondenseHistoryStage().validate({"min_chars": 10, **options})).stats
    return st.tokens_before, st.tokens_after


def test_stats_counted_off_the_request_path_reach_stream_headers_and_metrics(
    make_upstream: Any, make_proxy: Any
) -> None:
    # no budget: the stage sends the condensed history at once and counts tokens in a worker thread;
    # the counts must still be exact wherever stats are reported
    up = make_upstream()
    proxy = make_proxy(_config(up.url))
    msgs = conversation(8, tools=("look",))
    with proxy.http() as http:
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": "test-model", "messages": msgs, "stream": True}) as r:
            assert r.status_code == 200
            header = json.loads(r.headers["x-promptwire-stats"])[0]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for line in r.iter_lines()
                           if line.startswith("data: {") and (c := json.loads(line[6:]))["choices"])
        metrics = http.get("/metrics").text
    assert text.startswith("echo: ")  # the answer streamed through
    assert (header["tokens_before"], header["tokens_after"]) == _exact(msgs)
    want = _exact(msgs)
    saved = [ln for ln in metrics.splitlines() if ln.startswith('promptwire_stage_tokens_saved_total{stage="condense_history"}')]
    assert saved and float(saved[0].split()[-1]) == want[0] - want[1]


def test_a_failed_upstream_leaves_the_pending_stats_alone(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream(fail_next=1, fail_status=400)
    proxy = make_proxy(_config(up.url))
    msgs = conversation(4, tools=("look",))
    with proxy.http() as http:
        bad = http.post("/v1/chat/completions", json={"model": "test-model", "messages": msgs})
        ok = http.post("/v1/chat/completions", json={"model": "test-model", "messages": msgs})
    assert bad.status_code == 400 and ok.status_code == 200, (bad.text, ok.text)
    st = json.loads(ok.headers["x-promptwire-stats"])[0]
    assert (st["tokens_before"], st["tokens_after"]) == _exact(msgs)


async def test_a_failed_upstream_still_counts_the_stage_in_the_metrics(make_upstream: Any) -> None:
    # the stage ran and condensed the request before the upstream failed: its deferred stats are
    # completed in the background, so stage time and tokens saved count it like any other request
    up = make_upstream(fail_next=1, fail_status=400)
    gw = Gateway(GatewayConfig.model_validate(_config(up.url)))
    await gw.start()
    msgs = conversation(6, tools=("look",))
    reg = gw.metrics.registry
    labels = {"stage": "condense_history"}
    try:
        with pytest.raises(UpstreamStatusError):
            await gw.generate(chat(msgs))
        await gw.pipeline.settled()
        before, after = _exact(msgs)
        assert reg.get_sample_value("promptwire_stage_tokens_saved_total", labels) == before - after
        assert reg.get_sample_value("promptwire_stage_seconds_count", labels) == 1
    finally:
        await gw.aclose()


class _Failing:
    """A stage after condense_history that fails the request."""

    name = "failing"

    async def apply(self, req: GatewayRequest, options: Any) -> Any:
        raise InvalidRequest("no", param="x")


async def test_a_later_stage_failing_still_counts_the_deferred_stats() -> None:
    config = GatewayConfig.model_validate(_config("http://127.0.0.1:9"))
    metrics = Metrics()
    pipeline = Pipeline(config, STAGES, metrics)
    stage = CondenseHistoryStage()
    msgs = conversation(6, tools=("look",))
    plan: Any = ((stage, stage.validate({"min_chars": 10})), (_Failing(), {}))
    with pytest.raises(InvalidRequest):
        await pipeline.run(chat(msgs), plan)
    await pipeline.aclose()  # waits for the stats completed in the background
    before, after = _exact(msgs)
    labels = {"stage": "condense_history"}
    assert metrics.registry.get_sample_value("promptwire_stage_tokens_saved_total", labels) == before - after
    assert metrics.registry.get_sample_value("promptwire_stage_seconds_count", labels) == 1


async def test_grpc_trailers_carry_the_counted_stats(make_upstream: Any) -> None:
    up = make_upstream()
    gw = Gateway(GatewayConfig.model_validate(_config(up.url)))
    await gw.start()
    handle = await start_grpc_server(gw, "127.0.0.1", 0, health_interval_s=None)
    msgs = conversation(6, tools=("look",))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            call = stub.Chat(gateway_pb2.ChatRequest(model="test-model", messages=_pb_messages(msgs)))
            replies = [m async for m in call]
            trailers = dict(await call.trailing_metadata())
    finally:
        await handle.stop(0)
        await gw.aclose()
    want = _exact(msgs)
    st = json.loads(trailers["x-promptwire-stats"])[0]
    assert (st["tokens_before"], st["tokens_after"]) == want
    final = replies[-1].stats[0]
    assert (final.tokens_before, final.tokens_after) == want


@pytest.mark.parametrize(
    ("extension", "mutate", "param"),
    [
        ({"condense_history": {"window": 0}}, None, "promptwire.condense_history.window"),
        ({"condense_history": {"roles": "tool"}}, None, "promptwire.condense_history.roles"),
        ({}, "orphan", "messages[5].tool_call_id"),
        ({"condense_history": {"budget_tokens": 10}}, None, "promptwire.condense_history.budget_tokens"),
    ],
)
def test_proxy_bad_input_is_400_naming_the_parameter(
    make_upstream: Any, make_proxy: Any, extension: dict[str, Any], mutate: str | None, param: str
) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url))
    msgs = conversation(3)
    if mutate == "orphan":
        msgs[5]["tool_call_id"] = "call_unknown"
    body: dict[str, Any] = {"model": "test-model", "messages": msgs}
    if extension:
        body["promptwire"] = extension
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert not [q for q in up.requests if q.path.endswith("/chat/completions")]
