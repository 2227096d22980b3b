"""Prometheus metrics of one Gateway, in its own registry (several gateways may share a process).

With ``serve --workers N`` every worker writes its values to files in ``$PROMETHEUS_MULTIPROC_DIR`` (the
parent sets it; prometheus_client's multiprocess mode) and ``/metrics`` on any worker reports the sum
over all of them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE", "MULTIPROC_ENV", "Metrics", "multiprocess"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    """Whether this process shares its metrics with sibling workers (prometheus_client reads the variable
    when it is first imported, so it is set for the worker processes, never switched on later)."""
    return bool(os.environ.get(MULTIPROC_ENV))


class _LiveGauge(Gauge):
    """A gauge read from a function at scrape time (``set_function``) that also keeps the function, so
    that in multiprocess mode its value can be written where the other workers' scrapes see it."""

    _pw_function: Callable[[], float] | None = None

    def set_function(self, f: Callable[[], float]) -> None:
        self._pw_function = f
        super().set_function(f)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Gateway overhead lives well under a millisecond; upstream latency spans ms to minutes.
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


MAX_MODEL_LABELS = 200
MAX_KNOWN_MODELS = 2000


class Metrics:
    """The gateway's metric families; label children used on the hot path are bound lazily."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._models: set[str] = set()
        self._known: set[str] = set()
        self.requests = Counter(
            "promptwire_requests", "Generation requests finished", ["model", "kind", "stream", "code"],
            registry=r,
        )
        self.errors = Counter(
            "promptwire_errors", "Requests answered with an error, by status code and error code",
            ["status", "code"], registry=r,
        )
        self.in_flight = _LiveGauge("promptwire_in_flight", "Generation requests in progress", registry=r,
                                    multiprocess_mode="livesum")
        self.total_seconds = Histogram(
            "promptwire_request_seconds", "Whole request time in the gateway", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.upstream_seconds = Histogram(
            "promptwire_upstream_seconds",
            "Time waiting on the provider per attempt: the whole call, or until the first chunk of a stream",
            ["backend"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.overhead_seconds = Histogram(
            "promptwire_overhead_seconds", "Gateway time outside the provider call (stages included)",
            ["kind"], buckets=_OVERHEAD_BUCKETS, registry=r,
        )
        self.ttft_seconds = Histogram(
            "promptwire_time_to_first_token_seconds", "Streamed requests: arrival to first chunk",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.tokens_in = Counter("promptwire_prompt_tokens", "Prompt tokens (upstream usage)", ["model"], registry=r)
        self.tokens_out = Counter(
            "promptwire_completion_tokens", "Completion tokens (upstream usage)", ["model"], registry=r
        )
        self.tokens_saved = Counter(
            "promptwire_stage_tokens_saved", "Prompt tokens removed by each stage", ["stage"], registry=r
        )
        self.stage_seconds = Histogram(
            "promptwire_stage_seconds", "Time spent in each stage", ["stage"],
            buckets=(*_OVERHEAD_BUCKETS, 1.0, 5.0), registry=r,
        )
        self.upstream_retries = Counter(
            "promptwire_upstream_retries", "Upstream attempts retried or failed over", ["backend", "reason"],
            registry=r,
        )
        self.upstream_connections = _LiveGauge(
            "promptwire_upstream_connections", "Connections open to each openai backend (in use and idle)",
            ["backend"], registry=r, multiprocess_mode="livesum",
        )
        self.upstream_waiting = _LiveGauge(
            "promptwire_upstream_waiting",
            "Requests waiting for a connection to each openai backend (max_connections reached)", ["backend"],
            registry=r, multiprocess_mode="livesum",
        )
        self._live = (self.upstream_connections, self.upstream_waiting)
        """Published every second (``publish_every``); in_flight is written at every change instead."""

    def known_models(self, names: Iterable[str]) -> None:
        """Names the gateway serves (configured or discovered): always their own label, whatever
        clients send (up to MAX_KNOWN_MODELS of them)."""
        for name in names:
            if len(self._known) >= MAX_KNOWN_MODELS:
                break
            self._known.add(name)

    def model_label(self, model: str) -> str:
        """The ``model`` label value. Served models keep theirs; other names come from clients, so after
        MAX_MODEL_LABELS distinct ones every new one is counted as ``other`` (one bound for every family)."""
        if model in self._models or model in self._known:
            return model
        if len(self._models) >= MAX_MODEL_LABELS:
            return "other"
        self._models.add(model)
        return model

    def child(self, family: Any, *labels: str) -> Any:
        """``family.labels(*labels)``, cached: the lookup costs more than the update on the hot path."""
        key = (id(family), labels)
        c = self._children.get(key)
        if c is None:
            c = family.labels(*labels)
            if len(self._children) < 10_000:
                self._children[key] = c
        return c

    def render(self) -> bytes:
        """The text exposition: this gateway's registry, or with several workers every worker's values."""
        if not multiprocess():
            return generate_latest(self.registry)
        self.publish()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def publish(self) -> None:
        """Multiprocess mode: write the connection gauges' current values where other workers read them."""
        for gauge in self._live:
            children: list[Any] = list(gauge._metrics.values()) if gauge._labelnames else [gauge]
            for child in children:
                fn = child._pw_function
                if fn is not None:
                    child.set(fn())

    async def publish_every(self, interval_s: float) -> None:
        """Keep publishing (a worker's task in multiprocess mode), so scrapes on its siblings see it live."""
        while True:
            self.publish()
            await asyncio.sleep(interval_s)
