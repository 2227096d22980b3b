"""Fuzzed config files never start a half-valid server: a file (plus environment overrides) is either
refused as a whole, with one line per problem naming the file or variable and the key, or it is valid
throughout: every reference resolves and the gateway it describes builds, starts and stops."""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gateway.cli import _serve_config, build_parser
from gateway.config import ConfigError, GatewayConfig
from gateway.config.check import problems
from gateway.core.gateway import Gateway
from gateway.startup import model_source_problems
from tests.fuzz.profile import SCALE, examples

QUICK = 200
BASE: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "http_port": 8080, "grpc_port": 50051, "shutdown_grace_s": 5,
               "log_level": "info", "access_log": True},
    "limits": {"max_body_bytes": 1048576, "max_prompt_chars": 100000, "max_in_flight": 64,
               "request_timeout_s": 30, "max_n": 8},
    "auth": {"keys": [{"id": "team-a", "sha256": hashlib.sha256(b"k").hexdigest(), "models": ["m*"],
                       "stages": ["compress"]}]},
    "backends": {
        "a": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["m1", "m2"],
              "timeouts": {"connect_s": 0.5, "read_s": 5, "total_s": 10}, "retries": {"max_attempts": 2},
              "max_connections": 4, "headers": {"x-team": "a"}, "openai_limits": False},
        "b": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["m3"]},
    },
    "default_backend": "a",
    "models": [{"match": "m1", "backends": ["a", "b"], "upstream_model": "up-m1"}, {"match": "m*"}],
    "default_stages": [],
}
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=30),
    st.sampled_from(["a", "b", "c", "openai", "local", "compress", "*", "http://x", "-1", "0", "1e309", "~", ""]),
    st.lists(st.sampled_from(["a", "b", "m1", 3, None]), max_size=3),
    st.dictionaries(st.sampled_from(["type", "x", "models", "base_url", "name"]), st.sampled_from(["a", 1, None]),
                    max_size=2),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """The base config with a few changes: a value replaced, a key removed, an unknown key added."""
    tree = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(tree)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = tree
        for p in path[:-1]:
            parent = parent[p]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "modle", "tls_cert_file", "keys"]))] = draw(VALUES)
    return tree


ENV = st.dictionaries(
    st.sampled_from(["PROMPTWIRE_SERVER__HTTP_PORT", "PROMPTWIRE_LIMITS__MAX_N", "PROMPTWIRE_BACKENDS__A__BASE_URL",
                     "PROMPTWIRE_DEFAULT_BACKEND", "PROMPTWIRE_LIMITS__REQUEST_TIMEOUT_S", "PROMPTWIRE_BOGUS"]),
    st.sampled_from(["1", "0", "-5", "abc", "http://127.0.0.1:9/v1", "a", "c", "", "[]", "1e400"]), max_size=2)


def _args(path: Path) -> argparse.Namespace:
    """`promptwire serve --config PATH` as the command line parses it."""
    return build_parser()[0].parse_args(["serve", "--config", str(path)])


async def _starts_and_stops(config: GatewayConfig) -> None:
    gw = Gateway(config)
    try:
        await gw.start()
    finally:
        await gw.aclose()


def _check(text: str, env: dict[str, str], path: Path) -> str:
    """Load ``text`` as ``serve`` does; 'refused' or 'valid' (asserting what each means)."""
    path.write_text(text)
    try:
        config, _ = _serve_config(_args(path), env)
    except ConfigError as e:
        lines = str(e).splitlines()
        assert lines and all(line.strip() for line in lines)
        assert all(str(path) in line or "PROMPTWIRE_" in line or "command line" in line for line in lines), lines
        return "refused"
    assert problems(config) == []  # every backend, route and stage reference resolves
    assert model_source_problems(config) == []  # (no local models here)
    asyncio.run(_starts_and_stops(config))
    return "valid"


def test_fuzzed_config_files_are_refused_whole_or_valid_throughout(tmp_path: Path) -> None:
    outcomes: dict[str, int] = {}

    @settings(max_examples=examples(QUICK), deadline=None, database=None, derandomize=SCALE == 1,
              suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
    @hypothesis.given(tree=mutated(), env=ENV, garble=st.one_of(st.none(), st.integers(0, 400)))
    def run(tree: dict[str, Any], env: dict[str, str], garble: int | None) -> None:
        text = yaml.safe_dump(tree, sort_keys=False)
        if garble is not None:  # a broken file: cut anywhere, and a stray character
            text = text[:garble] + "\t: [" + text[garble:]
        outcome = _check(text, env, tmp_path / "gateway.yaml")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    run()
    assert outcomes.get("refused", 0) > 0 and outcomes.get("valid", 0) > 0, outcomes


@pytest.mark.parametrize("text", ["", "{}", "[]", "null", "backends: 5", "\x00\x01", "a: &x [*x]",
                                  "backends: {a: {type: local}}", "server: {http_port: 99999}"])
def test_edge_files(text: str, tmp_path: Path) -> None:
    assert _check(text, {}, tmp_path / "edge.yaml") in ("refused", "valid")
