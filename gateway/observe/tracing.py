"""OpenTelemetry tracing: off by default, and free when off.

With ``otel: true`` and the ``[otel]`` extra installed the gateway traces every generation request:

- ``promptwire.generate`` (kind SERVER): the root span of one request, a child of the client's W3C
  ``traceparent`` when the front end passes it. Attributes: ``promptwire.request_id``,
  ``promptwire.kind``, ``promptwire.stream``, ``gen_ai.operation.name``, ``gen_ai.request.model``,
  ``promptwire.overhead_ms``, ``promptwire.ttft_ms`` (streams), ``gen_ai.usage.input_tokens`` /
  ``output_tokens``, ``gen_ai.response.finish_reasons``, ``promptwire.outcome`` (ok | error |
  cancelled) and, on failure, ``error.type`` and ``promptwire.http_status``;
- ``promptwire.stage.<name>``: one child per stage run, with its token counts, time and choice;
- ``promptwire.upstream`` (kind CLIENT): one child per backend attempt (failover makes several), from
  sending the request to the whole response, or for a stream to its end (event ``first_chunk``).
  The provider sends the attempt's context upstream as ``traceparent`` (see :func:`inject`).

The tracer provider: the process's own when one is already installed (``opentelemetry-instrument``),
else one built here from the standard environment: a Resource (``OTEL_SERVICE_NAME`` /
``OTEL_RESOURCE_ATTRIBUTES``; service.name defaults to "promptwire"), ``OTEL_TRACES_SAMPLER``, and one
BatchSpanProcessor per exporter named in ``OTEL_TRACES_EXPORTER`` (``otlp`` (the default), ``console``,
``none``; comma-separated). The OTLP exporter reads ``OTEL_EXPORTER_OTLP_*`` itself. A provider built
here is flushed and shut down when the gateway closes.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.errors import PromptwireError

if TYPE_CHECKING:
    from gateway.stages.base import Stage, StageResult
    from gateway.types import Completion, GatewayRequest, StageStats, StreamChunk, Usage

__all__ = ["RequestTrace", "Tracer", "inject"]

logger = logging.getLogger(__name__)

# Filled the first time a Tracer turns on (opentelemetry is imported only then).
_otel: Any = None
"""The opentelemetry modules and names this module uses, or None while no Tracer is on."""


def inject(headers: list[tuple[bytes, bytes]]) -> None:
    """Append the current span's trace context (W3C ``traceparent`` / ``tracestate``; another format if
    ``OTEL_PROPAGATORS`` says so) to an upstream request's headers. One global read when tracing is off."""
    if _otel is not None:
        _inject(headers)


def _inject(headers: list[tuple[bytes, bytes]]) -> None:
    carrier: dict[str, str] = {}
    _otel.propagate.inject(carrier)
    for k, v in carrier.items():
        if v.isprintable():  # never CR/LF into a request head
            headers.append((k.encode("latin-1", "replace"), v.encode("latin-1", "replace")))


class _Otel:
    """The opentelemetry names used per request, imported once."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.context = context
        self.propagate = propagate
        self.trace = trace
        self.w3c = TraceContextTextMapPropagator()
        self.SERVER = trace.SpanKind.SERVER
        self.CLIENT = trace.SpanKind.CLIENT
        self.OK = trace.Status(trace.StatusCode.OK)
        self.Status = trace.Status
        self.ERROR = trace.StatusCode.ERROR


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("promptwire")
    except PackageNotFoundError:
        return "0"


def _exporters() -> list[Any]:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names (default otlp); a missing one is a warning."""
    out: list[Any] = []
    names = os.environ.get("OTEL_TRACES_EXPORTER") or "otlp"
    for name in (n.strip().lower() for n in names.split(",")):
        if not name or name == "none":
            continue
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
            kind = "grpc" if protocol == "grpc" else "http"
            package = f"opentelemetry-exporter-otlp-proto-{kind}"
            try:
                module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{kind}.trace_exporter")
            except ImportError:
                logger.warning(
                    "otel: OTEL_TRACES_EXPORTER=otlp (the default), but %s is not installed (pip install %s); "
                    "spans are recorded and trace context is propagated, but no spans are exported (set "
                    "OTEL_TRACES_EXPORTER=console or none to silence this)", package, package,
                )
                continue
            out.append(module.OTLPSpanExporter())
        else:
            logger.warning("otel: OTEL_TRACES_EXPORTER names %r, which promptwire does not know (otlp, console, "
                           "none); ignored", name)
    return out


