"""TLS on both front ends (server.tls_cert_file / tls_key_file) with a certificate the test makes."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme

from gateway.config import ConfigError, parse_config
from protos.promptwire.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.support.served import ServedProcess

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    d = tmp_path_factory.mktemp("pki")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return {"dir": d, "ca": ca, "ca_pem": ca.cert_pem.bytes()}


def test_https_and_grpc_over_tls(pki: dict[str, Any], make_upstream: Any, tmp_path: Path) -> None:
    up = make_upstream()
    d = pki["dir"]
    cfg = tmp_path / "tls.yaml"
    cfg.write_text(f"server: {{tls_cert_file: {d / 'cert.pem'}, tls_key_file: {d / 'key.pem'}}}\n")
    with ServedProcess(["--config", str(cfg), "--upstream", up.url, "--http-port", "0", "--grpc-port", "0"]) as s:
        ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        with httpx.Client(base_url=f"https://127.0.0.1:{s.http_port}", verify=ctx, timeout=20) as http:
            r = http.post("/v1/chat/completions", json={"model": "test-model", "messages": MSG})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: hi"
        with httpx.Client(base_url=f"http://127.0.0.1:{s.http_port}", timeout=5) as plain:
            with pytest.raises(httpx.HTTPError):  # no plain-text HTTP on a TLS port
                plain.get("/healthz")
        untrusted = ssl.create_default_context()  # the system store does not know the test's CA
        with httpx.Client(base_url=f"https://127.0.0.1:{s.http_port}", verify=untrusted, timeout=5) as http:
            with pytest.raises(httpx.ConnectError):
                http.get("/healthz")
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca_pem"])
        with grpc.secure_channel(f"127.0.0.1:{s.grpc_port}", creds,
                                 options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)  # type: ignore[no-untyped-call]
            req = gateway_pb2.ChatRequest(model="test-model", messages=[common_pb2.ChatMessage(role="user", content="hi")])
            msgs = list(stub.Chat(req, timeout=20))
            assert "".join(c.text for m in msgs for c in m.choices) == "echo: hi" and msgs[-1].done
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as ei:
                list(stub.Chat(req, timeout=5))
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert s.stop() == 0
    assert any(r.get("event") == "serving" and "https://" in r["msg"] for r in s.records)


def test_tls_config_is_checked_at_load(pki: dict[str, Any], tmp_path: Path) -> None:
    d = pki["dir"]
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        parse_config(f"server: {{tls_cert_file: {d / 'cert.pem'}}}")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(f"server: {{tls_cert_file: {tmp_path / 'no.pem'}, tls_key_file: {d / 'key.pem'}}}")
    other = pki["ca"].issue_cert("other.example")
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    with pytest.raises(ConfigError, match="not a matching PEM certificate and key"):
        parse_config(f"server: {{tls_cert_file: {d / 'cert.pem'}, tls_key_file: {tmp_path / 'other-key.pem'}}}")
    ok = parse_config(f"server: {{tls_cert_file: {d / 'cert.pem'}, tls_key_file: {d / 'key.pem'}}}")
    assert ok.server.tls_cert_file == str(d / "cert.pem")
