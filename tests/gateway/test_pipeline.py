"""Stage pipeline: config defaults, per-request overrides through `promptwire`, what is refused, stats."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import openai
import pytest

from gateway.config.stages import NoConfig
from gateway.stages.base import StageResult
from gateway.stages.table import Option, StageEntry
from gateway.tokens import count_tokens
from gateway.types import GatewayRequest, StageStats
from tests.support.proxy import upstream_config


class KeepLast:
    """A small real stage for tests: keeps the system message and the last `keep` other messages."""

    name = "keep_last"

    def validate(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        return dict(options)  # the table has checked names, types and ranges

    async def apply(self, req: GatewayRequest, options: Mapping[str, Any]) -> StageResult:
        t = time.perf_counter()
        keep = int(options.get("keep", 1))
        before = count_tokens(req.prompt_text())
        system = tuple(m for m in req.messages if m.role == "system")
        rest = tuple(m for m in req.messages if m.role != "system")
        if len(rest) <= keep:
            return StageResult(req, StageStats(self.name, before, before, (time.perf_counter() - t) * 1000, "unchanged"))
        new = dataclasses.replace(req, messages=system + rest[-keep:])
        after = count_tokens(new.prompt_text())
        return StageResult(new, StageStats(self.name, before, after, (time.perf_counter() - t) * 1000, f"kept {keep}"))


KEEP_LAST = StageEntry(
    "keep_last",
    (Option("keep", (int,), "messages kept", minimum=1), Option("note", (str,), "a free note")),
    "test stage", NoConfig, lambda config, deps: KeepLast(), "",
)
FUTURE = StageEntry("future_stage", (), "reserved, not built", NoConfig, None, "")


@pytest.fixture(autouse=True)
def _stages(register_stage: Any) -> None:
    register_stage(KEEP_LAST)
    register_stage(FUTURE)


HISTORY = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first question about cats"},
    {"role": "assistant", "content": "cats are mammals"},
    {"role": "user", "content": "and dogs"},
]


def _config(url: str, **spec: Any) -> dict[str, Any]:
    stage = {"name": "keep_last", "options": {"keep": 1}, "client_options": ["keep"], **spec}
    return upstream_config(url, models=[{"match": "test-model", "stages": [stage]}])


def test_default_stage_runs_and_reports_stats(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url))
    with proxy.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="test-model", messages=HISTORY)
    assert [m["content"] for m in up.requests[-1].body["messages"]] == ["be brief", "and dogs"]
    (st,) = json.loads(raw.headers["x-promptwire-stats"])
    assert st["stage"] == "keep_last" and st["choice"] == "kept 1"
    assert st["tokens_after"] < st["tokens_before"]
    # a model without the route gets no stages
    with proxy.client() as client:
        raw2 = client.chat.completions.with_raw_response.create(model="test-model-2", messages=HISTORY)
    assert json.loads(raw2.headers["x-promptwire-stats"]) == []
    assert len(up.requests[-1].body["messages"]) == 4
    with proxy.http() as http:
        metrics = http.get("/metrics").text
    saved = st["tokens_before"] - st["tokens_after"]
    assert f'promptwire_stage_tokens_saved_total{{stage="keep_last"}} {float(saved)}' in metrics


def test_stream_headers_carry_stage_stats(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url))
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json={
        "model": "test-model", "messages": HISTORY, "stream": True, "promptwire": {"keep_last": {"keep": 2}},
    }) as r:
        stats = json.loads(r.headers["x-promptwire-stats"])
        b"".join(r.iter_bytes())
    assert stats[0]["choice"] == "kept 2"
    assert [m["content"] for m in up.requests[-1].body["messages"]] == ["be brief", "cats are mammals", "and dogs"]
    assert "promptwire" not in up.requests[-1].body


def test_client_overrides_within_what_is_allowed(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url, client_can_disable=False))
    with proxy.client() as client:
        client.chat.completions.create(model="test-model", messages=HISTORY,
                                       extra_body={"promptwire": {"keep_last": {"keep": 3}}})
        assert len(up.requests[-1].body["messages"]) == 4
        cases = [
            ({"keep_last": {"note": "x"}}, "promptwire.keep_last.note", "option_not_allowed"),
            ({"keep_last": {"kep": 1}}, "promptwire.keep_last.kep", None),
            ({"keep_last": {"keep": "two"}}, "promptwire.keep_last.keep", None),
            ({"keep_last": {"keep": 0}}, "promptwire.keep_last.keep", None),
            ({"keep_last": False}, "promptwire.keep_last", "option_not_allowed"),
            ({"no_such_stage": {}}, "promptwire.no_such_stage", None),
            ({"future_stage": {}}, "promptwire.future_stage", "stage_not_available"),
            ({"compress": {"rate": 0.5}}, "promptwire.compress", "option_not_allowed"),
            ({"decoder": {"name": "trie", "labels": ["a"]}}, "promptwire.decoder.name", "decoder_not_available"),
            ({"decoder": {"name": "beam"}}, "promptwire.decoder.name", None),
        ]
        for ext, param, code in cases:
            with pytest.raises(openai.BadRequestError) as ei:
                client.chat.completions.create(model="test-model", messages=HISTORY, extra_body={"promptwire": ext})
            assert ei.value.param == param, ext
            if code is not None:
                assert ei.value.code == code, ext


def test_client_can_turn_a_stage_off_or_on(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url, enabled=False))
    with proxy.client() as client:
        client.chat.completions.create(model="test-model", messages=HISTORY)
        assert len(up.requests[-1].body["messages"]) == 4  # off by default
        client.chat.completions.create(model="test-model", messages=HISTORY,
                                       extra_body={"promptwire": {"keep_last": {}}})
        assert len(up.requests[-1].body["messages"]) == 2  # turned on with the operator's options
    proxy2 = make_proxy(_config(up.url))
    with proxy2.client() as client:
        client.chat.completions.create(model="test-model", messages=HISTORY,
                                       extra_body={"promptwire": {"keep_last": False}})
        assert len(up.requests[-1].body["messages"]) == 4


def test_per_key_stages(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    cfg = _config(up.url)
    cfg["auth"] = {"keys": [
        {"id": "plain", "sha256": hashlib.sha256(b"k1").hexdigest(), "stages": []},
        {"id": "full", "sha256": hashlib.sha256(b"k2").hexdigest()},
    ]}
    proxy = make_proxy(cfg)
    with proxy.client(api_key="k1") as client:
        client.chat.completions.create(model="test-model", messages=HISTORY)
        assert len(up.requests[-1].body["messages"]) == 4  # the key may not use the stage: it does not run
        with pytest.raises(openai.PermissionDeniedError) as ei:
            client.chat.completions.create(model="test-model", messages=HISTORY,
                                           extra_body={"promptwire": {"keep_last": {"keep": 2}}})
        assert ei.value.param == "promptwire.keep_last"
    with proxy.client(api_key="k2") as client:
        client.chat.completions.create(model="test-model", messages=HISTORY)
        assert len(up.requests[-1].body["messages"]) == 2
