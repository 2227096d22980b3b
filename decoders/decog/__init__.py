"""Deco-G: output formats guaranteed by a token DFA and steered by an HMM distilled from the LLM.

Importing this package does not import torch: ``build`` (the gateway table's ``decoders.decog:build``)
loads the torch side on first use. Modules: ``hmm`` (the model and its files), ``em`` (Baum-Welch),
``distill`` (sampling from the LLM, k-means initialisation), ``table`` (the backward table), ``steer``
(the per-request processors), ``processor`` (options, caching, the factory).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from decoders.processor import DecoderContext, Processor

__all__ = ["build", "prepare"]


def build(options: Mapping[str, Any], ctx: DecoderContext) -> Processor:
    """One request's decog processor (see :func:`decoders.decog.processor.build`)."""
    from decoders.decog.processor import build as build_decog

    return build_decog(options, ctx)


def prepare(section: Mapping[str, Any], ctx: DecoderContext) -> Any:
    """Load ``decoders.decog`` (the HMMs) for one model at start (see :func:`decoders.decog.processor.prepare`)."""
    from decoders.decog.processor import prepare as prepare_decog

    return prepare_decog(section, ctx)
