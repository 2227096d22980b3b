"""Trie labels over an OpenAI-compatible upstream: the decoder's labels as the upstream's structured-output choice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from decoders.trie.labels import (
    P_MAX,
    P_SCORING,
    P_SEPARATOR,
    TrieLabelError,
    check_mode,
    check_names,
    check_scoring,
    normalize_labels,
)
from gateway.errors import InvalidRequest

__all__ = ["CHOICE_STYLES", "ChoiceStyle", "apply_choice", "choice_fields"]

ChoiceStyle = Literal["structured_outputs", "guided_choice"]
CHOICE_STYLES: tuple[ChoiceStyle, ...] = ("structured_outputs", "guided_choice")
"""``structured_outputs``: body ``{"structured_outputs": {"choice": labels}}`` (vLLM >= 0.12, which removed
the ``guided_*`` fields); ``guided_choice``: body ``{"guided_choice": labels}`` (older vLLM, TGI-style
servers that copied it)."""

_P = "promptwire.decoder."
# Client body fields that constrain the upstream's output too: they cannot be combined with a label choice.
_CONFLICTS = ("structured_outputs", "guided_choice", "guided_json", "guided_regex", "guided_grammar",
              "structural_tag", "response_format")


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
    try:
        check_names(decoder)
        labels = normalize_labels(decoder["labels"])
        check_mode(decoder.get("mode", "canonical"))
    except TrieLabelError as e:
        raise InvalidRequest(str(e), param=e.param) from None
    if decoder.get("separator") is not None:
        raise InvalidRequest(
            f"multi-label output (separator) cannot be expressed as the structured-output choice of the upstream "
            f"for model {model!r}: it picks exactly one label; drop separator or use a local model",
            param=P_SEPARATOR,
        )
    max_labels = decoder.get("max_labels")
    if max_labels is not None and max_labels != 1:
        raise InvalidRequest(
            f"max_labels={max_labels!r}: the upstream for model {model!r} picks exactly one label "
            "(structured-output choice); use a local model for multi-label output",
            param=P_MAX,
        )
    try:
        scoring = check_scoring(decoder.get("scoring", False))
    except TrieLabelError as e:
        raise InvalidRequest(str(e), param=e.param) from None
    if scoring:
        raise InvalidRequest(
            f"scoring mode (every label's probability) needs the model's logits; the upstream for model "
            f"{model!r} only offers a structured-output choice; use a local model",
            param=P_SCORING,
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
