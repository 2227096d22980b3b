"""Config loading: errors name the file, key path and reason; env overrides; `promptwire config check`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_config, parse_config


def test_embedded_default_is_offline_and_valid() -> None:
    cfg = load_config(None, env={})
    assert cfg.server.host == "127.0.0.1"
    # offline: the only backend is the locally built stand-in, nothing to download
    assert {name: (b.type, b.model_path) for name, b in cfg.backends.items()} == {"tiny": ("local", "tiny:llama")}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("limits: {max_in_flight: 0}", "cfg.yaml: limits.max_in_flight: Input should be greater than 0"),
        ("server: {htp_port: 1}", "cfg.yaml: server.htp_port: unknown key 'htp_port'"),
        ("backends: {a: {type: openai}}", "cfg.yaml: backends.a.base_url: required (type openai"),
        ("backends: {a: {type: grpc, base_url: x}}", "cfg.yaml: backends.a.type: must be 'openai' or 'local', got 'grpc'"),
        ("auth: {keys: [{id: a, sha256: nothex}]}", "cfg.yaml: auth.keys[0].sha256: must be 64 lowercase hex"),
        ("default_stages: [{name: squash}]", "cfg.yaml: default_stages[0].name: unknown stage 'squash'"),
        ("models: [{match: '*', backends: [nope]}]", "cfg.yaml: models[0].backends[0]: 'nope' is not a key of backends"),
        ("backends: {l: {type: local}}", "cfg.yaml: backends.l.model_path: required (type local"),
        ("backends: {a: {base_url: 'ftp://h/v1'}}", "cfg.yaml: backends.a.base_url: 'ftp://h/v1' is not an http:// or https://"),
        ("backends: {a: {base_url: '127.0.0.1:8000/v1'}}", "cfg.yaml: backends.a.base_url: '127.0.0.1:8000/v1' is not an http"),
        ("backends: {a: {base_url: 'http:///v1'}}", "cfg.yaml: backends.a.base_url: 'http:///v1' has no host"),
        ("backends: {a: {base_url: 'http://h:99999/v1'}}", "cfg.yaml: backends.a.base_url: 'http://h:99999/v1': Port out of range"),
        ("backends: {a: {base_url: 'http://u:p@h/v1'}}", "cfg.yaml: backends.a.base_url: credentials in the URL"),
        ("backends: {a: {base_url: 'https://h/v1#frag'}}", "cfg.yaml: backends.a.base_url: a fragment"),
        ("backends: {a: {base_url: 'http://h /v1'}}", "cfg.yaml: backends.a.base_url: 'http://h /v1' has spaces"),
        ("server: {http_port: 1}\nserver: {http_port: 2}", "cfg.yaml: line 2: duplicate key 'server' (first given on line 1)"),
        ("server: {http_port: 1, http_port: 2}", "cfg.yaml: line 1: duplicate key 'http_port' (first given on line 1)"),
        ("backends:\n  a: {base_url: 'http://h/v1'}\n  b: {}\n  a: {}", "cfg.yaml: line 4: duplicate key 'a' (first given on line 2)"),
        ("[1, 2]", "cfg.yaml: (top level): must be a mapping, got list"),
        ("server: {http_port: [", "cfg.yaml: not valid YAML"),
    ],
)
def test_errors_name_file_path_and_reason(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "cfg.yaml")
    assert expected in str(ei.value)


def test_env_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("server: {http_port: 1000}\nbackends: {u: {base_url: 'http://127.0.0.1:1/v1'}}\n")
    cfg = load_config(f, env={"PROMPTWIRE_SERVER__HTTP_PORT": "2000", "PROMPTWIRE_LIMITS__MAX_IN_FLIGHT": "7",
                              "PROMPTWIRE_BACKENDS__U__TIMEOUTS__CONNECT_S": "0.5", "OTHER": "x"})
    assert cfg.server.http_port == 2000 and cfg.limits.max_in_flight == 7
    assert cfg.backends["u"].timeouts.connect_s == 0.5
    with pytest.raises(ConfigError) as ei:
        load_config(f, env={"PROMPTWIRE_LIMITS__MAX_IN_FLIGHT": "lots"})
    # the value came from the environment: the error names the variable, not the file
    assert str(ei.value) == ("environment PROMPTWIRE_LIMITS__MAX_IN_FLIGHT: limits.max_in_flight: "
                             "Input should be a valid integer, unable to parse string as an integer")


def test_accepted_base_urls_and_yaml_merge_keys() -> None:
    cfg = parse_config(
        "backends:\n"
        "  a: &common {type: openai, max_connections: 8, base_url: 'https://api.example.com/v1'}\n"
        "  b: {<<: *common, max_connections: 9, base_url: 'http://[::1]:8000/v1'}\n"
        "  c: {base_url: 'http://vllm:8000'}\n",
        "cfg.yaml",
    )
    # a merge key's values may be overridden: that is not a duplicate key
    assert cfg.backends["b"].max_connections == 9 and cfg.backends["b"].base_url == "http://[::1]:8000/v1"
    assert cfg.backends["a"].base_url == "https://api.example.com/v1"


def test_every_cross_reference_error_at_its_key_path_beside_field_errors() -> None:
    text = (
        "limits: {max_in_flight: 0}\n"
        "backends: {vllm: {base_url: 'http://h:1/v1'}}\n"
        "default_backend: other\n"
        "models:\n"
        "  - {match: a, backends: [vllm, nope]}\n"
        "  - {match: b, backends: [gone], stages: [{name: compres}]}\n"
        "stages: {squash: {}}\n"
    )
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "gw.yaml")
    assert str(ei.value).splitlines() == [
        "gw.yaml: limits.max_in_flight: Input should be greater than 0",
        "gw.yaml: default_backend: 'other' is not a key of backends (known: vllm)",
        "gw.yaml: models[0].backends[1]: 'nope' is not a key of backends (known: vllm)",
        "gw.yaml: models[1].backends[0]: 'gone' is not a key of backends (known: vllm)",
        "gw.yaml: models[1].stages[0].name: unknown stage 'compres' "
        "(known: condense_history, select_prompt, conjugate, compress)",
        "gw.yaml: stages.squash: unknown stage 'squash' (known: condense_history, select_prompt, conjugate, compress)",
    ]


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    sha = hashlib.sha256(b"k").hexdigest()
    good.write_text(f"backends: {{u: {{base_url: 'http://x:1/v1'}}}}\nauth: {{keys: [{{id: a, sha256: {sha}}}]}}\n")
    assert main(["config", "check", str(good)]) == 0
    assert "OK (1 backend(s), 0 model route(s), 1 API key(s))" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits:\n  max_body_bytes: -5\n")
    assert main(["config", "check", str(bad)]) == 1
    assert f"{bad}: limits.max_body_bytes: Input should be greater than 0" in capsys.readouterr().err
    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
