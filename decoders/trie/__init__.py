"""The ``trie`` decoder: output restricted to labels from a list; importing this package does not import torch.

``build`` (the gateway table's ``decoders.trie:build``) loads the torch-side modules on first use;
``decoders.trie.labels`` holds the option rules the upstream choice mapping shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from decoders.trie.labels import OPTIONS, LabelSpec, TrieLabelError, TrieOptions, normalize_labels

if TYPE_CHECKING:
    from decoders.processor import DecoderContext, Processor

__all__ = ["OPTIONS", "LabelSpec", "TrieLabelError", "TrieOptions", "build", "normalize_labels"]


def build(options: Mapping[str, Any], ctx: DecoderContext) -> Processor:
    """One request's trie processor (see :func:`decoders.trie.processor.build`)."""
    from decoders.trie.processor import build as build_trie

    return build_trie(options, ctx)
