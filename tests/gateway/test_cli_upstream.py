"""`promptwire serve` options on top of the config: --upstream merges into the file's and the
environment's settings for that backend; the upstream key; errors name where the value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import _serve_config, build_parser, main
from gateway.config import ConfigError, GatewayConfig


def _config(argv: list[str], env: dict[str, str] | None = None) -> GatewayConfig:
    args = build_parser()[0].parse_args(["serve", *argv])
    return _serve_config(args, env or {})[0]


def test_upstream_keeps_environment_overrides_for_its_backend() -> None:
    cfg = _config(["--upstream", "http://h:1"], {
        "PROMPTWIRE_BACKENDS__UPSTREAM__API_KEY_ENV": "MY_KEY", "MY_KEY": "sk-x",
        "PROMPTWIRE_BACKENDS__UPSTREAM__TIMEOUTS__READ_S": "7",
    })
    b = cfg.backends["upstream"]
    assert (b.type, b.base_url, b.api_key_env, b.timeouts.read_s) == ("openai", "http://h:1/v1", "MY_KEY", 7)
    assert list(cfg.backends) == ["upstream"] and cfg.default_backend == "upstream"  # the stand-in is gone


def test_upstream_merges_into_the_files_backend(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text("backends:\n  upstream: {base_url: 'http://old:1/v1', headers: {x-team: a}, max_connections: 4}\n"
                 "  other: {base_url: 'http://o:1/v1'}\ndefault_backend: other\n")
    cfg = _config(["--config", str(f), "--upstream", "https://new.example/v1"])
    b = cfg.backends["upstream"]
    assert (b.base_url, dict(b.headers), b.max_connections) == ("https://new.example/v1", {"x-team": "a"}, 4)
    assert cfg.default_backend == "other"  # the file's choice stands


def test_upstream_key_sources() -> None:
    # no key configured: $OPENAI_API_KEY when it is set, over https or to this machine
    for url in ("https://h:1", "http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"):
        assert _config(["--upstream", url], {"OPENAI_API_KEY": "sk-o"}).backends["upstream"].api_key_env == (
            "OPENAI_API_KEY"), url
    # ... but not in clear text to another machine
    assert _config(["--upstream", "http://h:1"], {"OPENAI_API_KEY": "sk-o"}).backends["upstream"].api_key_env is None
    assert _config(["--upstream", "http://h:1"], {}).backends["upstream"].api_key_env is None
    # a configured key wins over the default
    env = {"OPENAI_API_KEY": "sk-o", "PROMPTWIRE_BACKENDS__UPSTREAM__API_KEY": "sk-p"}
    b = _config(["--upstream", "http://h:1"], env).backends["upstream"]
    assert (b.api_key, b.api_key_env) == ("sk-p", None)
    # --upstream-key-env names the variable, for every --upstream backend
    cfg = _config(["--upstream", "http://h:1", "--upstream", "http://g:2", "--upstream-key-env", "UP_KEY"],
                  {**env, "UP_KEY": "sk-u"})
    assert [(b.api_key, b.api_key_env) for b in cfg.backends.values()] == [(None, "UP_KEY"), (None, "UP_KEY")]
    # '' sends no key at all
    b = _config(["--upstream", "http://h:1", "--upstream-key-env", ""], env).backends["upstream"]
    assert (b.api_key, b.api_key_env) == (None, None)


def test_upstream_key_env_errors() -> None:
    with pytest.raises(ConfigError, match="--upstream-key-env UP_KEY: the environment variable UP_KEY is not set"):
        _config(["--upstream", "http://h:1", "--upstream-key-env", "UP_KEY"], {})
    with pytest.raises(ConfigError, match="--upstream-key-env goes with --upstream"):
        _config(["--upstream-key-env", "UP_KEY"], {"UP_KEY": "k"})


def test_serve_config_errors_name_the_file_the_variable_or_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text("backends:\n  l: {type: local}\n  v: {base_url: 'ftp://h/v1'}\n")
    assert main(["serve", "--config", str(f), "--no-grpc"]) == 2
    err = capsys.readouterr().err
    assert f"{f}: backends.l.model_path: required (type local" in err
    assert f"{f}: backends.v.base_url: 'ftp://h/v1' is not an http:// or https:// URL" in err
    with pytest.raises(ConfigError) as ei:
        _config(["--http-port", "70000", "--upstream", "http://h:1"], {"PROMPTWIRE_LIMITS__MAX_IN_FLIGHT": "0"})
    assert str(ei.value).splitlines() == [
        "command line --http-port: server.http_port: Input should be less than or equal to 65535",
        "environment PROMPTWIRE_LIMITS__MAX_IN_FLIGHT: limits.max_in_flight: Input should be greater than 0",
    ]


def test_no_config_and_no_flags_is_the_offline_default() -> None:
    cfg = _config([], {})
    assert {n: (b.type, b.model_path) for n, b in cfg.backends.items()} == {"tiny": ("local", "tiny:llama")}


def test_start_notes_name_variables_never_keys(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import _log_backend_notes

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    monkeypatch.delenv("MISSING_KEY", raising=False)
    cfg = _config(["--upstream", "https://api.example.com/v1"], {
        "OPENAI_API_KEY": "sk-secret-value", "PROMPTWIRE_BACKENDS__UPSTREAM__TLS_VERIFY": "false",
        "PROMPTWIRE_BACKENDS__OTHER__BASE_URL": "http://o:1/v1",
        "PROMPTWIRE_BACKENDS__OTHER__API_KEY_ENV": "MISSING_KEY",
    })
    with caplog.at_level("INFO", logger="gateway.cli"):
        _log_backend_notes(cfg, defaulted_key=True)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "backend upstream: sending the key in $OPENAI_API_KEY to api.example.com" in text
    assert "backend upstream: tls_verify is false: the certificate of api.example.com is NOT checked" in text
    assert "backend other: api_key_env MISSING_KEY is not set; no key is sent to o:1" in text
    assert "sk-secret-value" not in text


def test_upstream_url_gets_v1_before_its_query() -> None:
    from gateway.cli import _upstream_url

    assert _upstream_url("http://h:8000") == "http://h:8000/v1"
    assert _upstream_url("http://h:8000/") == "http://h:8000/v1"
    assert _upstream_url("http://h:8000?api-version=X") == "http://h:8000/v1?api-version=X"
    assert _upstream_url("https://h/openai/v1/?api-version=2") == "https://h/openai/v1?api-version=2"
