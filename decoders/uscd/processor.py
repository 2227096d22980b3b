"""USCD's processor: gate each step on the main stream's uncertainty, contrast with the lame stream when unsure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from decoders.processor import AuxStream, DecoderContext, Processor
from decoders.uscd.lame import LamePrompt, build_lame_prompt
from decoders.uscd.options import Measure, Mode, UscdOptions

__all__ = ["UscdProcessor", "build", "contrast", "uncertain"]


def uncertain(p: torch.Tensor, measure: Measure, threshold: float) -> bool:
    """Whether the next-token distribution p (V,) is uncertain enough to contrast."""
    if measure == "std":
        return float(torch.std(p)) <= threshold  # the paper's: a flat p has a small std
    if measure == "entropy":
        return float(torch.special.entr(p).sum()) / math.log(p.shape[-1]) >= threshold
    return float(p.max()) <= threshold  # top1


def contrast(logits: torch.Tensor, lame_logits: torch.Tensor, mode: Mode, alpha: float,
             plausibility: float) -> torch.Tensor | None:
    """Contrasted scores (V,) from the main and lame logits (V,), or None when nothing survives.

    ``prob`` (the paper's): log(p - α·p_lame), -inf where that is <= 0. ``log``: (1+α)·log p - α·log p_lame
    over the plausible tokens (p >= plausibility·max p), -inf elsewhere."""
    if mode == "prob":
        diff = torch.softmax(logits, -1) - alpha * torch.softmax(lame_logits, -1)  # (V,)
        keep = diff > 0  # (V,)
        if not bool(keep.any()):
            return None  # alpha >= 1 can leave no token
        return torch.log(diff.clamp_min(torch.finfo(diff.dtype).tiny)).masked_fill(~keep, -math.inf)
    lp = torch.log_softmax(logits, -1)  # (V,)
    out = (1 + alpha) * lp - alpha * torch.log_softmax(lame_logits, -1)  # (V,)
    if plausibility > 0:
        out = out.masked_fill(lp < lp.max() + math.log(plausibility), -math.inf)
    return out


class UscdProcessor(Processor):
    """One request's USCD: the lame prompt as the engine's auxiliary stream, on the same generated prefix."""

    def __init__(self, options: UscdOptions, lame: LamePrompt) -> None:
        self.options = options
        self.lame = lame
        self.aux_lazy = options.lazy
        self.steps = 0
        self.contrasted = 0
        self.empty = 0  # contrasted steps where no token survived (prob mode, alpha >= 1): left plain
        self.lame_forwards = 0

    def aux_prompt_ids(self) -> tuple[int, ...]:
        return self.lame.ids

    def process(self, logits: torch.Tensor, aux: AuxStream | None) -> torch.Tensor:
        assert aux is not None, "the engine runs the lame prompt as this processor's auxiliary stream"
        o = self.options
        self.steps += 1
        if uncertain(torch.softmax(logits, -1), o.measure, o.threshold):
            self.contrasted += 1
            out = contrast(logits, aux.logits(), o.mode, o.alpha, o.plausibility)
            if out is None:
                self.empty += 1
            else:
                logits = out
        self.lame_forwards = aux.forwards
        return logits

    def stats(self) -> Mapping[str, Any]:
        out: dict[str, Any] = {
            "contrasted_steps": self.contrasted,
            "total_steps": self.steps,
            "contrasted_fraction": round(self.contrasted / self.steps, 4) if self.steps else 0.0,
            "lame_prompt_rule": self.lame.rule,
            "lame_prompt_tokens": len(self.lame.ids),
            "lame_tokens_removed": self.lame.removed_tokens,
            "lame_forwards": self.lame_forwards,
            "lazy": self.options.lazy,
        }
        if self.empty:
            out["empty_contrasts"] = self.empty
        return out


def build(options: Mapping[str, Any], ctx: DecoderContext) -> UscdProcessor:
    """USCD's factory: options ``alpha``, ``mode``, ``measure``, ``threshold``, ``lazy``, ``plausibility``,
    ``lame_prompt`` (see ``docs/decoding.md``); :class:`~decoders.uscd.options.UscdOptionError` if bad."""
    opts = UscdOptions.parse(options)
    return UscdProcessor(opts, build_lame_prompt(opts, ctx))
