"""Compressor input errors (ValueError subclasses naming the offending parameter) and shared validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["CompressorError", "decode_text", "validate_common"]


class CompressorError(ValueError):
    """Bad compressor input; `param` names the offending parameter (the gateway maps it to a 400)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def decode_text(data: bytes | bytearray | str, param: str = "context") -> str:
    """Text from bytes (strict UTF-8) or str; invalid UTF-8 raises CompressorError."""
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CompressorError(param, f"invalid UTF-8 at byte {exc.start}") from None


def validate_common(
    context: Any, rate: Any, target_token: Any, force_tokens: Any, max_force: int = 100
) -> list[str]:
    """Check the options shared by every mode; returns the contexts as a list of str."""
    if isinstance(context, (str, bytes, bytearray)):
        contexts = [decode_text(context)]
    elif isinstance(context, Sequence) and not isinstance(context, (str, bytes)):
        contexts = []
        for i, c in enumerate(context):
            if isinstance(c, (bytes, bytearray)):
                contexts.append(decode_text(c, f"context[{i}]"))
            elif isinstance(c, str):
                contexts.append(c)
            else:
                raise CompressorError(f"context[{i}]", f"must be text, got {type(c).__name__}")
    else:
        raise CompressorError("context", f"must be text or a list of texts, got {type(context).__name__}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate) or not 0 < rate <= 1:
        raise CompressorError("rate", f"must be in (0, 1], got {rate!r}")
    if target_token is not None and target_token != -1:
        if (
            isinstance(target_token, bool)
            or not isinstance(target_token, (int, float))
            or not target_token > 0
        ):
            raise CompressorError(
                "target_token", f"must be a positive number of tokens, got {target_token!r}"
            )
    if not isinstance(force_tokens, Sequence) or isinstance(force_tokens, str):
        raise CompressorError("force_tokens", "must be a list of strings")
    if len(force_tokens) > max_force:
        raise CompressorError("force_tokens", f"at most {max_force} force tokens, got {len(force_tokens)}")
    for t in force_tokens:
        if not isinstance(t, str) or not t:
            raise CompressorError("force_tokens", f"each force token must be a non-empty string, got {t!r}")
    return contexts
