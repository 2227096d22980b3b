"""A proxy-only install (no `local` extra): the gateway serves proxying and ONNX compression without torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.compressors.test_serving_model import tiny_exported
from tests.gateway.test_serve_process import Served
from tests.support.lean import HIDDEN

TEXT = ("The council approved the budget for the new library on Main Street after a long public hearing, "
        "and staff recommend the motion on water and street repairs before the winter season begins.")


def test_the_blocker_hides_torch() -> None:
    """The check below would prove nothing if the packages stayed importable."""
    for name in ("torch", "transformers"):
        r = subprocess.run([sys.executable, "-c", f"import tests.support.lean as l; l.hide(); import {name}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, r.stderr


def test_proxy_and_onnx_compressor_serve_with_torch_hidden(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, make_upstream: Any
) -> None:
    model = tiny_exported(tmp_path_factory)  # exporting needs torch: done here, in the test process
    up = make_upstream()
    config = {
        "server": {"host": "127.0.0.1", "http_port": 0, "grpc_port": 0},
        "backends": {"up": {"type": "openai", "base_url": up.url}},
        "stages": {"compress": {"model": str(model), "threads": 1}},
        "default_stages": [{"name": "compress", "enabled": True, "options": {"rate": 0.5},
                            "client_options": ["rate"]}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    served = Served(["--config", str(path)], cache_dir=tmp_path / "cache", module="tests.support.lean")
    try:
        with httpx.Client(base_url=served.base, timeout=60) as http:
            r = http.post("/v1/compress", json={"text": TEXT, "rate": 0.5})
            assert r.status_code == 200, r.text
            body = r.json()
            assert 0 < body["compressed_tokens"] < body["origin_tokens"]
            assert body["execution_provider"] == "CPUExecutionProvider"
            r = http.post("/v1/chat/completions", json={
                "model": "test-model", "messages": [{"role": "system", "content": TEXT},
                                                    {"role": "user", "content": "summarise"}]})
            assert r.status_code == 200, r.text
        sent = up.requests[-1].body["messages"][0]["content"]
        assert len(sent) < len(TEXT)  # the system message went upstream compressed
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0
    finally:
        served.kill()
    log = "".join(served.log)
    assert not any(f"'{m}'" in log for m in HIDDEN), log  # no hidden import was even attempted and caught


def test_export_without_torch_says_which_extra(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    tiny_exported(tmp_path_factory)
    ckpt = tmp_path_factory.getbasetemp() / "h5-tiny-bert" / "ckpt"
    r = subprocess.run([sys.executable, "-m", "tests.support.lean", "compressor", "export", str(ckpt),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "pip install 'promptwire[local]'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("argv", [
    ["serve", "--model", "tiny:llama", "--http-port", "0", "--no-grpc"],   # the local provider
    ["models", "make-tiny", "OUT", "--only", "llama"],
])
def test_what_needs_the_local_extra_says_so(argv: list[str], tmp_path: Path) -> None:
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTWIRE_")}
    env["PROMPTWIRE_CACHE_DIR"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-m", "tests.support.lean", *argv], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    assert "pip install 'promptwire[local]'" in r.stderr and "Traceback" not in r.stderr, r.stderr
