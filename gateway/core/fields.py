"""OpenAI's request field rules in one table, checked the same way for HTTP and gRPC requests.

The front ends check types (pydantic, protobuf); the values are checked here, once, by the core for
either front end (``Gateway`` calls :func:`check_fields` after routing, because a backend may opt out
of OpenAI's limits: ``backends.<name>.openai_limits: false`` for servers such as vLLM that accept
wider ranges). The OpenAPI document takes its ``minimum``/``maximum`` from the same table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest
from gateway.types import ChatMessage, RequestKind

__all__ = ["FIELDS", "MAX_N", "MAX_STOP", "ROLES", "FieldRule", "check_fields", "field_schema"]

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
"""Chat roles OpenAI accepts."""
MAX_N = 128
"""OpenAI's largest ``n``; ``limits.max_n`` may set a lower cap."""
MAX_STOP = 4
"""OpenAI takes up to 4 stop sequences."""
_BOTH: frozenset[RequestKind] = frozenset({"chat", "completion"})
_CHAT: frozenset[RequestKind] = frozenset({"chat"})
_COMPLETION: frozenset[RequestKind] = frozenset({"completion"})


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One numeric body field: its bounds and whether a backend may opt out of them."""

    name: str
    kinds: frozenset[RequestKind]
    minimum: float
    maximum: float | None
    integer: bool = False
    openai_only: bool = True
    """An OpenAI limit that ``openai_limits: false`` lifts; False: checked for every backend."""


FIELDS: tuple[FieldRule, ...] = (
    FieldRule("temperature", _BOTH, 0.0, 2.0),
    FieldRule("top_p", _BOTH, 0.0, 1.0),
    FieldRule("presence_penalty", _BOTH, -2.0, 2.0),
    FieldRule("frequency_penalty", _BOTH, -2.0, 2.0),
    FieldRule("n", _BOTH, 1, MAX_N, integer=True, openai_only=False),
    FieldRule("max_tokens", _BOTH, 1, None, integer=True, openai_only=False),
    FieldRule("max_completion_tokens", _CHAT, 1, None, integer=True, openai_only=False),
    FieldRule("top_logprobs", _CHAT, 0, 20, integer=True),
    FieldRule("logprobs", _COMPLETION, 0, 5, integer=True),
    FieldRule("best_of", _COMPLETION, 1, 20, integer=True),
)
"""The numeric fields OpenAI bounds (``n``'s maximum: the smaller of MAX_N and ``limits.max_n``)."""
_BY_NAME = {rule.name: rule for rule in FIELDS}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounds(rule: FieldRule, max_n: int) -> tuple[float, float | None]:
    if rule.name == "n":
        return rule.minimum, min(MAX_N, max_n)
    return rule.minimum, rule.maximum


def _check_rule(rule: FieldRule, value: Any, max_n: int) -> None:
    if value is None or not _number(value):
        return  # absent, or a type the front end's own checks own (HTTP: pydantic; gRPC: protobuf)
    low, high = _bounds(rule, max_n)
    name = rule.name
    if rule.integer and not (isinstance(value, int) or (math.isfinite(value) and value == int(value))):
        raise InvalidRequest(f"{name} must be an integer, got {value!r}", param=name)
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        span = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise InvalidRequest(f"{name} must be {span}, got {value!r}", param=name)


def check_fields(kind: RequestKind, params: Mapping[str, Any], messages: Sequence[ChatMessage] = (), *,
                 openai_limits: bool = True, max_n: int = MAX_N) -> None:
    """Check a request's values against the table; InvalidRequest naming the field (OpenAI's name:
    ``temperature``, ``messages[2].role``) on the first that is out of bounds. ``openai_limits`` False
    (every backend of the route opted out) checks only what no backend can take (n, max_tokens)."""
    for name, value in params.items():  # the fields the request has (a few), not every rule
        rule = _BY_NAME.get(name)
        if rule is not None and kind in rule.kinds and (openai_limits or not rule.openai_only):
            _check_rule(rule, value, max_n)
    if not openai_limits:
        return
    if kind == "chat":
        for i, m in enumerate(messages):
            if m.role not in ROLES:
                # (the value is not quoted: error messages reach the logs, and it is the client's own text)
                raise InvalidRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}",
                                     param=f"messages[{i}].role")
        if params.get("top_logprobs") is not None and params.get("logprobs") is not True:
            raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    stop = params.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOP:
        raise InvalidRequest(f"stop takes at most {MAX_STOP} sequences, got {len(stop)}", param="stop")
    n: Any = params.get("n")
    best_of: Any = params.get("best_of")
    if kind == "completion" and _number(best_of) and _number(n) and best_of < n:
        raise InvalidRequest(f"best_of must be at least n ({n}), got {best_of}", param="best_of")
    bias = params.get("logit_bias")
    if isinstance(bias, Mapping):
        for token, value in bias.items():
            if not (isinstance(token, str) and token.isdigit()):
                raise InvalidRequest(f"logit_bias keys are token ids, got {token!r}", param="logit_bias")
            if _number(value) and not (math.isfinite(value) and -100 <= value <= 100):
                raise InvalidRequest(f"logit_bias values must be between -100 and 100, got {value!r}",
                                     param="logit_bias")


def field_schema(kind: RequestKind) -> dict[str, dict[str, Any]]:
    """JSON Schema bounds of the table's fields for ``kind`` (the OpenAPI document's request models)."""
    out: dict[str, dict[str, Any]] = {}
    for rule in FIELDS:
        if kind in rule.kinds:
            low, high = _bounds(rule, MAX_N)
            bounds: dict[str, Any] = {"minimum": int(low) if rule.integer else low}
            if high is not None:
                bounds["maximum"] = int(high) if rule.integer else high
            out[rule.name] = bounds
    return out
