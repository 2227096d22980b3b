"""`promptwire config check` reports every error of a file in one run, each at its key path, before
loading anything; `serve` refuses the same file with the same lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

PLANTED = """\
server: {host: 127.0.0.1, htp_port: 8080}              # 1: a key that does not exist
backends:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  - match: "gpt-*"
    backends: [up, vllm]                                # 2: a backend that does not exist
    stages:
      - name: compress
        options: {rate: 1.5}                            # 3: out of the option's range
        client_options: [rate, ratio]                   # 4: not an option of the stage
stages:
  compress: {model: /models/llmlingua2}
  select_prompt:
    pools:
      support: {type: soft, path: /pools/support.safetensors, backend: up}   # 5: soft prompts need a local model
"""

EXPECTED = [
    "server.htp_port: unknown key 'htp_port'",
    "models[0].backends[1]: 'vllm' is not a key of backends (known: up)",
    "models[0].stages[0].options.rate: option 'rate' of stage 'compress' must be <= 1, got 1.5",
    "models[0].stages[0].client_options[1]: stage 'compress' has no option 'ratio'",
    "stages.select_prompt.pools.support.backend: backend 'up' has type 'openai'; this needs a backend of type 'local'",
]


def test_a_used_stage_needs_its_section_when_it_has_required_keys() -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"default_stages\[0\]\.name: stage 'compress' needs a stages\.compress "
                                          r"section \(model required\)"):
        parse_config("default_stages: [{name: compress}]")


def test_config_check_reports_all_five_planted_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(PLANTED)
    assert main(["config", "check", str(f)]) == 1
    err = capsys.readouterr().err
    for line in EXPECTED:
        assert f"{f}: {line}" in err, line
    assert main(["serve", "--config", str(f), "--no-grpc"]) == 2  # serve validates the same, before any model
    err = capsys.readouterr().err
    for line in EXPECTED:
        assert f"{f}: {line}" in err, line


async def test_a_model_bound_stage_on_a_backend_that_cannot_run_it_is_a_config_error() -> None:
    from gateway.config import ConfigError, parse_config
    from gateway.core.gateway import Gateway
    from gateway.stages.base import StageDeps

    config = parse_config("backends: {up: {type: openai, base_url: 'http://127.0.0.1:9/v1'}}")
    gw = Gateway(config)
    await gw.router.start()
    try:
        deps = StageDeps(gw.router.providers, config)
        with pytest.raises(ConfigError, match=r"stages\.x\.backend: backend 'up' has type 'openai'; this needs "
                                              r"a backend of type 'local'"):
            deps.model("up", "stages.x.backend")
        with pytest.raises(ConfigError, match=r"stages\.x\.backend: 'gone' is not a key of backends"):
            deps.model("gone", "stages.x.backend")
    finally:
        await gw.aclose()
