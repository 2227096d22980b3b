"""``PROMPTWIRE_A__B=value`` environment overrides applied to the raw config tree before validation."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel

from gateway.config.base import ConfigError
from gateway.config.yamlfile import DuplicateKey, yaml_load

__all__ = ["ENV_PREFIX", "Loc", "Origins", "apply_env"]

ENV_PREFIX = "PROMPTWIRE_"

Loc = tuple[int | str, ...]
Origins = dict[Loc, str]
"""Key paths whose value did not come from the file, and where it came from (``environment
PROMPTWIRE_X``, ``command line --http-port``): errors there name that instead of the file."""


def _norm(key: str) -> str:
    return key.lower().replace("-", "_")


def _shape(annotation: Any) -> tuple[str, Any]:
    """What a field holds, for walking an env path: ("model", cls), ("map", value type), ("list", None),
    ("any", None) or ("scalar", None)."""
    if annotation is Any:
        return "any", None
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _shape(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _shape(members[0])
        shapes = [_shape(m)[0] for m in members]
        return ("any", None) if all(s == "model" for s in shapes) else ("scalar", None)  # a backend: by type
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    if origin in (Mapping, dict) or annotation in (Mapping, dict):
        args = typing.get_args(annotation)
        return "map", args[1] if len(args) == 2 else Any
    if origin in (tuple, list) or annotation in (tuple, list):
        return "list", None
    return "scalar", None


def apply_env(raw: dict[str, Any], env: Mapping[str, str], origins: Origins | None = None) -> dict[str, Any]:
    """Apply ``PROMPTWIRE_A__B__C=value`` overrides (key path ``a.b.c``; the value is parsed as YAML) to
    ``raw``. Each segment matches a key already in the tree (or a field name) ignoring case, with ``_``
    and ``-`` alike, so ``PROMPTWIRE_BACKENDS__MY_TGI__BASE_URL`` sets ``backends.my-tgi.base_url``.
    ``origins`` (when given) records which key paths came from which variable."""
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        segments = name[len(ENV_PREFIX) :].split("__")
        label = f"environment {name}"
        if any(not p for p in segments):
            raise ConfigError(f"{label}: empty key segment")
        try:
            value = yaml_load(env[name])
        except (yaml.YAMLError, DuplicateKey) as e:
            # Without the text: the value may be a secret (an API key).
            why = str(e) if isinstance(e, DuplicateKey) else getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(f"{label}: not a YAML value: {why}") from None
        _set_env_value(raw, segments, value, label, origins)
    return raw


def _set_env_value(raw: dict[str, Any], segments: list[str], value: Any, label: str,
                   origins: Origins | None) -> None:
    node: dict[Any, Any] = raw
    from gateway.config.schema import GatewayConfig

    shape: tuple[str, Any] = ("model", GatewayConfig)
    path: list[str] = []
    for i, seg in enumerate(segments):
        kind, arg = shape
        if kind == "list":
            whole = f" ({ENV_PREFIX}{'__'.join(segments[:i])}='[...]')" if i >= 2 else " in the file"
            raise ConfigError(
                f"{label}: {'.'.join(path)} is a list; the environment cannot set one of its items "
                f"({seg!r}). Give the whole list as one YAML value{whole}"
            )
        if kind == "scalar":
            raise ConfigError(f"{label}: {'.'.join(path)} is a single value, it has no key {seg!r}")
        if kind == "model":
            fields = [f for f in arg.model_fields if _norm(f) == _norm(seg)]
            key = fields[0] if fields else seg.lower()  # unknown: validation names it (extra key)
            shape = _shape(arg.model_fields[key].annotation) if fields else ("any", None)
        else:
            matches = [k for k in node if isinstance(k, str) and _norm(k) == _norm(seg)]
            if len(matches) > 1:
                raise ConfigError(
                    f"{label}: {seg!r} matches several keys of {'.'.join(path) or '(top level)'} "
                    f"({', '.join(map(repr, matches))}); rename one so they differ in more than case, '-' and '_'"
                )
            key = matches[0] if matches else seg.lower()
            shape = _shape(arg) if kind == "map" else ("any", None)
        path.append(key)
        if i == len(segments) - 1:
            node[key] = value
            if origins is not None:
                origins[tuple(path)] = label
            return
        nxt = node.get(key)
        if isinstance(nxt, list):
            shape = ("list", None)
        if shape[0] in ("list", "scalar"):
            continue  # the next segment reports it
        if nxt is None:
            nxt = node[key] = {}
            if origins is not None:
                origins.setdefault(tuple(path), label)
        elif not isinstance(nxt, dict):
            raise ConfigError(
                f"{label}: {'.'.join(path)} holds a value of type {type(nxt).__name__}, not a mapping"
            )
        node = nxt
