"""Decoders by name: the one table clients choose from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from decoders.processors import trie
from decoders.processors.base import DecoderContext, DecoderOptionError, Processor, ProcessorFactory

__all__ = ["DECODERS", "DecoderContext", "DecoderOptionError", "Processor", "ProcessorFactory", "build_processor"]

DECODERS: dict[str, ProcessorFactory] = {
    "trie": trie.build,
}
"""Registered decoder names -> factories. Add an entry here; nothing registers itself on import."""


def build_processor(name: str, options: Mapping[str, Any], ctx: DecoderContext) -> Processor:
    """Look up ``name`` in DECODERS and build the request's processor; unknown names are rejected."""
    factory = DECODERS.get(name)
    if factory is None:
        known = ", ".join(sorted(DECODERS)) or "none"
        raise DecoderOptionError(f"unknown decoder {name!r} (registered: {known})", "promptwire.decoder.name")
    return factory(options, ctx)
