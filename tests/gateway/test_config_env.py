"""PROMPTWIRE_* environment overrides: how a variable finds its key, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_config

FILE = """\
server: {http_port: 8080}
backends:
  vLLM: {type: openai, base_url: 'http://old:8000/v1', models: [m]}
  my-tgi: {type: openai, base_url: 'http://tgi:80/v1', models: [t], headers: {x-api-version: '1'}}
"""


@pytest.fixture
def gw(tmp_path: Path) -> Path:
    f = tmp_path / "gw.yaml"
    f.write_text(FILE)
    return f


def test_segments_match_existing_keys_ignoring_case_and_dash(gw: Path) -> None:
    cfg = load_config(gw, env={
        "PROMPTWIRE_BACKENDS__VLLM__BASE_URL": "http://new:8000/v1",
        "PROMPTWIRE_BACKENDS__MY_TGI__TIMEOUTS__CONNECT_S": "0.5",
        "PROMPTWIRE_BACKENDS__MY_TGI__HEADERS__X_API_VERSION": "'2'",
        "PROMPTWIRE_SERVER__HTTP-PORT": "9000",
    })
    assert sorted(cfg.backends) == ["my-tgi", "vLLM"]  # no second backend "vllm"
    assert cfg.backends["vLLM"].base_url == "http://new:8000/v1"
    assert cfg.backends["my-tgi"].timeouts.connect_s == 0.5
    assert dict(cfg.backends["my-tgi"].headers) == {"x-api-version": "2"}
    assert cfg.server.http_port == 9000


def test_a_new_key_is_lower_cased(gw: Path) -> None:
    cfg = load_config(gw, env={"PROMPTWIRE_BACKENDS__EXTRA__BASE_URL": "http://x:1/v1"})
    assert cfg.backends["extra"].base_url == "http://x:1/v1"


def test_ambiguous_segment_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text("backends:\n  a-b: {base_url: 'http://h:1/v1'}\n  A_B: {base_url: 'http://h:2/v1'}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f, env={"PROMPTWIRE_BACKENDS__A_B__BASE_URL": "http://h:3/v1"})
    assert str(ei.value).startswith(
        "environment PROMPTWIRE_BACKENDS__A_B__BASE_URL: 'A_B' matches several keys of backends ('a-b', 'A_B')"
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PROMPTWIRE_SERVER__HTTP_PORT", "abc",
         "environment PROMPTWIRE_SERVER__HTTP_PORT: server.http_port: Input should be a valid integer"),
        ("PROMPTWIRE_BACKENDS__VLLM__BASE_URL", "ftp://x/v1",
         "environment PROMPTWIRE_BACKENDS__VLLM__BASE_URL: backends.vLLM.base_url: 'ftp://x/v1' is not an http"),
        ("PROMPTWIRE_SERVER__HTPP_PORT", "1",
         "environment PROMPTWIRE_SERVER__HTPP_PORT: server.htpp_port: unknown key 'htpp_port'"),
        # a backend the variable creates: its missing base_url is the variable's doing, not the file's
        ("PROMPTWIRE_BACKENDS__NEW__TYPE", "openai",
         "environment PROMPTWIRE_BACKENDS__NEW__TYPE: backends.new.base_url: required (type openai"),
        ("PROMPTWIRE_DEFAULT_BACKEND", "x", None),  # no "__": not an override (other PROMPTWIRE_ settings)
        ("PROMPTWIRE_MODELS__0__MATCH", "x",
         "environment PROMPTWIRE_MODELS__0__MATCH: models is a list; the environment cannot set one of its "
         "items ('0'). Give the whole list as one YAML value in the file"),
        ("PROMPTWIRE_BACKENDS__VLLM__MODELS__0", "x",
         "environment PROMPTWIRE_BACKENDS__VLLM__MODELS__0: backends.vLLM.models is a list; the environment "
         "cannot set one of its items ('0'). Give the whole list as one YAML value "
         "(PROMPTWIRE_BACKENDS__VLLM__MODELS='[...]')"),
        ("PROMPTWIRE_SERVER__HTTP_PORT__X", "1",
         "environment PROMPTWIRE_SERVER__HTTP_PORT__X: server.http_port is a single value, it has no key 'X'"),
        ("PROMPTWIRE_SERVER__HTTP_PORT", "{a: 1, a: 2}", "environment PROMPTWIRE_SERVER__HTTP_PORT: not a YAML value"),
        # a value that does not parse is not echoed (it may be a key)
        ("PROMPTWIRE_BACKENDS__VLLM__API_KEY", "[sk-secret",
         "environment PROMPTWIRE_BACKENDS__VLLM__API_KEY: not a YAML value: expected ',' or ']', but got '<stream end>'"),
    ],
)
def test_errors_name_the_variable(gw: Path, name: str, value: str, expected: str | None) -> None:
    if expected is None:
        load_config(gw, env={name: value})
        return
    with pytest.raises(ConfigError) as ei:
        load_config(gw, env={name: value})
    assert str(ei.value).startswith(expected), str(ei.value)
    assert str(gw) not in str(ei.value) and "secret" not in str(ei.value)


def test_whole_list_from_the_environment(gw: Path) -> None:
    cfg = load_config(gw, env={"PROMPTWIRE_BACKENDS__VLLM__MODELS": "[a, b]"})
    assert cfg.backends["vLLM"].models == ("a", "b")


def test_config_check_names_the_variable(
    gw: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMPTWIRE_SERVER__HTTP_PORT", "abc")
    assert main(["config", "check", str(gw)]) == 1
    err = capsys.readouterr().err
    assert "environment PROMPTWIRE_SERVER__HTTP_PORT: server.http_port: Input should be a valid integer" in err
    monkeypatch.setenv("PROMPTWIRE_SERVER__HTTP_PORT", "9000")
    monkeypatch.setenv("PROMPTWIRE_BACKENDS__VLLM__BASE_URL", "http://new:8000/v1")
    assert main(["config", "check", str(gw)]) == 0
    assert "OK (2 backend(s)" in capsys.readouterr().out
