"""Providers: backends that generate text, by config name."""

from __future__ import annotations

from gateway.providers.base import Provider, ProviderFactory
from gateway.providers.openai import OpenAIProvider

__all__ = ["PROVIDERS", "Provider", "ProviderFactory"]

PROVIDERS: dict[str, ProviderFactory] = {
    "openai": OpenAIProvider,
}
"""Provider type (``backends.<name>.type`` in config) -> factory. The local provider joins here."""
