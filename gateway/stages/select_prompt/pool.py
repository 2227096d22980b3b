"""The soft-prompt pool file: safetensors tensor `prompts` (m, n, d), metadata `names` and the model fingerprint."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.stages.select_prompt.errors import SelectPromptError

__all__ = ["FORMAT", "PoolError", "PoolInfo", "SoftPool", "read_pool_info", "save_pool"]

FORMAT = "promptwire-idp-pool/1"
"""Value of the ``format`` metadata key."""
_TENSOR = "prompts"


class PoolError(SelectPromptError):
    """A pool file that cannot be used; ``param`` is ``path`` (or the argument of `save_pool` at fault)."""


@dataclass(frozen=True)
class PoolInfo:
    """What a pool file declares, read without loading its tensor (``config check`` uses this)."""

    path: Path
    names: tuple[str, ...]
    fingerprint: str
    shape: tuple[int, int, int]
    """(m, n, d): prompts, virtual tokens per prompt, hidden size."""

    @property
    def size(self) -> int:
        return self.shape[0]

    @property
    def tokens(self) -> int:
        return self.shape[1]

    @property
    def hidden_size(self) -> int:
        return self.shape[2]

    def check(self, *, fingerprint: str | None = None, hidden_size: int | None = None) -> None:
        """Raise PoolError when the pool was made for another model."""
        if hidden_size is not None and self.hidden_size != hidden_size:
            raise PoolError(
                f"{self.path}: prompts have hidden size {self.hidden_size}, the model {hidden_size}",
                param="path",
            )
        if fingerprint is not None and self.fingerprint != fingerprint:
            raise PoolError(
                f"{self.path}: pool was trained for model {self.fingerprint}, this backend's model is "
                f"{fingerprint} (train a pool for it with `promptwire idp train --model ...`)",
                param="path",
            )


@dataclass(frozen=True)
class SoftPool:
    """A loaded pool: ``prompts`` is a float32 torch tensor (m, n, d)."""

    info: PoolInfo
    prompts: Any

    @property
    def names(self) -> tuple[str, ...]:
        return self.info.names

    @classmethod
    def load(cls, path: str | Path, *, fingerprint: str | None = None, hidden_size: int | None = None) -> SoftPool:
        """Read and check a pool file (see `read_pool_info`); the tensor comes back as float32 on the CPU."""
        import torch
        from safetensors.torch import load_file

        info = read_pool_info(path)
        info.check(fingerprint=fingerprint, hidden_size=hidden_size)
        prompts = load_file(str(info.path))[_TENSOR].to(torch.float32)  # (m, n, d)
        if not bool(torch.isfinite(prompts).all()):
            raise PoolError(f"{info.path}: prompts hold NaN or infinite values", param="path")
        return cls(info, prompts)


def read_pool_info(path: str | Path) -> PoolInfo:
    """Names, fingerprint and shape of a pool file; PoolError for anything malformed."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise PoolError(f"pool file {p} does not exist", param="path")
    try:
        with safe_open(str(p), framework="np") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            if _TENSOR not in keys:
                raise PoolError(f"{p}: no tensor {_TENSOR!r} (found {keys})", param="path")
            shape = tuple(int(s) for s in f.get_slice(_TENSOR).get_shape())
    except SafetensorError as exc:
        raise PoolError(f"{p}: not a safetensors file ({exc})", param="path") from exc
    except OSError as exc:
        raise PoolError(f"{p}: cannot read ({exc})", param="path") from exc
    if len(shape) != 3 or min(shape) < 1:
        raise PoolError(f"{p}: {_TENSOR!r} must have shape (m, n, d) with every size >= 1, got {shape}",
                        param="path")
    try:
        names = json.loads(meta.get("names", ""))
    except json.JSONDecodeError as exc:
        raise PoolError(f"{p}: metadata 'names' is not a JSON list ({exc})", param="path") from exc
    _check_names(names, shape[0], p)
    fingerprint = meta.get("fingerprint")
    if not fingerprint:
        raise PoolError(f"{p}: metadata has no model 'fingerprint'", param="path")
    return PoolInfo(p, tuple(names), fingerprint, (shape[0], shape[1], shape[2]))


def _check_names(names: Any, m: int, where: Path | str) -> None:
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise PoolError(f"{where}: 'names' must be a list of non-empty strings", param="path")
    if len(names) != m:
        raise PoolError(f"{where}: {len(names)} names for {m} prompts", param="path")
    if len(set(names)) != len(names):
        raise PoolError(f"{where}: names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}",
                        param="path")


def save_pool(path: str | Path, prompts: Any, names: Sequence[str], fingerprint: str) -> Path:
    """Write PROMPTS (m, n, d; a torch tensor or numpy array) with their names and the model fingerprint."""
    from safetensors.numpy import save_file

    if hasattr(prompts, "detach"):
        prompts = prompts.detach().float().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(prompts, dtype=np.float32))  # (m, n, d)
    if arr.ndim != 3:
        raise PoolError(f"prompts must be (m, n, d), got shape {arr.shape}", param="prompts")
    _check_names(list(names), arr.shape[0], "pool")
    if not fingerprint:
        raise PoolError("a pool needs the model's fingerprint", param="fingerprint")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "names": json.dumps(list(names)), "fingerprint": fingerprint}
    save_file({_TENSOR: arr}, str(out), metadata=meta)
    return out
