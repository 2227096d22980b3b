"""The base of every config class: unknown keys are errors, values are frozen once validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ConfigError", "Strict"]


class ConfigError(Exception):
    """The configuration is invalid; the message names the file, the key path and the reason."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
