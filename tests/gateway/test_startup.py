"""`promptwire serve` start-up errors: one clear line each, before any model loads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.startup import source_problem


def _serve(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """Run `promptwire serve ARGS` in-process (it must stop before logging or signals are set up); its stderr lines."""
    assert main(["serve", "--http-port", "0", "--no-grpc", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.splitlines()


def test_missing_and_unreadable_config_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    [line] = _serve(capsys, "--config", str(tmp_path / "nope.yaml"))
    assert line == f"promptwire: config error: {tmp_path / 'nope.yaml'}: cannot read: No such file or directory"
    [line] = _serve(capsys, "--config", str(tmp_path))  # a directory
    assert line.endswith("cannot read: Is a directory")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {http_port: [\n")
    [line] = _serve(capsys, "--config", str(bad))
    assert line.startswith(f"promptwire: config error: {bad}: not valid YAML")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    [line] = _serve(capsys, "--config", str(binary))
    assert "not UTF-8" in line


def test_several_config_problems_are_one_line_each(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server: {workers: 0}\nlimits: {max_n: 500, max_body_bytes: 0}\n")
    lines = _serve(capsys, "--config", str(cfg))
    assert len(lines) == 3 and all(line.startswith(f"promptwire: config error: {cfg}: ") for line in lines)
    assert {line.split(": ")[3] for line in lines} == {"limits.max_body_bytes", "server.workers", "limits.max_n"}


def test_missing_model_path_is_one_line_before_any_model_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMPTWIRE_CACHE_DIR", str(tmp_path / "cache"))
    lines = _serve(capsys, "--model", "tiny:llama", "--model", str(tmp_path / "missing"))
    assert lines == [f"promptwire: cannot start: backends.local2.model_path: '{tmp_path / 'missing'}' does not exist"]
    assert not (tmp_path / "cache").exists()  # the stand-in that could load was not built first
    (tmp_path / "empty").mkdir()
    [line] = _serve(capsys, "--model", str(tmp_path / "empty"))
    assert "is not a model directory (no config.json in it)" in line


def test_unknown_hf_id_while_offline(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    [line] = _serve(capsys, "--model", "someorg/no-such-model")
    assert line.startswith("promptwire: cannot start: backends.local.model_path: 'someorg/no-such-model' is not a "
                           "directory and not in the Hugging Face cache, and the hub is off")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert source_problem("someorg/no-such-model") is None  # online: the loader tries the hub


def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path: Path) -> None:
    """HTTP and gRPC: both ports are bound before the local model is built (the cache stays empty)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTWIRE_")}
    env["PROMPTWIRE_CACHE_DIR"] = str(tmp_path / "cache")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for flags, what in ((["--http-port", str(port), "--grpc-port", "0"], "HTTP"),
                            (["--http-port", "0", "--grpc-port", str(port)], "gRPC")):
            r = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--model", "tiny:llama", *flags],
                               capture_output=True, text=True, env=env, timeout=60)
            assert r.returncode == 2
            assert r.stderr.splitlines() == [
                f"promptwire: cannot start: {what} port {port} on 127.0.0.1 is already in use (another process "
                f"listens there; change --{what.lower()}-port / server.{what.lower()}_port)"]
    assert not (tmp_path / "cache").exists()
