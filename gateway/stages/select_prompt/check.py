"""What `config check` (and `serve`, before loading models) can verify of select_prompt pools from files alone."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.stages.select_prompt.pool import PoolError, read_pool_info

if TYPE_CHECKING:
    from gateway.config.stages import SoftPoolConfig

__all__ = ["model_shape", "pool_problems"]

Problem = tuple[tuple[str | int, ...], str]


def model_shape(model_dir: str | Path) -> tuple[int, int] | None:
    """(hidden size, number of layers) from a checkpoint's config.json; None when it does not say."""
    cfg_file = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    hidden = cfg.get("hidden_size", cfg.get("n_embd"))
    layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    if isinstance(hidden, int) and isinstance(layers, int):
        return hidden, layers
    return None


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)


def _soft_pools(pools: Any) -> list[tuple[str, SoftPoolConfig]]:
    """The soft pools of a raw or validated ``pools`` mapping; pools the schema rejects are skipped (the
    schema reports them)."""
    from pydantic import ValidationError

    from gateway.config.stages import SoftPoolConfig

    out: list[tuple[str, SoftPoolConfig]] = []
    for name, pool in pools.items() if isinstance(pools, Mapping) else ():
        if isinstance(pool, SoftPoolConfig):
            out.append((str(name), pool))
        elif isinstance(pool, Mapping) and pool.get("type") == "soft":
            try:
                out.append((str(name), SoftPoolConfig.model_validate(pool)))
            except ValidationError:
                continue
    return out


def pool_problems(conf: Any, backends: Mapping[str, Mapping[str, Any]]) -> list[Problem]:
    """Problems of a ``stages.select_prompt`` section (raw or validated) that need more than its schema:
    the default pool's name, and each soft pool's file (readable, well formed) and, when its backend's
    ``model_path`` is a local directory, the model it was made for (hidden size, fingerprint, layers).
    Models given as Hugging Face ids or ``tiny:`` stand-ins are checked when `serve` loads them."""
    from decoders.fingerprint import model_fingerprint

    out: list[Problem] = []
    pools = _get(conf, "pools")
    names = sorted(str(k) for k in pools) if isinstance(pools, Mapping) else []
    for where, value in ((("default_pool",), _get(conf, "default_pool")),
                         (("defaults", "pool"), _get(_get(conf, "defaults"), "pool"))):
        if isinstance(value, str) and isinstance(pools, Mapping) and value not in pools:
            out.append((where, f"{value!r} is not a key of stages.select_prompt.pools "
                               f"(pools: {', '.join(names) or 'none'})"))
    for name, pool in _soft_pools(pools):
        try:
            info = read_pool_info(pool.path)
        except PoolError as exc:
            out.append((("pools", name, "path"), exc.message))
            continue
        backend = backends.get(pool.backend) or {}
        model_path = backend.get("model_path")
        if backend.get("type") != "local" or not isinstance(model_path, str) or not Path(model_path).is_dir():
            continue
        shape = model_shape(model_path)
        if shape is not None:
            hidden, layers = shape
            if info.hidden_size != hidden:
                out.append((("pools", name, "path"), f"{pool.path}: prompts have hidden size {info.hidden_size}, "
                                                     f"backend {pool.backend!r}'s model {hidden}"))
            for i in pool.layers or ():
                if not -layers <= i < layers:
                    out.append((("pools", name, "layers"), f"layer {i} out of range for backend "
                                                           f"{pool.backend!r}'s model ({layers} layers)"))
        try:
            fingerprint = model_fingerprint(model_path)
        except OSError:
            continue
        if fingerprint != info.fingerprint:
            out.append((("pools", name, "path"), f"{pool.path}: pool was trained for model {info.fingerprint}, "
                                                 f"backend {pool.backend!r} serves {fingerprint}"))
    return out
