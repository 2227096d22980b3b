"""Prometheus metrics of one Gateway, in its own registry (several gateways may share a process)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

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
        self.in_flight = Gauge("promptwire_in_flight", "Generation requests in progress", registry=r)
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
        self.upstream_connections = Gauge(
            "promptwire_upstream_connections", "Connections open to each openai backend (in use and idle)",
            ["backend"], registry=r,
        )
        self.upstream_waiting = Gauge(
            "promptwire_upstream_waiting",
            "Requests waiting for a connection to each openai backend (max_connections reached)", ["backend"],
            registry=r,
        )

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
        return generate_latest(self.registry)
