"""The `conjugate` stage through the gateway: allow-list, exact texts up and down, audit, errors (HTTP, gRPC)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.config import ConfigError, validate_config
from gateway.core.gateway import Gateway
from gateway.stages.conjugate import leet, pig_latin
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2
from tests.support.grpc_stub import grpc_stub
from tests.support.proxy import RunningProxy, upstream_config
from tests.support.upstream import UpstreamServer

KEY_A, KEY_B = "sk-team-a", "sk-team-b"
SYSTEM = "You are a terse assistant. Answer in one sentence."
QUESTION = "What is 7 plus 5? Reply with the number, please."
REPLY = "7h3 4n5w3r 15 12, 0f c0ur53. Th4nk5!"  # what the fake upstream says (in leet)


def conj_config(up: UpstreamServer, audit: Path, allow: dict[str, list[str]] | None = None,
                keys: bool = False, **stage: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "stages": {"conjugate": {"audit_path": str(audit), "allow": allow or {}, **stage}},
        "default_stages": [{"name": "conjugate", "enabled": False, "client_options": ["transform", "language"]}],
    }
    if keys:
        extra["auth"] = {"keys": [{"id": "team-a", "sha256": hashlib.sha256(KEY_A.encode()).hexdigest()},
                                  {"id": "team-b", "sha256": hashlib.sha256(KEY_B.encode()).hexdigest()}]}
    return upstream_config(up.url, **extra)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def chat_body(transform: str | None, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "test-model",
        "messages": [{"role": "system", "content": SYSTEM},
                     {"role": "assistant", "content": "Earlier answer, sent as it is."},
                     {"role": "user", "content": QUESTION}],
        **kw,
    }
    if transform is not None:
        body["promptwire"] = {"conjugate": {"transform": transform}}
    return body


@pytest.fixture
def setup(make_upstream: Callable[..., UpstreamServer], make_proxy: Callable[..., RunningProxy],
          tmp_path: Path) -> Callable[..., tuple[UpstreamServer, RunningProxy, Path]]:
    def make(allow: dict[str, list[str]] | None = None, keys: bool = False, reply: str | None = REPLY,
             **stage: Any) -> tuple[UpstreamServer, RunningProxy, Path]:
        up = make_upstream(reply=reply)
        audit = tmp_path / "audit" / "conjugate.jsonl"
        audit.parent.mkdir(exist_ok=True)
        return up, make_proxy(conj_config(up, audit, allow, keys, **stage)), audit

    return make


def generations(up: UpstreamServer) -> list[dict[str, Any]]:
    return [r.body for r in up.requests if r.path.endswith("completions") and r.body is not None]


# ----- off unless allowed ----------------------------------------------------------------------------


def test_refused_without_the_allowlist_http(setup: Any) -> None:
    up, proxy, audit = setup(allow={}, keys=True)
    with proxy.http() as http:
        for transform in ("leet", "pig_latin"):
            r = http.post("/v1/chat/completions", json=chat_body(transform),
                          headers={"authorization": f"Bearer {KEY_A}"})
            assert r.status_code == 403, r.text
            err = r.json()["error"]
            assert err["code"] == "conjugate_not_allowed" and transform in err["message"]
            assert err["param"] == "promptwire.conjugate.transform"
        ok = http.post("/v1/chat/completions", json=chat_body(None), headers={"authorization": f"Bearer {KEY_A}"})
        assert ok.status_code == 200  # the stage is off for requests that do not ask
    assert len(generations(up)) == 1 and generations(up)[0]["messages"][2]["content"] == QUESTION
    assert audit_lines(audit) == []


def test_allowlist_is_per_key_and_per_transform(setup: Any) -> None:
    up, proxy, audit = setup(allow={"team-a": ["leet"]}, keys=True)
    with proxy.http() as http:
        a = http.post("/v1/chat/completions", json=chat_body("leet"), headers={"authorization": f"Bearer {KEY_A}"})
        b = http.post("/v1/chat/completions", json=chat_body("leet"), headers={"authorization": f"Bearer {KEY_B}"})
        p = http.post("/v1/chat/completions", json=chat_body("pig_latin"),
                      headers={"authorization": f"Bearer {KEY_A}"})
    assert a.status_code == 200
    assert (b.status_code, b.json()["error"]["code"]) == (403, "conjugate_not_allowed")
    assert "'team-b'" in b.json()["error"]["message"]
    assert (p.status_code, p.json()["error"]["code"]) == (403, "conjugate_not_allowed")
    assert "pig_latin" in p.json()["error"]["message"]
    assert len(generations(up)) == 1 and [x["key_id"] for x in audit_lines(audit)] == ["team-a"]


async def test_refused_without_the_allowlist_grpc(make_upstream: Callable[..., UpstreamServer], tmp_path: Path) -> None:
    up = make_upstream(reply=REPLY)
    config = conj_config(up, tmp_path / "a.jsonl", {})
    req = gateway_pb2.ChatRequest(
        model="test-model", messages=[common_pb2.ChatMessage(role="user", content=QUESTION)],
        stages=options_pb2.StageOverrides(conjugate=options_pb2.ConjugateStage(
            options=options_pb2.ConjugateOptions(transform="pig_latin"))),
    )
    async with grpc_stub(config) as stub:
        call = stub.Chat(req)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            [m async for m in call]
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "pig_latin" in (e.value.details() or "")
    assert ("x-promptwire-error-code", "conjugate_not_allowed") in tuple(e.value.trailing_metadata() or ())
    assert generations(up) == [] and audit_lines(tmp_path / "a.jsonl") == []


# ----- with the allowlist: exact texts both ways, and the audit ----------------------------------------


def test_leet_whole_answer_exact_texts_and_audit(setup: Any) -> None:
    up, proxy, audit = setup(allow={"anonymous": ["leet"]})
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json=chat_body("leet"), headers={"x-request-id": "req-leet-1"})
    assert r.status_code == 200, r.text
    [sent] = generations(up)
    assert sent["messages"] == [{"role": "system", "content": leet.encode(SYSTEM)},
                                {"role": "assistant", "content": "Earlier answer, sent as it is."},
                                {"role": "user", "content": leet.encode(QUESTION)}]
    assert "promptwire" not in sent
    answer = r.json()["choices"][0]["message"]["content"]
    assert answer == leet.decode(REPLY) == "The answer 15 12, of course. Thanks!"
    [line] = audit_lines(audit)
    assert line["request_id"] == "req-leet-1" and line["key_id"] == "anonymous"
    assert (line["transform"], line["language"], line["translator"], line["stream"]) == ("leet", None, None, False)
    assert line["original"]["messages"][2]["content"] == QUESTION
    assert line["transformed"]["messages"] == sent["messages"]
    assert line["raw_output"] == [{"index": 0, "text": REPLY}]
    assert line["output"] == [{"index": 0, "text": answer}]
    assert set(line["timings_ms"]) == {"transform", "model", "back_transform"}
    stats = json.loads(r.headers["x-promptwire-stats"])
    assert [s["stage"] for s in stats] == ["conjugate", "conjugate"] and stats[0]["choice"] == "leet"


def test_pig_latin_stream_with_n_2_is_buffered_back_transformed_and_audited(setup: Any) -> None:
    up, proxy, audit = setup(allow={"anonymous": ["pig_latin"]}, reply=None)  # the upstream echoes
    body = chat_body("pig_latin", stream=True, n=2)
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    [sent] = generations(up)
    assert sent["messages"][2]["content"] == pig_latin.encode(QUESTION)
    raw = "echo: " + pig_latin.encode(QUESTION)  # what the fake upstream streamed, word by word
    texts: dict[int, str] = {}
    for ev in events:
        for ch in ev["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + (ch["delta"].get("content") or "")
    assert texts == {0: pig_latin.decode(raw), 1: pig_latin.decode(raw)}
    assert texts[0] == "echo: " + QUESTION  # this question survives the Pig Latin round trip
    [line] = audit_lines(audit)
    assert line["stream"] is True
    assert line["raw_output"] == [{"index": 0, "text": raw}, {"index": 1, "text": raw}]
    assert line["output"] == [{"index": i, "text": texts[i]} for i in (0, 1)]


def test_completions_prompts_are_transformed(setup: Any) -> None:
    up, proxy, audit = setup(allow={"anonymous": ["leet"]}, reply=None)
    body = {"model": "test-model", "prompt": ["first prompt", "second one"],
            "promptwire": {"conjugate": {"transform": "leet"}}}
    with proxy.http() as http:
        r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    [sent] = generations(up)
    assert sent["prompt"] == ["f1r57 pr0mp7", "53c0nd 0n3"]
    assert audit_lines(audit)[0]["transformed"] == {"prompt": ["f1r57 pr0mp7", "53c0nd 0n3"]}
    assert [c["text"] for c in r.json()["choices"]] == [leet.decode(c["text"]) for c in
                                                        audit_lines(audit)[0]["raw_output"]]


async def test_grpc_chat_gets_the_back_transformed_answer(make_upstream: Callable[..., UpstreamServer],
                                                           tmp_path: Path) -> None:
    up = make_upstream(reply=REPLY)
    audit = tmp_path / "a.jsonl"
    req = gateway_pb2.ChatRequest(
        model="test-model", messages=[common_pb2.ChatMessage(role="user", content=QUESTION)],
        stages=options_pb2.StageOverrides(conjugate=options_pb2.ConjugateStage(
            options=options_pb2.ConjugateOptions(transform="leet"))),
    )
    async with grpc_stub(conj_config(up, audit, {"anonymous": ["leet"]})) as stub:
        messages = [m async for m in stub.Chat(req)]
    assert "".join(c.text for m in messages for c in m.choices) == leet.decode(REPLY)
    assert generations(up)[0]["messages"] == [{"role": "user", "content": leet.encode(QUESTION)}]
    [line] = audit_lines(audit)
    assert line["output"] == [{"index": 0, "text": leet.decode(REPLY)}]


# ----- the audit cannot be written: no answer -------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_audit_failure_is_a_503_and_withholds_the_answer(setup: Any, stream: bool) -> None:
    up, proxy, audit = setup(allow={"anonymous": ["leet"]})
    shutil.rmtree(audit.parent)  # the audit directory is gone: the line cannot be written
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json=chat_body("leet", stream=stream))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "audit_unavailable"
    assert "4n5w3r" not in r.text and "answer" not in r.text.replace("the answer is withheld", "")
    assert len(generations(up)) == 1  # the model did answer; the client got none of it


# ----- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "param"), [
    ({"transform": "rot13"}, "promptwire.conjugate.transform"),
    ({}, "promptwire.conjugate.transform"),
    ({"transform": "leet", "language": "fr"}, "promptwire.conjugate.language"),
    ({"transform": "translate", "language": "fr"}, "promptwire.conjugate.language"),
    ({"transform": "translate"}, "promptwire.conjugate.transform"),
    ({"transform": "leet", "tone": "x"}, "promptwire.conjugate.tone"),
])
def test_bad_options_are_400s_naming_the_option(setup: Any, options: dict[str, Any], param: str) -> None:
    up, proxy, audit = setup(allow={"anonymous": ["leet", "pig_latin"]})
    body = chat_body(None)
    body["promptwire"] = {"conjugate": options}
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert generations(up) == [] and audit_lines(audit) == []


def test_empty_prompt_is_a_400(setup: Any) -> None:
    up, proxy, _ = setup(allow={"anonymous": ["leet"]})
    body = chat_body("leet")
    body["messages"] = [{"role": "user", "content": "  "}, {"role": "assistant", "content": "not transformed"}]
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json=body)
        c = http.post("/v1/completions", json={"model": "test-model", "prompt": "",
                                                "promptwire": {"conjugate": {"transform": "leet"}}})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "messages")
    assert (c.status_code, c.json()["error"]["param"]) == (400, "prompt")
    assert generations(up) == []


async def test_config_errors_name_the_key(make_upstream: Callable[..., UpstreamServer], tmp_path: Path) -> None:
    up = make_upstream()
    base = conj_config(up, tmp_path / "a.jsonl", {"anonymous": ["leet"]})
    no_audit = json.loads(json.dumps(base))
    del no_audit["stages"]["conjugate"]["audit_path"]
    with pytest.raises(ConfigError, match="audit_path"):
        validate_config(no_audit, "<test>")
    used_not_configured = json.loads(json.dumps(base))
    del used_not_configured["stages"]
    cases: list[tuple[dict[str, Any], str]] = [
        (used_not_configured, "stages.conjugate"),
        (conj_config(up, tmp_path / "a.jsonl", {"anonymous": ["rot13"]}), r"stages\.conjugate\.allow\.anonymous\[0\]"),
        (conj_config(up, tmp_path / "a.jsonl", {"team-x": ["leet"]}), r"stages\.conjugate\.allow\.team-x"),
        (conj_config(up, tmp_path / "a.jsonl", {"anonymous": ["translate:fr"]}), r"stages\.conjugate\.translator"),
        (conj_config(up, tmp_path / "no-dir" / "a.jsonl", {}), r"stages\.conjugate\.audit_path"),
        (conj_config(up, tmp_path / "a.jsonl", {}, translator=str(tmp_path / "nothing")),
         r"stages\.conjugate\.translator"),
    ]
    for config, match in cases:
        with pytest.raises(ConfigError, match=match):
            gw = Gateway(validate_config(config, "<test>"))
            try:
                await gw.start()
            finally:
                await gw.aclose()


def test_logs_carry_no_prompt_text(setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    _, proxy, _ = setup(allow={"anonymous": ["leet"]})
    with caplog.at_level("INFO"), proxy.http() as http:
        assert http.post("/v1/chat/completions", json=chat_body("leet")).status_code == 200
    assert "conjugate leet for key anonymous" in caplog.text
    assert QUESTION not in caplog.text and leet.encode(QUESTION) not in caplog.text



def test_multi_part_content_transforms_text_parts_only(setup: Any) -> None:
    up, proxy, audit = setup(allow={"anonymous": ["leet"]})
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = chat_body("leet")
    body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "Describe this"}, image,
                                                      {"type": "text", "text": "in one line."}]}]
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    [sent] = generations(up)
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "D35cr1b3 7h15"}, image,
                                              {"type": "text", "text": "1n 0n3 l1n3."}]
    assert audit_lines(audit)[0]["original"]["messages"] == body["messages"]


def test_token_id_prompts_cannot_be_transformed(setup: Any) -> None:
    up, proxy, _ = setup(allow={"anonymous": ["leet"]})
    with proxy.http() as http:
        r = http.post("/v1/completions", json={"model": "test-model", "prompt": [1, 2, 3],
                                                "promptwire": {"conjugate": {"transform": "leet"}}})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "prompt")
    assert generations(up) == []


async def test_audit_failure_on_grpc_is_unavailable_with_no_answer(make_upstream: Callable[..., UpstreamServer],
                                                                   tmp_path: Path) -> None:
    up = make_upstream(reply=REPLY)
    (tmp_path / "d").mkdir()
    req = gateway_pb2.ChatRequest(
        model="test-model", messages=[common_pb2.ChatMessage(role="user", content=QUESTION)],
        stages=options_pb2.StageOverrides(conjugate=options_pb2.ConjugateStage(
            options=options_pb2.ConjugateOptions(transform="leet"))),
    )
    async with grpc_stub(conj_config(up, tmp_path / "d" / "a.jsonl", {"anonymous": ["leet"]})) as stub:
        shutil.rmtree(tmp_path / "d")
        call = stub.Chat(req)
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for m in call:
                received.append(m)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("x-promptwire-error-code", "audit_unavailable") in tuple(e.value.trailing_metadata() or ())
    assert not any(c.text for m in received for c in m.choices)
    assert len(generations(up)) == 1
