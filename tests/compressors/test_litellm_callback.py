"""The LiteLLM callback against LiteLLM itself (pinned, in its own environment): the SDK's hook and the
proxy's pre-call hook compress through a real promptwire server (or in-process), per model and per
request, fail open, and leave stats in LiteLLM's metadata. The environment is .venv-litellm (made by
.ci/run from tests/compressors/requirements-litellm.txt); without it these tests skip, except in CI.
Slow (tens of seconds: LiteLLM starts slowly); .ci/run runs them explicitly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.upstream import UpstreamServer

ROOT = Path(__file__).resolve().parents[2]
LITELLM_PY = Path(os.environ.get("PROMPTWIRE_LITELLM_PYTHON") or ROOT / ".venv-litellm" / "bin" / "python")
if not LITELLM_PY.exists() and not os.environ.get("CI"):
    pytest.skip(f"no LiteLLM environment at {LITELLM_PY} (made by .ci/run)", allow_module_level=True)

SYSTEM = (
    "You are the assistant of the city council. The council meets every second Tuesday of the month in the "
    "main hall. Tonight the agenda covers the water budget, the library report and the new park on Main "
    "Street; staff recommend approving the water budget as presented, and the library report shows more "
    "members than last year. Answer questions about the meeting briefly and cite the agenda item."
)
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What does staff recommend?"}]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMPTWIRE_", "OPENAI_", "LITELLM_"))}
    return {**env, "PYTHONPATH": str(ROOT), "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network here
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as up:
        yield up


@pytest.fixture(scope="module")
def promptwire_url(tiny_exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`promptwire serve` with a compressor (the tiny export) and no backend."""
    from tests.gateway.test_serve_process import Served

    cfg = tmp_path_factory.mktemp("pw") / "config.yaml"
    cfg.write_text(f"stages:\n  compress:\n    model: {json.dumps(str(tiny_exports['bert']))}\n", encoding="utf-8")
    served = Served(["--config", str(cfg)])
    try:
        yield served.base
    finally:
        served.kill()


def _chat_bodies(up: UpstreamServer, since: int) -> list[dict[str, Any]]:
    return [r.body for r in up.requests[since:] if r.path.endswith("/chat/completions") and r.body is not None]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_sdk_hook_compresses_per_model_and_request_and_fails_open(
    upstream: UpstreamServer, promptwire_url: str, tiny_exports: dict[str, Path]
) -> None:
    if not LITELLM_PY.exists():
        pytest.fail(f"CI must provide the LiteLLM environment at {LITELLM_PY} (see .ci/run)")
    server = {"server_url": promptwire_url}
    cases = [
        {"callback": server},                                                          # 0 operator default
        {"callback": server, "metadata": {"promptwire": {"compress": False}}},        # 1 request: off
        {"callback": server, "metadata": {"promptwire": {"compress": {"rate": 0.3}}}},  # 2 request: options
        {"callback": {**server, "models": {"openai/*-2": False}}, "model": "openai/test-model-2"},  # 3 model off
        {"callback": {"server_url": f"http://127.0.0.1:{_closed_port()}"}},            # 4 server down
        {"callback": {"model": str(tiny_exports["bert"])}},                            # 5 in-process
    ]
    spec = {"upstream": upstream.url, "messages": MESSAGES, "cases": cases}
    before = len(upstream.requests)
    run = subprocess.run([str(LITELLM_PY), str(ROOT / "tests/compressors/litellm_sdk_check.py"), json.dumps(spec)],
                         capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    sent = [b["messages"] for b in _chat_bodies(upstream, before)]
    assert len(sent) == len(cases) and all(r["answer"] for r in results)
    system = [m[0]["content"] for m in sent]
    assert all(m[1] == MESSAGES[1] for m in sent)  # the last user message is never compressed

    ok = results[0]["stats"]
    assert ok["status"] == "ok" and ok["mode"] == "server" and ok["tokens_after"] < ok["tokens_before"]
    words = {w.strip(".,;") for w in SYSTEM.split()}
    assert len(system[0]) < len(SYSTEM) and {w.strip(".,;") for w in system[0].split()} <= words
    assert system[1] == SYSTEM and results[1]["stats"]["status"] == "skipped"
    assert len(system[2]) < len(system[0]) and results[2]["stats"]["tokens_after"] < ok["tokens_after"]
    assert system[3] == SYSTEM and results[3]["stats"]["status"] == "skipped"
    assert system[4] == SYSTEM and results[4]["stats"]["status"] == "error"  # fail-open ...
    assert any("promptwire compression skipped" in w for w in results[4]["warnings"])  # ... with a log line
    assert results[5]["stats"]["mode"] == "in-process" and system[5] == system[0]  # same model, same result


@pytest.mark.slow
def test_proxy_pre_call_hook(upstream: UpstreamServer, promptwire_url: str, tmp_path: Path) -> None:
    """LiteLLM's proxy loads the callback by module path from its config and runs its pre-call hook."""
    if not LITELLM_PY.exists():
        pytest.fail(f"CI must provide the LiteLLM environment at {LITELLM_PY} (see .ci/run)")
    port = _closed_port()
    cfg = tmp_path / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: test-model\n"
        f"    litellm_params: {{model: openai/test-model, api_base: {json.dumps(upstream.url)}, api_key: sk-x}}\n"
        "litellm_settings:\n"
        "  callbacks: compressors.llmlingua2.litellm_callback.proxy_handler_instance\n"
        "general_settings: {master_key: sk-master}\n",
        encoding="utf-8",
    )
    env = {**_env(), "PROMPTWIRE_URL": promptwire_url, "PROMPTWIRE_COMPRESS": '{"rate": 0.5}'}
    exe = LITELLM_PY.parent / "litellm"
    log = open(tmp_path / "litellm.log", "wb")
    proc = subprocess.Popen([str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "litellm.log").read_text(errors="replace")[-3000:]
            try:
                if httpx.get(f"{base}/health/liveliness", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "LiteLLM proxy did not start"
            time.sleep(0.5)
        before = len(upstream.requests)
        headers = {"Authorization": "Bearer sk-master"}
        on = httpx.post(f"{base}/v1/chat/completions", headers=headers, timeout=60,
                        json={"model": "test-model", "messages": MESSAGES})
        off = httpx.post(f"{base}/v1/chat/completions", headers=headers, timeout=60,
                         json={"model": "test-model", "messages": MESSAGES, "promptwire": {"compress": False}})
        assert on.status_code == 200 and off.status_code == 200, (on.text, off.text)
        bodies = _chat_bodies(upstream, before)
        assert len(bodies) == 2
        assert len(bodies[0]["messages"][0]["content"]) < len(SYSTEM)
        assert bodies[1]["messages"][0]["content"] == SYSTEM
        assert all("promptwire" not in b for b in bodies)  # the body key never reaches the provider
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
