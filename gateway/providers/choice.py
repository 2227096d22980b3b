"""Trie labels over an OpenAI-compatible upstream: the decoder's labels as the upstream's structured-output choice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from gateway.errors import InvalidRequest

__all__ = ["CHOICE_STYLES", "ChoiceStyle", "apply_choice", "choice_fields", "validate_labels"]

ChoiceStyle = Literal["structured_outputs", "guided_choice"]
CHOICE_STYLES: tuple[ChoiceStyle, ...] = ("structured_outputs", "guided_choice")
"""``structured_outputs``: body ``{"structured_outputs": {"choice": labels}}`` (vLLM >= 0.12, which removed
the ``guided_*`` fields); ``guided_choice``: body ``{"guided_choice": labels}`` (older vLLM, TGI-style
servers that copied it)."""

MAX_LABELS = 100_000
"""Same cap as the local trie decoder (decoders.trie_index.MAX_LABELS)."""

_P = "promptwire.decoder."
_TRIE_OPTIONS = frozenset({"name", "labels", "mode", "separator", "max_labels", "scoring"})
_MODES = ("any", "canonical")
# Client body fields that constrain the upstream's output too: they cannot be combined with a label choice.
_CONFLICTS = ("structured_outputs", "guided_choice", "guided_json", "guided_regex", "guided_grammar",
              "structural_tag", "response_format")


def validate_labels(labels: Any) -> list[str]:
    """A non-empty list of distinct non-empty strings, else :class:`InvalidRequest` naming
    ``promptwire.decoder.labels``. The same rules and messages as the local trie decoder's
    ``decoders.trie_index.normalize_labels``, without importing torch into the proxy path."""
    param = _P + "labels"
    if isinstance(labels, str | bytes) or not isinstance(labels, Sequence):
        raise InvalidRequest("labels must be a list of strings", param=param)
    if not labels:
        raise InvalidRequest("labels must not be empty", param=param)
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"at most {MAX_LABELS} labels are allowed, got {len(labels)}", param=param)
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise InvalidRequest(f"labels[{i}] must be a string", param=param)
        if not label:
            raise InvalidRequest(f"labels[{i}] is empty", param=param)
        if label in seen:
            raise InvalidRequest(f"duplicate label {label!r} (labels[{i}])", param=param)
        seen.add(label)
    return list(labels)


def choice_fields(decoder: Mapping[str, Any], style: str | None, *, model: str, backend: str) -> dict[str, Any]:
    """The request-body fields that make an OpenAI-compatible upstream answer with exactly one label.

    ``decoder`` is the request's decoder object (``{"name": "trie", "labels": [...], ...}``); ``style`` is the
    backend's configured ``structured_choice`` (None: the upstream has no such feature). Raises
    :class:`InvalidRequest` naming the offending ``promptwire.decoder.<option>`` for anything a single choice
    cannot express (multi-label output, scoring) and for a backend that cannot constrain at all.
    """
    name = decoder.get("name")
    if name != "trie":
        raise InvalidRequest(
            f"decoder {name!r} runs only on a local model (backend type local); an OpenAI-compatible upstream "
            "can only take the trie decoder's labels as a structured-output choice",
            param=_P + "name",
        )
    if style is None:
        raise InvalidRequest(
            f"the upstream for model {model!r} cannot constrain output to labels; configure "
            f"backends.{backend}.structured_choice: structured_outputs|guided_choice or use a local model",
            param=_P + "name",
            code="decoder_not_available",
        )
    if style not in CHOICE_STYLES:
        # config validation should make this unreachable; a programming error, not the client's
        raise ValueError(f"backends.{backend}.structured_choice must be one of {', '.join(CHOICE_STYLES)}")
    unknown = sorted(set(decoder) - _TRIE_OPTIONS)
    if unknown:
        raise InvalidRequest(f"unknown trie option {unknown[0]!r}", param=_P + unknown[0])
    if "labels" not in decoder:
        raise InvalidRequest("the trie decoder needs labels", param=_P + "labels")
    labels = validate_labels(decoder["labels"])
    mode = decoder.get("mode", "canonical")
    if mode not in _MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(_MODES)}, got {mode!r}", param=_P + "mode")
    if decoder.get("separator") is not None:
        raise InvalidRequest(
            f"multi-label output (separator) cannot be expressed as the structured-output choice of the upstream "
            f"for model {model!r}: it picks exactly one label; drop separator or use a local model",
            param=_P + "separator",
        )
    max_labels = decoder.get("max_labels")
    if max_labels is not None and max_labels != 1:
        raise InvalidRequest(
            f"max_labels={max_labels!r}: the upstream for model {model!r} picks exactly one label "
            "(structured-output choice); use a local model for multi-label output",
            param=_P + "max_labels",
        )
    scoring = decoder.get("scoring", False)
    if not isinstance(scoring, bool):
        raise InvalidRequest("scoring must be true or false", param=_P + "scoring")
    if scoring:
        raise InvalidRequest(
            f"scoring mode (every label's probability) needs the model's logits; the upstream for model "
            f"{model!r} only offers a structured-output choice; use a local model",
            param=_P + "scoring",
        )
    if style == "structured_outputs":
        return {"structured_outputs": {"choice": labels}}
    return {"guided_choice": labels}


def apply_choice(body: Mapping[str, Any], decoder: Mapping[str, Any], style: str | None, *, model: str,
                 backend: str) -> dict[str, Any]:
    """``body`` (the upstream request) with :func:`choice_fields` merged in; a client field that already
    constrains the output (``response_format`` other than text, ``structured_outputs``, ``guided_*``) is
    rejected rather than silently overridden."""
    fields = choice_fields(decoder, style, model=model, backend=backend)
    for key in _CONFLICTS:
        value = body.get(key)
        if value is None:
            continue
        if key == "response_format" and isinstance(value, Mapping) and value.get("type") in (None, "text"):
            continue
        raise InvalidRequest(f"{key} cannot be combined with promptwire.decoder (labels already constrain "
                             "the output)", param=key)
    return {**body, **fields}
