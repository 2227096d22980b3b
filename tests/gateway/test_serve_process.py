"""`promptwire serve` as a real process: the offline default config, and SIGTERM draining."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.wait import until

MSG = [{"role": "user", "content": "hi"}]


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTWIRE_") and k != "OPENAI_API_KEY"}
    return {**env, **(extra or {})}


class Served:
    def __init__(self, args: list[str], cache_dir: Path | None = None, env: dict[str, str] | None = None,
                 module: str = "gateway.cli") -> None:
        env = _clean_env(env)
        if cache_dir is not None:
            env["PROMPTWIRE_CACHE_DIR"] = str(cache_dir)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "serve", "--http-port", "0", "--no-grpc", *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self._wait_serving()
        self.base = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def _wait_serving(self) -> int:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "serving":
                return int(rec["http_port"])
        self.kill()
        raise AssertionError("promptwire serve did not start:\n" + "".join(self.log))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def serve() -> Any:
    started: list[Served] = []

    def make(*args: str, cache_dir: Path | None = None, env: dict[str, str] | None = None) -> Served:
        s = Served(list(args), cache_dir, env)
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()


def test_offline_default_serves_the_tiny_stand_in_end_to_end(serve: Any, tmp_path: Path) -> None:
    s = serve(cache_dir=tmp_path)
    with httpx.Client(base_url=s.base, timeout=30) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["tiny-llama"]
        assert "promptwire_in_flight" in http.get("/metrics").text
        r = http.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": MSG, "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] >= 1 and body["choices"][0]["finish_reason"] in ("stop", "length")
    assert any("STAND-IN" in line and "--model" in line for line in s.log), "no stand-in warning at start"
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(10) == 0


def test_upstream_flag_replaces_the_stand_in(serve: Any, make_upstream: Any) -> None:
    up = make_upstream()
    s = serve("--upstream", up.url)
    with httpx.Client(base_url=s.base, timeout=10) as http:
        ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert ids == ["test-model", "test-model-2"]
    assert not any("STAND-IN" in line for line in s.log)


def test_sigterm_turns_readiness_off_and_drains_in_flight(serve: Any, make_upstream: Any, tmp_path: Path) -> None:
    up = make_upstream(latency_s=1.2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server: {shutdown_grace_s: 10}\n")
    s = serve("--config", str(cfg), "--upstream", up.url)
    result: list[httpx.Response] = []

    def slow() -> None:
        with httpx.Client(base_url=s.base, timeout=10) as http:
            result.append(http.post("/v1/chat/completions", json={"model": "test-model", "messages": MSG}))

    t = threading.Thread(target=slow)
    t.start()
    up.wait_arrived(1)  # the slow request is in flight
    s.proc.send_signal(signal.SIGTERM)
    with httpx.Client(base_url=s.base, timeout=5) as http:
        until(lambda: http.get("/readyz").status_code == 503, "readiness to turn off after SIGTERM")
        late = http.post("/v1/chat/completions", json={"model": "test-model", "messages": MSG})
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    t.join(10)
    assert result and result[0].status_code == 200
    assert result[0].json()["choices"][0]["message"]["content"] == "echo: hi"
    assert s.proc.wait(10) == 0
    assert any('"drained": true' in line for line in s.log)


def test_sigterm_grace_over_still_exits_zero(serve: Any, make_upstream: Any, tmp_path: Path) -> None:
    up = make_upstream(latency_s=20)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server: {shutdown_grace_s: 0.3}\n")
    s = serve("--config", str(cfg), "--upstream", up.url)
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            with httpx.Client(base_url=s.base, timeout=10) as http:
                http.post("/v1/chat/completions", json={"model": "test-model", "messages": MSG})
        except httpx.HTTPError as e:
            errors.append(e)

    t = threading.Thread(target=slow)
    t.start()
    up.wait_arrived(1)  # the slow request is in flight
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(10) == 0
    assert time.monotonic() - t0 < 5
    t.join(10)
    assert any('"drained": false' in line for line in s.log)


@pytest.mark.parametrize(
    ("env", "extra_args"),
    [
        ({"PROMPTWIRE_BACKENDS__UPSTREAM__API_KEY": "sk-test"}, []),  # env overrides reach --upstream's backend
        ({"OPENAI_API_KEY": "sk-test"}, []),  # the default when no key is configured
        ({"OPENAI_API_KEY": "sk-wrong", "UP_KEY": "sk-test"}, ["--upstream-key-env", "UP_KEY"]),
    ],
)
def test_upstream_flag_sends_the_upstream_key(
    serve: Any, make_upstream: Any, env: dict[str, str], extra_args: list[str]
) -> None:
    up = make_upstream(api_key="sk-test")  # 401 without "Authorization: Bearer sk-test"
    s = serve("--upstream", up.url, *extra_args, env=env)
    with httpx.Client(base_url=s.base, timeout=10) as http:
        r = http.post("/v1/chat/completions", json={"model": "test-model", "messages": MSG})
    assert r.status_code == 200, r.text
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(10) == 0
    s.kill()
    assert not any("sk-test" in line for line in s.log), "the upstream key was logged"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_during_start_up_exits_zero_promptly(sig: signal.Signals) -> None:
    """The upstream accepts the model-discovery connection and never answers: start-up is in progress."""
    import socket

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    ls.settimeout(30)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--http-port", "0", "--no-grpc",
         "--upstream", f"http://127.0.0.1:{ls.getsockname()[1]}/v1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=_clean_env(), text=True,
    )
    try:
        conn, _ = ls.accept()  # discovery has started (GET /v1/models), and hangs
        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(15)
        elapsed = time.monotonic() - t0
        conn.close()
        assert proc.stderr is not None
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
        ls.close()
    assert rc == 0, log
    assert elapsed < 3, elapsed
    assert "during start-up" in log and '"serving"' not in log
