"""Schemathesis against the served OpenAPI document: every operation, valid and invalid inputs, through a
real gateway (uvicorn on 127.0.0.1) in front of the fake upstream: no 5xx, and every response conforms
to the document (status codes, content types, headers, bodies)."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.generation import GenerationMode

from tests.fuzz.profile import SCALE, examples
from tests.support.proxy import RunningProxy, upstream_config
from tests.support.upstream import UpstreamServer

pytestmark = pytest.mark.slow  # ~1,000 real HTTP cases take about a minute here: CI runs it (.ci/run)

QUICK_CASES = 1000
"""At least this many cases in the quick profile (the default test run)."""
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The gateway with the compress stage built on a tiny exported classifier (clients may turn it on),
    so fuzzed stage options and /v1/compress bodies reach the real compressor."""
    from tests.compressors.test_serving_model import tiny_exported

    model = tiny_exported(tmp_path_factory)
    with UpstreamServer() as up:
        cfg = upstream_config(up.url, limits={"max_body_bytes": 256 * 1024, "request_timeout_s": 10},
                              stages={"compress": {"model": str(model)}},
                              default_stages=[{"name": "compress", "enabled": False, "client_options": ["*"]}])
        with RunningProxy(cfg) as proxy:
            yield proxy


def _weights(schema: Any) -> dict[str, int]:
    """Cases per operation: generation endpoints get most; parameterless GETs a few."""
    out = {}
    for result in schema.get_all_operations():
        op = result.ok()
        body = bool(op.body)
        out[op.label] = 260 if body else 8
    return out


def test_no_5xx_and_responses_conform(served: RunningProxy) -> None:
    schema = schemathesis.openapi.from_url(served.base + "/openapi.json")
    weights = _weights(schema)
    scale = max(1.0, QUICK_CASES / sum(weights.values()))
    session = requests.Session()
    ran: dict[str, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        n = examples(int(weights[op.label] * scale) + 1)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=n // 2 + 1, deadline=None, database=None, derandomize=SCALE == 1,
                      suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
            @hypothesis.given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                ran[case.operation.label] = ran.get(case.operation.label, 0) + 1
                response = case.call(base_url=served.base, session=session, timeout=15)
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to get wrong in a GET without parameters
    total = sum(ran.values())
    print(f"schemathesis: {total} cases", ran)
    assert total >= QUICK_CASES, ran
    assert {label for label in ran if label.startswith("POST")} >= {
        "POST /v1/chat/completions", "POST /v1/completions"}
