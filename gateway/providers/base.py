"""The Provider protocol: what the core needs from a backend that generates text."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gateway.types import Completion, GatewayRequest, ModelInfo, StreamChunk

if TYPE_CHECKING:
    from gateway.config.schema import AnyBackend
    from gateway.observe.metrics import Metrics

__all__ = ["Provider", "ProviderFactory"]


@runtime_checkable
class Provider(Protocol):
    """A backend serving one or more models.

    Errors are raised as gateway.errors types (UpstreamError, UpstreamStatusError, RequestTimeout,
    NoBackend, InvalidRequest); never a third-party exception.
    """

    name: str
    """The backend's name in config (``backends.<name>``)."""
    decoders: frozenset[str]
    """Decoder names (``promptwire.decoder.name``) this provider can honour; empty for plain upstreams."""

    async def generate(self, req: GatewayRequest) -> Completion:
        """One whole response."""
        ...

    def generate_stream(self, req: GatewayRequest) -> AsyncIterator[StreamChunk]:
        """Chunks as they come. Connecting (and retrying) happens on the first ``__anext__``; once a
        chunk has been yielded nothing is retried and a failure raises UpstreamError. Closing the
        iterator (``aclose``) closes the upstream request at once."""
        ...

    async def list_models(self) -> list[ModelInfo]:
        """Models this backend serves (configured, or discovered from the upstream)."""
        ...

    async def ready(self) -> bool:
        """True when the backend can take requests (upstream reachable / model loaded)."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections / models."""
        ...


# A provider that serves a model in-process (the local provider) also implements ModelAccess
# (gateway.stages.base): model-bound stages (IDP) use that model through it, and only such a
# provider accepts ``GatewayRequest.soft_prompt``.


ProviderFactory = Callable[["str", "AnyBackend", "Metrics | None"], Provider]
"""``factory(backend_name, backend_config, metrics) -> Provider`` (``backends.<name>`` from the config)."""
