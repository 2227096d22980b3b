"""`promptwire serve --workers N`: N processes share the ports and stop together on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_workers_share_the_port_and_stop_on_sigterm(make_upstream: Any) -> None:
    up = make_upstream()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTWIRE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--upstream", up.url, "--http-port", str(port),
         "--no-grpc", "--workers", "2"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True,
    )
    serving: list[dict[str, Any]] = []
    log: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "serving":
                serving.append(rec)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while len(serving) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(serving) == 2, "".join(log)
        assert {r["http_port"] for r in serving} == {port}
        for _ in range(20):  # fresh connections, spread by the kernel
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                r = http.post("/v1/chat/completions",
                              json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        reader.join(5)
        assert sum('"event": "stopped"' in line for line in log) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        reader.join(5)
        assert proc.stderr is not None
        proc.stderr.close()