def _build_provider() -> Any:
    """A TracerProvider from the standard OTEL_* environment (raises ImportError without the SDK)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    env = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME and the SDK's own attributes
    attrs = dict(env.attributes)
    if str(attrs.get("service.name", "")).startswith("unknown_service"):
        attrs["service.name"] = "promptwire"
    attrs.setdefault("service.version", _version())
    provider = TracerProvider(resource=Resource(attrs, env.schema_url))
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


_TRACE_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate",
                  "traceparent": "traceparent", "tracestate": "tracestate"}


def _trace_carrier(headers: Iterable[tuple[Any, Any]]) -> dict[str, str]:
    """``traceparent`` / ``tracestate`` from ASGI headers (lower-case bytes) or gRPC metadata (str)."""
    out: dict[str, str] = {}
    for k, v in headers:
        name = _TRACE_HEADERS.get(k)
        if name is not None:
            out[name] = v.decode("latin-1") if isinstance(v, bytes) else str(v)
    return out


def _fail(span: Any, e: BaseException) -> str:
    """Mark a span failed by ``e``; returns the outcome (error or cancelled)."""
    if isinstance(e, PromptwireError):
        span.set_attribute("error.type", e.code or type(e).__name__)
        span.set_attribute("promptwire.http_status", e.http_status)
        span.set_status(_otel.Status(_otel.ERROR, e.message))
        return "error"
    if isinstance(e, Exception):
        span.record_exception(e)
        span.set_attribute("error.type", type(e).__qualname__)
        span.set_status(_otel.Status(_otel.ERROR, f"{type(e).__name__}: {e}"))
        return "error"
    span.set_attribute("error.type", "cancelled")  # client gone or time limit; status left unset
    return "cancelled"


class Tracer:
    """The gateway's tracer. ``enabled`` is a plain attribute: the core checks it (or whether it got a
    RequestTrace) and does nothing else when tracing is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = False
        self.provider: Any = None
        """The TracerProvider spans go to (None when off); tests add an in-memory span processor to it."""
        self._owned = False
        self._tracer: Any = None
        if enabled:
            self._start()

    def _start(self) -> None:
        global _otel
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            logger.warning("otel: true, but OTEL_SDK_DISABLED=true; tracing is off")
            return
        try:
            otel = _otel or _Otel()
        except ImportError:
            logger.warning("otel: true, but opentelemetry is not installed (pip install 'promptwire[otel]'); "
                           "tracing is off")
            return
        provider = otel.trace.get_tracer_provider()
        if isinstance(provider, otel.trace.ProxyTracerProvider | otel.trace.NoOpTracerProvider):
            try:
                provider = _build_provider()
            except ImportError:
                logger.warning("otel: true, but opentelemetry-sdk is not installed (pip install "
                               "'promptwire[otel]'); tracing is off")
                return
            self._owned = True
        else:
            logger.info("otel: using the tracer provider this process already installed")
        _otel = otel
        self.provider = provider
        self._tracer = provider.get_tracer("promptwire.gateway", _version())
        self.enabled = True

    def request(self, req: GatewayRequest, trace_headers: Iterable[tuple[Any, Any]] | None) -> RequestTrace:
        """Start the root span of one generation request (call only when ``enabled``).

        ``trace_headers``: the client's request headers (ASGI ``scope["headers"]``) or gRPC invocation
        metadata; its ``traceparent`` / ``tracestate`` make the root span a child of the client's span.
        Without them the root is a child of the current span, if any (an instrumented server's)."""
        parent = None
        if trace_headers is not None:
            carrier = _trace_carrier(trace_headers)
            if "traceparent" in carrier:
                parent = _otel.w3c.extract(carrier)
        kind = req.kind
        root = self._tracer.start_span(
            "promptwire.generate",
            context=parent,
            kind=_otel.SERVER,
            attributes={
                "promptwire.request_id": req.request_id,
                "promptwire.kind": kind,
                "promptwire.stream": req.stream,
                "gen_ai.operation.name": "chat" if kind == "chat" else "text_completion",
                "gen_ai.request.model": req.model,
            },
        )
        return RequestTrace(self._tracer, root, _otel.trace.set_span_in_context(root, parent))

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[Any]:
        """``with tracer.span(name, {...})``: a span under the current one; yields None when off."""
        if not self.enabled:
            yield None
            return
        with self._tracer.start_as_current_span(name, attributes=dict(attributes)) as span:
            yield span

    def shutdown(self) -> None:
        """Flush and stop a provider built here (blocks while the exporters flush); idempotent."""
        if self._owned and self.provider is not None:
            self._owned = False
            self.provider.shutdown()


class _Upstream:
    """``with trace.upstream(...)``: one backend attempt's span, current (so :func:`inject` sends it)
    while the provider sends the request."""

    __slots__ = ("_stream", "_token", "_trace", "span")

    def __init__(self, trace: RequestTrace, backend: str, model: str, stream: bool) -> None:
        self._trace = trace
        self._stream = stream
        self.span = trace._otel.start_span(
            "promptwire.upstream",
            context=trace._ctx,
            kind=_otel.CLIENT,
            attributes={"promptwire.backend": backend, "gen_ai.request.model": model},
        )
        self._token: Any = None

    def __enter__(self) -> None:
        self._token = _otel.context.attach(_otel.trace.set_span_in_context(self.span, self._trace._ctx))

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        _otel.context.detach(self._token)
        span = self.span
        if self._stream and (e is None or isinstance(e, StopAsyncIteration)):
            span.add_event("first_chunk" if e is None else "empty_stream")
            self._trace._upstream = span  # ends with the stream
        elif e is None:
            span.set_status(_otel.OK)
            span.end()
        else:
            _fail(span, e)
            span.end()


