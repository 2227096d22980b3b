"""The engine's batched KV cache: left-padded rows that join and leave between decode steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["BatchCache"]


class BatchCache:
    """A transformers ``DynamicCache`` whose rows are independent sequences, left-padded to one length.

    Alongside the cache it keeps the attention mask (1 = real token, 0 = padding) and each row's next
    position id, so padding never shifts positions: a row decodes exactly as it would alone.
    Rows are appended after their own (unpadded) prefill and removed with ``keep``.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._reset()

    def _reset(self) -> None:
        self.cache: Any = None  # DynamicCache, or None while the batch is empty
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # (B, L)
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)  # (B,) next position id per row

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Extend the mask by one real column; return (attention_mask (B, L+1), position_ids (B, 1))."""
        ones = torch.ones(self.rows, 1, dtype=torch.long, device=self.device)  # (B, 1)
        self.mask = torch.cat([self.mask, ones], dim=1)  # (B, L+1)
        position_ids = self.positions[:, None].clone()  # (B, 1)
        self.positions = self.positions + 1
        return self.mask, position_ids

    def append(self, caches: Sequence[Any], lengths: Sequence[int]) -> None:
        """Add freshly prefilled single-row caches (each (1, H, T_i, D) per layer) as new rows."""
        if not caches:
            return
        target = max([self.length, *lengths])
        parts = ([self.cache] if self.cache is not None else []) + list(caches)
        pads = ([target - self.length] if self.cache is not None else []) + [target - n for n in lengths]
        base = parts[0]
        if any(getattr(layer, "is_sliding", False) for layer in base.layers):
            # sliding-window layers keep a rolling buffer whose offsets padding would break
            raise NotImplementedError("the engine supports full-attention KV caches only (no sliding window)")
        for li, layer in enumerate(base.layers):
            keys = [_pad_left(p.layers[li].keys, n) for p, n in zip(parts, pads, strict=True)]
            values = [_pad_left(p.layers[li].values, n) for p, n in zip(parts, pads, strict=True)]
            layer.keys = torch.cat(keys, dim=0)  # (B', H, L', D)
            layer.values = torch.cat(values, dim=0)  # (B', H, L', D)
        new_mask = [F.pad(torch.ones(1, n, dtype=torch.long, device=self.device), (target - n, 0)) for n in lengths]
        old_mask = [F.pad(self.mask, (target - self.length, 0))] if self.cache is not None else []
        self.mask = torch.cat(old_mask + new_mask, dim=0)  # (B', L')
        self.positions = torch.cat([self.positions, torch.tensor(list(lengths), dtype=torch.long, device=self.device)])  # (B',)
        self.cache = base

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order), then drop leading columns that are padding in every row."""
        if not rows:
            self._reset()
            return
        index = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        self.mask = self.mask.index_select(0, index)  # (B', L)
        self.positions = self.positions.index_select(0, index)  # (B',)
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0, 0]) if used.numel() else 0
        self.mask = self.mask[:, start:]  # (B', L')
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]  # (B', H, L', D)
            layer.values = layer.values.index_select(0, index)[:, :, start:]  # (B', H, L', D)


def _pad_left(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, n + T, D) with zeros in front."""
    return F.pad(x, (0, 0, n, 0)) if n else x
