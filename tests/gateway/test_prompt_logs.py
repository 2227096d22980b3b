"""No prompt text in any log line at the default level: every log record of a run (HTTP and gRPC, whole
and streamed, successes and every kind of error, stage APIs) is captured and searched for the prompts
that were sent."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import grpc
import httpx
import pytest

from gateway.observe.logs import JsonFormatter
from protos.promptwire.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.support.proxy import RunningProxy, upstream_config

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


class _Capture(logging.Handler):
    """Every record, formatted as the gateway's JSON log line (extra fields included)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)  # the default server.log_level
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _prompt(i: int) -> str:
    return f"zebra-prompt-{i:03d}-quokka"


@pytest.fixture
def capture() -> Any:
    handler = _Capture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def test_no_prompt_text_in_any_log_line(make_upstream: Any, capture: _Capture, capfd: pytest.CaptureFixture[str],
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.compressors.test_serving_model import tiny_exported

    up = make_upstream(echo_in_errors=True)
    cfg = upstream_config(up.url, limits={"max_prompt_chars": 400, "request_timeout_s": 10},
                          stages={"compress": {"model": str(tiny_exported(tmp_path_factory))}},
                          default_stages=[{"name": "compress", "enabled": False, "client_options": ["*"]}])
    cfg["server"] = {"grpc_port": None, "access_log": True}
    cfg["backends"]["up1"]["retries"] = {"max_attempts": 2, "backoff_s": 0.001}
    sent: list[str] = []

    def p() -> str:
        sent.append(_prompt(len(sent)))
        return sent[-1]

    def chat(**kw: Any) -> dict[str, Any]:
        return {"model": "test-model", "messages": [{"role": "user", "content": p()}], **kw}

    with RunningProxy(cfg) as proxy, httpx.Client(base_url=proxy.base, timeout=20) as http:
        C = "/v1/chat/completions"
        assert http.post(C, json=chat()).status_code == 200
        assert http.post(C, json=chat(stream=True)).status_code == 200
        assert http.post("/v1/completions", json={"model": "test-model", "prompt": p()}).status_code == 200
        assert http.post(C, json=chat(promptwire={"compress": {"rate": 0.5}})).status_code == 200
        assert http.post(C, json=chat(temperature=9)).status_code == 400
        assert http.post(C, json={"model": "test-model", "messages": [{"role": p(), "content": p()}]}).status_code == 400
        assert http.post(C, json={"model": "test-model", "messages": [{"role": "user", "content": [
            {"type": "text"}, {"type": p()}]}]}).status_code == 400
        assert http.post(C, json={**chat(), "model": "nope"}).status_code == 404
        assert http.post(C, json=chat(promptwire={"compress": {"rate": p()}})).status_code == 400
        assert http.post(C, json=chat(promptwire={"nope": {}})).status_code == 400
        assert http.post(C, json={"model": "test-model", "messages": [{"role": "user", "content": p() * 40}]}
                         ).status_code == 400  # over max_prompt_chars
        assert http.post(C, content=('{"model": "test-model", "messages": [{"role": "user", "content": "'
                                     + p() + '"').encode()).status_code == 400  # cut-off JSON
        up.knobs.fail_next, up.knobs.fail_status = 1, 400  # the upstream's error quotes the prompt
        assert http.post(C, json=chat()).status_code == 400
        up.knobs.fail_next, up.knobs.fail_status = 2, 500
        assert http.post(C, json=chat()).status_code == 502
        up.knobs.fail_next, up.knobs.fail_status = 1, 422
        assert http.post(C, json=chat(stream=True)).status_code == 422
        up.knobs.die_after_chunks = 3
        assert "error" in http.post(C, json=chat(stream=True)).text  # failed mid-stream
        up.knobs.die_after_chunks = None
        assert http.post("/v1/compress", json={"text": p() + " and some more words", "rate": 0.5}).status_code == 200
        assert http.post("/v1/compress", json={"text": p(), "rate": p()}).status_code == 400
        msgs = [{"role": "user", "content": p()}, {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": p() + "\n" + p()}]
        http.post("/v1/condense_history", json={"messages": msgs})
        http.post("/v1/condense_history", json={"messages": [{"role": p(), "content": p()}]})
        gw = proxy.gateway
        assert gw is not None
        proxy.run(_grpc_calls(gw, p, up))
    lines = capture.lines + capfd.readouterr().err.splitlines()
    assert len(lines) > 20  # the run did log (access lines, errors): the search below looks at something
    for line in lines:
        for prompt in sent:
            assert prompt not in line, f"prompt text in a log line: {line}"


async def _grpc_calls(gw: Any, p: Any, up: Any) -> None:
    from gateway.grpc.server import start_grpc_server

    handle = await start_grpc_server(gw, "127.0.0.1", 0, health_interval_s=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)  # type: ignore[no-untyped-call]
            for role, model in (("user", "test-model"), (p(), "test-model"), ("user", "nope")):
                req = gateway_pb2.ChatRequest(model=model, messages=[common_pb2.ChatMessage(role=role, content=p())])
                try:
                    async for _ in stub.Chat(req, timeout=10):
                        pass
                except grpc.aio.AioRpcError:
                    pass
            up.knobs.fail_next, up.knobs.fail_status = 1, 400
            req = gateway_pb2.ChatRequest(model="test-model", messages=[common_pb2.ChatMessage(role="user", content=p())])
            with pytest.raises(grpc.aio.AioRpcError):
                async for _ in stub.Chat(req, timeout=10):
                    pass
            gen = gateway_pb2.GenerateRequest(model="test-model", prompt=p())
            async for _ in stub.Generate(gen, timeout=10):
                pass
    finally:
        await handle.stop(0)
        await asyncio.sleep(0)


def test_the_search_finds_a_prompt_when_one_is_logged(capture: _Capture) -> None:
    """The search is not vacuous: with log_prompts (DEBUG) on, the prompt is found."""
    logging.getLogger("gateway.core.gateway").warning("request x prompt: %s", _prompt(999))
    assert any(_prompt(999) in line for line in capture.lines)
    assert json.loads(capture.lines[-1])["msg"].endswith(_prompt(999))
