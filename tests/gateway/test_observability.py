"""Logs (JSON lines, access log with stage stats, prompt text only when allowed) and optional tracing."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from gateway.observe.logs import JsonFormatter
from gateway.observe.tracing import Tracer
from tests.support.proxy import upstream_config
from tests.support.wait import until

SECRET = "my secret prompt words"


def test_json_formatter_emits_one_object_with_extras() -> None:
    rec = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "request %s %d", ("r1", 200), None)
    rec.__dict__.update({"request_id": "r1", "stages": [{"stage": "compress"}]})
    out = json.loads(JsonFormatter().format(rec))
    assert out["msg"] == "request r1 200" and out["level"] == "info" and out["logger"] == "gateway.x"
    assert out["request_id"] == "r1" and out["stages"] == [{"stage": "compress"}]


def test_access_log_has_request_id_and_no_prompt_text(
    make_upstream: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url, server={"grpc_port": None, "access_log": True}))
    with caplog.at_level(logging.DEBUG), proxy.client() as client:
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": SECRET}],
                                       extra_headers={"x-request-id": "rid-42"})
        # the line is written just after the response went out
        until(lambda: any(getattr(r, "request_id", None) == "rid-42" for r in caplog.records), "the access line")
    lines = [r for r in caplog.records if getattr(r, "request_id", None) == "rid-42"]
    assert lines and lines[0].__dict__["status"] == 200 and lines[0].__dict__["stages"] == []
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_prompt_text_only_with_log_prompts(
    make_upstream: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = make_proxy(upstream_config(make_upstream().url, server={"grpc_port": None, "log_prompts": True}))
    with caplog.at_level(logging.DEBUG), proxy.client() as client:
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": SECRET}])
    assert any(SECRET in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_tracing_is_a_no_op_without_opentelemetry(caplog: pytest.LogCaptureFixture) -> None:
    off = Tracer(False)
    assert not off.enabled
    with off.span("x", {"a": 1}) as span:
        assert span is None
    try:
        import opentelemetry  # noqa: F401
    except ImportError:
        with caplog.at_level(logging.WARNING):
            on = Tracer(True)
        assert not on.enabled and "opentelemetry is not installed" in caplog.text
    else:
        assert Tracer(True).enabled
