"""Loading the config: the file (or the embedded default), environment overrides, validation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.base import ConfigError
from gateway.config.check import XREF_ERROR, format_loc, known_keys, problems, schema_loc
from gateway.config.env import Loc, Origins, apply_env
from gateway.config.schema import GatewayConfig
from gateway.config.yamlfile import DuplicateKey, yaml_load

__all__ = [
    "EMBEDDED_SOURCE",
    "default_config_text",
    "load_config",
    "load_raw",
    "parse_config",
    "parse_raw",
    "validate_config",
]


def default_config_text() -> str:
    """The embedded default config (package data): offline, no backend."""
    return resources.files("gateway").joinpath("default.yaml").read_text(encoding="utf-8")



_REQUIRED_HINTS = {
    "model_path": "type local: a checkpoint directory, a Hugging Face id, or tiny:llama for a stand-in",
    "base_url": "type openai: the upstream's API root, e.g. http://127.0.0.1:8000/v1",
    "model": "the compressor: an exported ONNX directory, a checkpoint directory or a Hugging Face id",
}


def _origin(loc: Loc, origins: Origins) -> str | None:
    """Where the value at ``loc`` came from, when not from the file: the longest recorded prefix."""
    for n in range(len(loc), 0, -1):
        label = origins.get(loc[:n])
        if label is not None:
            return label
    return None


def validate_config(raw: Any, source: str, origins: Origins | None = None) -> GatewayConfig:
    """Validate a parsed YAML tree; each error names ``source`` (or the environment variable or
    command-line option the value came from, per ``origins``), the key path and the reason. All
    errors are reported, cross references (backend and stage names) included."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping, got {type(raw).__name__}")
    found: list[tuple[Loc, str]] = []
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as e:
        xref = [((), err["msg"]) for err in e.errors() if err["type"] == XREF_ERROR]
        for err in e.errors():
            loc = schema_loc(err["loc"])
            if err["type"] == XREF_ERROR or (err["type"] == "extra_forbidden" and len(loc) == 2
                                             and loc[0] in ("stages", "decoders")):
                continue  # names: reported below, with the names that exist
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "backend_type":
                loc, msg = (*loc, "type"), f"must be 'openai' or 'local', got {err['input'].get('type')!r}"
            elif err["type"] == "missing":
                hint = _REQUIRED_HINTS.get(str(loc[-1]))
                msg = "required" + (f" ({hint})" if hint else "")
            elif err["type"] == "extra_forbidden":
                keys = known_keys(loc[:-1], raw)
                msg = f"unknown key {loc[-1]!r}" + (f" (keys here: {', '.join(keys)})" if keys else "")
            found.append((loc, msg))
    # Cross references, one line per key path, from the raw tree: also when fields have errors.
    found += problems(raw) or xref
    lines = []
    for loc, msg in found:
        line = f"{(_origin(loc, origins or {}) or source)}: {format_loc(loc)}: {msg}"
        if line not in lines:
            lines.append(line)
    raise ConfigError("\n".join(lines))


def parse_raw(
    text: str, source: str, env: Mapping[str, str] | None = None, origins: Origins | None = None
) -> dict[str, Any]:
    """YAML text -> tree with ``env`` overrides applied (not validated yet)."""
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_reason(e)}") from None
    except DuplicateKey as e:
        raise ConfigError(f"{source}: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping, got {type(raw).__name__}")
    tree: dict[str, Any] = raw
    if env:
        tree = apply_env(tree, env, origins)
    return tree


def _yaml_reason(e: yaml.YAMLError) -> str:
    """The parser's complaint on one line, with where it is."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = f" ({e.context})" if e.context else ""
        return f"{e.problem}{where}{context}"
    return " ".join(str(e).split())


EMBEDDED_SOURCE = "<embedded default.yaml>"


def load_raw(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None, origins: Origins | None = None
) -> tuple[dict[str, Any], str]:
    """FILE's tree (or the embedded default's when None) with env overrides, and its name for errors."""
    env = os.environ if env is None else env
    if path is None:
        return parse_raw(default_config_text(), EMBEDDED_SOURCE, env, origins), EMBEDDED_SOURCE
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    return parse_raw(text, str(p), env, origins), str(p)


def parse_config(text: str, source: str = "<config>", env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse and validate YAML text; ``env`` overrides (default: none)."""
    origins: Origins = {}
    return validate_config(parse_raw(text, source, env, origins), source, origins)


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load FILE (or the embedded default when None) and apply ``env`` overrides (default os.environ)."""
    origins: Origins = {}
    raw, source = load_raw(path, env, origins)
    return validate_config(raw, source, origins)
