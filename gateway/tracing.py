"""Optional OpenTelemetry spans: a no-op unless `otel: true` and opentelemetry-api is installed."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["Tracer"]

logger = logging.getLogger(__name__)


class Tracer:
    """``with tracer.span("promptwire.generate", {...}):`` — costs one attribute check when off."""

    def __init__(self, enabled: bool) -> None:
        self._tracer: Any = None
        if not enabled:
            return
        try:
            from opentelemetry import trace
        except ImportError:
            logger.warning("otel: true, but opentelemetry is not installed (pip install 'promptwire[otel]'); "
                           "tracing is off")
            return
        self._tracer = trace.get_tracer("promptwire.gateway")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[Any]:
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(name, attributes=dict(attributes)) as span:
            yield span
