"""Providers: backends that generate text, by config type (``backends.<name>.type``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import ConfigError
from gateway.config.schema import AnyBackend, LocalBackendConfig, OpenAIBackendConfig
from gateway.providers.base import Provider, ProviderFactory
from gateway.providers.openai import OpenAIProvider

if TYPE_CHECKING:
    from gateway.observe.metrics import Metrics

__all__ = ["LOCAL_EXTRA_MODULES", "PROVIDERS", "Provider", "ProviderFactory"]

LOCAL_EXTRA_MODULES = frozenset({"torch", "transformers", "sentencepiece", "sacremoses", "onnx", "onnx_ir"})
"""Top-level modules of the `local` extra: importing one of them fails on a proxy-only install."""


def _openai(name: str, config: AnyBackend, metrics: Metrics | None) -> Provider:
    assert isinstance(config, OpenAIBackendConfig)  # the config's type field chose this factory
    return OpenAIProvider(name, config, metrics)


def _local(name: str, config: AnyBackend, metrics: Metrics | None) -> Provider:
    assert isinstance(config, LocalBackendConfig)
    # Imported on use: it pulls in torch and transformers, which a pure proxy never needs.
    try:
        from gateway.providers.local import LocalProvider
    except ModuleNotFoundError as e:
        if e.name not in LOCAL_EXTRA_MODULES:
            raise
        raise ConfigError(f"backends.{name}: type local needs {e.name}, which the proxy-only install leaves "
                          "out: pip install 'promptwire[local]'") from None

    return LocalProvider(name, config, metrics)


PROVIDERS: dict[str, ProviderFactory] = {
    "openai": _openai,
    "local": _local,
}
"""Provider type (``backends.<name>.type`` in config) -> factory."""
