"""POST /v1/compress and gRPC Compress on a running gateway with a real tiny exported compressor."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protos.promptwire.v1 import compress_pb2
from tests.compressors.test_serving_model import tiny_exported
from tests.support.grpc_stub import serving_stub
from tests.support.proxy import RunningProxy

TEXT = ("The council met tonight to discuss the budget for the new library on Main Street. "
        "Item 4, the water repairs, was approved 7-0 after a long public hearing.")
KEY = "sk-test-compress"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_exported(tmp_path_factory)


@pytest.fixture(scope="module")
def proxy(model_dir: Path) -> Iterator[RunningProxy]:
    config = {
        "server": {"grpc_port": None},
        "auth": {"keys": [
            {"id": "all", "sha256": hashlib.sha256(KEY.encode()).hexdigest()},
            {"id": "no-stages", "sha256": hashlib.sha256(b"sk-none").hexdigest(), "stages": []},
        ]},
        "stages": {"compress": {"model": str(model_dir), "threads": 1}},
    }
    p = RunningProxy(config).start()
    yield p
    p.stop()


def test_http_compress_returns_counts_and_keeps_numbers(proxy: RunningProxy) -> None:
    with proxy.http(headers={"authorization": f"Bearer {KEY}"}) as http:
        r = http.post("/v1/compress", json={"text": TEXT, "rate": 0.5, "return_word_labels": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0 < body["compressed_tokens"] < body["origin_tokens"]
    assert "7-0" in body["compressed_text"] and "4" in body["compressed_text"]  # numbers are protected
    assert body["execution_provider"] == "CPUExecutionProvider"
    kept = [w["word"] for w in body["word_labels"] if w["keep"]]
    assert kept and all(w in TEXT for w in kept)


@pytest.mark.parametrize(
    ("headers", "body", "status", "param"),
    [
        ({"authorization": f"Bearer {KEY}"}, {"text": TEXT, "rate": 1.5}, 400, "rate"),
        ({"authorization": f"Bearer {KEY}"}, {"text": TEXT, "bogus": 1}, 400, "bogus"),
        ({"authorization": f"Bearer {KEY}"}, {"rate": 0.5}, 400, "text"),
        ({}, {"text": TEXT}, 401, None),
        ({"authorization": "Bearer sk-none"}, {"text": TEXT}, 403, "promptwire.compress"),
    ],
)
def test_http_compress_errors_name_the_parameter(
    proxy: RunningProxy, headers: dict[str, str], body: dict[str, Any], status: int, param: str | None
) -> None:
    with proxy.http(headers=headers) as http:
        r = http.post("/v1/compress", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if param is not None:
        assert err["param"] is not None and err["param"].endswith(param)


def test_http_compress_without_a_compressor_is_503(make_proxy: Any) -> None:
    p = make_proxy({"server": {"grpc_port": None}})
    with p.http() as http:
        r = http.post("/v1/compress", json={"text": TEXT})
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_compressor"


async def test_grpc_compress_matches_http(proxy: RunningProxy) -> None:
    assert proxy.gateway is not None
    with proxy.http(headers={"authorization": f"Bearer {KEY}"}) as http:
        want = http.post("/v1/compress", json={"text": TEXT, "rate": 0.5}).json()

    gateway = proxy.gateway

    async def call() -> compress_pb2.CompressResponse:
        async with serving_stub(gateway) as stub:
            resp: compress_pb2.CompressResponse = await stub.Compress(
                compress_pb2.CompressRequest(text=TEXT, rate=0.5), metadata=[("authorization", f"Bearer {KEY}")]
            )
            return resp

    resp = proxy.run(call(), timeout=60)
    assert resp.compressed_text == want["compressed_text"]
    assert (resp.origin_tokens, resp.compressed_tokens) == (want["origin_tokens"], want["compressed_tokens"])
