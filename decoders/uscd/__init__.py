"""The ``uscd`` decoder (uncertainty-aware selective contrastive decoding); importing it does not import torch.

``build`` (the gateway table's ``decoders.uscd:build``) loads the torch side on first use; ``options`` and
``lame`` (option rules, lame-prompt rules) are torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from decoders.uscd.lame import LamePrompt, build_lame_prompt
from decoders.uscd.options import DEFAULT_THRESHOLDS, OPTIONS, UscdOptionError, UscdOptions

if TYPE_CHECKING:
    from decoders.processor import DecoderContext, Processor

__all__ = ["DEFAULT_THRESHOLDS", "OPTIONS", "LamePrompt", "UscdOptionError", "UscdOptions", "build",
           "build_lame_prompt"]


def build(options: Mapping[str, Any], ctx: DecoderContext) -> Processor:
    """One request's USCD processor (see :func:`decoders.uscd.processor.build`)."""
    from decoders.uscd.processor import build as build_uscd

    return build_uscd(options, ctx)
