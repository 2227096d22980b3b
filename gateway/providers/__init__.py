"""Providers: backends that generate text, by config name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.providers.base import Provider, ProviderFactory
from gateway.providers.openai import OpenAIProvider

if TYPE_CHECKING:
    from gateway.config import BackendConfig
    from gateway.observe.metrics import Metrics

__all__ = ["PROVIDERS", "Provider", "ProviderFactory"]


def _local(name: str, config: BackendConfig, metrics: Metrics | None) -> Provider:
    # Imported on use: it pulls in torch and transformers, which a pure proxy never needs.
    from gateway.providers.local import LocalProvider

    return LocalProvider(name, config, metrics)


PROVIDERS: dict[str, ProviderFactory] = {
    "openai": OpenAIProvider,
    "local": _local,
}
"""Provider type (``backends.<name>.type`` in config) -> factory."""