class RequestTrace:
    """The spans of one generation request (made by :meth:`Tracer.request`)."""

    __slots__ = ("_ctx", "_ended", "_error", "_finish", "_otel", "_root", "_upstream")

    def __init__(self, otel_tracer: Any, root: Any, ctx: Any) -> None:
        self._otel = otel_tracer
        self._root = root
        self._ctx = ctx
        self._upstream: Any = None
        self._finish: list[str] = []
        self._error: BaseException | None = None
        self._ended = False

    @property
    def span(self) -> Any:
        """The root span."""
        return self._root

    async def stage(self, stage: Stage, req: GatewayRequest, opts: Any) -> StageResult:
        """``stage.apply(req, opts)`` in a ``promptwire.stage.<name>`` span."""
        with self._otel.start_as_current_span(
            f"promptwire.stage.{stage.name}", context=self._ctx, record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await stage.apply(req, opts)
            except BaseException as e:
                _fail(span, e)
                raise
            st = result.stats
            if span.is_recording():
                span.set_attribute("promptwire.stage.ms", st.ms)
                if result.settle is None:  # else the counts come later, as an event (settled)
                    span.set_attributes({
                        "promptwire.stage.tokens_before": st.tokens_before,
                        "promptwire.stage.tokens_after": st.tokens_after,
                        "promptwire.stage.tokens_saved": st.tokens_saved,
                    })
                if st.choice is not None:
                    span.set_attribute("promptwire.stage.choice", st.choice)
            return result

    def settled(self, st: StageStats) -> None:
        """A stage's stats completed off the request path (``StageResult.settle``): an event on the root span
        (its own span has ended by then)."""
        if self._root.is_recording():
            self._root.add_event(f"promptwire.stage.{st.stage}.stats", {
                "promptwire.stage.tokens_before": st.tokens_before,
                "promptwire.stage.tokens_after": st.tokens_after,
                "promptwire.stage.tokens_saved": st.tokens_saved,
            })

    def upstream(self, backend: str, model: str, *, stream: bool) -> _Upstream:
        """A context manager around one backend attempt (for a stream: until its first chunk; the span
        then stays open until :meth:`end_stream`)."""
        return _Upstream(self, backend, model, stream)

    def end(self, completion: Completion, overhead_ms: float) -> None:
        """A whole response was returned."""
        root = self._root
        if root.is_recording():
            choices = completion.body.get("choices")
            if isinstance(choices, list):
                self._finish = [str(c["finish_reason"]) for c in choices
                                if isinstance(c, dict) and c.get("finish_reason")]
            root.set_attribute("promptwire.overhead_ms", overhead_ms)
        self._close(completion.usage, None)

    def opened(self, overhead_ms: float, ttft_ms: float) -> None:
        """A stream started (its first chunk is in hand)."""
        self._root.set_attributes({"promptwire.overhead_ms": overhead_ms, "promptwire.ttft_ms": ttft_ms})

    def chunk(self, chunk: StreamChunk) -> None:
        """Note a streamed chunk's finish reasons (parses only chunks that carry one)."""
        raw = chunk.raw
        if raw is not None and b'"finish_reason":"' not in raw and b'"finish_reason": "' not in raw:
            return
        try:
            choices = chunk.data.get("choices")
        except ValueError:
            return
        for c in choices if isinstance(choices, list) else ():
            if isinstance(c, dict) and c.get("finish_reason"):
                self._finish.append(str(c["finish_reason"]))

    def stream_error(self, e: BaseException) -> None:
        """The stream failed after it started."""
        self._error = e

    def end_stream(self, ok: bool, usage: Usage | None) -> None:
        """The stream was closed: whole (``ok``), failed (see :meth:`stream_error`) or cut short."""
        if self._error is not None:
            self._close(usage, self._error)
        else:
            self._close(usage, None if ok else "cancelled")

    def fail(self, e: BaseException) -> None:
        """The request failed before it was answered (or before its stream started)."""
        self._close(None, e)

    def _close(self, usage: Usage | None, error: BaseException | str | None) -> None:
        if self._ended:
            return
        self._ended = True
        root, up = self._root, self._upstream
        if error is None:
            outcome = "ok"
            if up is not None:
                up.set_status(_otel.OK)
            root.set_status(_otel.OK)
        elif isinstance(error, str):
            outcome = error
            if up is not None:
                up.set_attribute("error.type", "cancelled")
            root.set_attribute("error.type", "cancelled")
        else:
            outcome = _fail(root, error)
            if up is not None:
                _fail(up, error)
        if up is not None:
            up.end()
            self._upstream = None
        if root.is_recording():
            attrs: dict[str, Any] = {"promptwire.outcome": outcome}
            if usage is not None:
                attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
                attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
            if self._finish:
                attrs["gen_ai.response.finish_reasons"] = self._finish
            root.set_attributes(attrs)
        root.end()
