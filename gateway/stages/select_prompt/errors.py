"""Errors of the select_prompt library parts; each carries ``param`` (the option, flag or key at fault)."""

from __future__ import annotations

__all__ = ["SelectPromptError"]


class SelectPromptError(ValueError):
    """Base of the pool, encoder and training errors; the stage maps it to InvalidRequest / config errors."""

    default_param = "path"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param or self.default_param
