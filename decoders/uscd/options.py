"""USCD's client options and their rules, torch-free: names, defaults, ranges, errors naming the option."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from decoders.processor import DecoderOptionError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MEASURES",
    "MODES",
    "OPTIONS",
    "Measure",
    "Mode",
    "UscdOptionError",
    "UscdOptions",
]

Mode = Literal["prob", "log"]
Measure = Literal["std", "entropy", "top1"]
MODES: tuple[Mode, ...] = ("prob", "log")
MEASURES: tuple[Measure, ...] = ("std", "entropy", "top1")
OPTIONS = frozenset({"alpha", "mode", "measure", "threshold", "lazy", "plausibility", "lame_prompt"})
"""USCD's client options (besides ``name``), exactly as issue 17 names them."""

DEFAULT_THRESHOLDS: dict[Measure, float] = {
    # the paper's value: contrast when the std of p is at most 0.005. It depends on the vocabulary:
    # std ~ sqrt(sum p^2 / V), so 0.005 means sum p^2 <= 0.8 at V = 32k (CodeLlama) but never skips at V >= 40k
    "std": 0.005,
    # contrast when H(p) / log V >= 0.05, about 0.5 nats at V = 32k: a step whose best token holds ~90% of the
    # mass with the rest spread over a few dozen alternatives; scaled by log V, it means the same at any V
    "entropy": 0.05,
    # contrast when max p <= 0.9: where the paper's std rule sits at V = 32k (sum p^2 <= 0.8 with one dominant
    # token); a probability, so it means the same at any V
    "top1": 0.9,
}

_P = "promptwire.decoder."


class UscdOptionError(DecoderOptionError):
    """A bad USCD option; ``param`` names it (``promptwire.decoder.<option>``)."""


def _number(options: Mapping[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UscdOptionError(f"{name} must be a finite number, got {value!r}", _P + name)
    return float(value)


@dataclass(frozen=True)
class UscdOptions:
    """USCD's options, validated (see ``docs/decoding.md``)."""

    alpha: float = 0.7
    """Contrast strength α >= 0 (the paper's 0.7)."""
    mode: Mode = "prob"
    """``prob``: log(p - α·p_lame) (the paper's); ``log``: (1+α)·log p - α·log p_lame on plausible tokens."""
    measure: Measure = "std"
    """The main stream's uncertainty: ``std`` of p, normalised ``entropy`` H(p)/log V, or ``top1`` = max p."""
    threshold: float = DEFAULT_THRESHOLDS["std"]
    """Contrast when std <= t, entropy >= t, or top1 <= t."""
    lazy: bool = False
    """Run the lame stream's forward only on contrasted steps (catching up over the skipped tokens)."""
    plausibility: float = 0.1
    """``log`` mode: only tokens with p >= plausibility·max p stay candidates."""
    lame_prompt: str | tuple[int, ...] | None = None
    """Client-given lame prompt: text (tokenised as the main prompt is) or token ids (used as they are)."""

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> UscdOptions:
        """Validate the client's decoder object (``name`` may be present); raises :class:`UscdOptionError`."""
        unknown = sorted(set(options) - OPTIONS - {"name"})
        if unknown:
            raise UscdOptionError(f"unknown uscd option {unknown[0]!r}", _P + unknown[0])
        alpha = _number(options, "alpha", cls.alpha)
        if alpha < 0:
            raise UscdOptionError(f"alpha must be >= 0, got {alpha!r}", _P + "alpha")
        mode = options.get("mode", "prob")
        if mode not in MODES:
            raise UscdOptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", _P + "mode")
        measure = options.get("measure", "std")
        if measure not in MEASURES:
            raise UscdOptionError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}", _P + "measure")
        threshold = _number(options, "threshold", DEFAULT_THRESHOLDS[measure])
        if threshold < 0 or (measure != "std" and threshold > 1):
            span = "[0, 1]" if measure != "std" else ">= 0"
            raise UscdOptionError(f"threshold for measure {measure} must be {span}, got {threshold!r}",
                                  _P + "threshold")
        lazy = options.get("lazy", False)
        if lazy is None:
            lazy = False
        if not isinstance(lazy, bool):
            raise UscdOptionError(f"lazy must be true or false, got {lazy!r}", _P + "lazy")
        plausibility = _number(options, "plausibility", cls.plausibility)
        if not 0 <= plausibility <= 1:
            raise UscdOptionError(f"plausibility must be in [0, 1], got {plausibility!r}", _P + "plausibility")
        return cls(alpha, mode, measure, threshold, lazy, plausibility, _lame(options.get("lame_prompt")))


def _lame(value: Any) -> str | tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise UscdOptionError("lame_prompt must not be empty", _P + "lame_prompt")
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return tuple(value)
    raise UscdOptionError("lame_prompt must be a non-empty string or a non-empty list of token ids", _P + "lame_prompt")
