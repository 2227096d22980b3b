"""The trie decoder's option and label rules, torch-free: shared by the decoder and the upstream choice mapping."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from decoders.processor import DecoderOptionError

__all__ = [
    "MAX_LABELS",
    "MODES",
    "OPTIONS",
    "P_LABELS",
    "P_MAX",
    "P_MODE",
    "P_SCORING",
    "P_SEPARATOR",
    "LabelSpec",
    "Mode",
    "TrieLabelError",
    "TrieOptions",
    "check_mode",
    "check_names",
    "check_scoring",
    "normalize_labels",
]

Mode = Literal["any", "canonical"]
MODES: tuple[Mode, ...] = ("any", "canonical")
MAX_LABELS = 100_000
"""Most labels one request may list (the local decoder and the upstream choice alike)."""
OPTIONS = frozenset({"labels", "mode", "separator", "max_labels", "scoring"})
"""The trie's client options (besides ``name``); ``scoring`` is served by the provider, not the processor."""

_P = "promptwire.decoder."
P_LABELS = _P + "labels"
P_SEPARATOR = _P + "separator"
P_MAX = _P + "max_labels"
P_MODE = _P + "mode"
P_SCORING = _P + "scoring"


class TrieLabelError(DecoderOptionError):
    """Bad trie options (empty / duplicate / too long labels, bad separator or count); ``param`` names it."""


def check_names(options: Mapping[str, Any]) -> None:
    """Unknown option names and a missing ``labels`` are errors (``name`` itself is allowed)."""
    unknown = sorted(set(options) - OPTIONS - {"name"})
    if unknown:
        raise TrieLabelError(f"unknown trie option {unknown[0]!r}", _P + unknown[0])
    if "labels" not in options:
        raise TrieLabelError("the trie decoder needs labels", P_LABELS)


def normalize_labels(labels: Any) -> list[str]:
    """Validate a label list (non-empty, strings, non-empty, no duplicates) and return it as a list.

    Labels are kept exactly as given (no stripping, no Unicode normalisation): the output text must equal
    one of them.
    """
    if isinstance(labels, str | bytes) or not isinstance(labels, Sequence):
        raise TrieLabelError("labels must be a list of strings", P_LABELS)
    if not labels:
        raise TrieLabelError("labels must not be empty", P_LABELS)
    if len(labels) > MAX_LABELS:
        raise TrieLabelError(f"at most {MAX_LABELS} labels are allowed, got {len(labels)}", P_LABELS)
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise TrieLabelError(f"labels[{i}] must be a string", P_LABELS)
        if not label:
            raise TrieLabelError(f"labels[{i}] is empty", P_LABELS)
        if label in seen:
            raise TrieLabelError(f"duplicate label {label!r} (labels[{i}])", P_LABELS)
        seen.add(label)
    return list(labels)


def check_mode(mode: Any) -> Mode:
    if mode not in MODES:
        raise TrieLabelError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", P_MODE)
    return mode  # type: ignore[no-any-return]


def check_scoring(scoring: Any) -> bool:
    if not isinstance(scoring, bool):
        raise TrieLabelError("scoring must be true or false", P_SCORING)
    return scoring


@dataclass(frozen=True)
class LabelSpec:
    """What the client asked for, validated."""

    labels: tuple[str, ...]
    mode: Mode = "canonical"
    """``canonical``: only the tokenizer's own tokenisation of each label in context; ``any``: every
    token sequence that spells it."""
    separator: str | None = None
    """Set for multi-label output: labels joined by this text, none repeated."""
    max_labels: int = 1
    """Most labels in one output (1 unless ``separator`` is set)."""

    @classmethod
    def parse(cls, labels: Any, mode: Any = "canonical", separator: Any = None, max_labels: Any = None) -> LabelSpec:
        """Validate raw client options; raises :class:`TrieLabelError` naming the bad option."""
        norm = normalize_labels(labels)
        mode = check_mode(mode)
        if separator is not None:
            if not isinstance(separator, str) or not separator:
                raise TrieLabelError("separator must be a non-empty string", P_SEPARATOR)
            for label in norm:
                if separator in label:
                    raise TrieLabelError(f"label {label!r} contains the separator {separator!r}", P_SEPARATOR)
        if max_labels is None:
            max_labels = len(norm) if separator is not None else 1
        if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1:
            raise TrieLabelError("max_labels must be a positive integer", P_MAX)
        if max_labels > 1 and separator is None:
            raise TrieLabelError("max_labels > 1 needs a separator", P_SEPARATOR)
        return cls(tuple(norm), mode, separator, min(max_labels, len(norm)))


@dataclass(frozen=True)
class TrieOptions:
    """A whole trie ``decoder`` object, validated: the label spec and whether scoring mode is asked."""

    spec: LabelSpec
    scoring: bool = False

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> TrieOptions:
        """Validate the client's decoder object (``name`` may be present); :class:`TrieLabelError` if bad.

        Scoring mode gives each single label's canonical probability, so it refuses multi-label output
        and ``mode: any``."""
        check_names(options)
        spec = LabelSpec.parse(options["labels"], options.get("mode", "canonical"), options.get("separator"),
                               options.get("max_labels"))
        scoring = check_scoring(options.get("scoring", False))
        if scoring and spec.separator is not None:
            raise TrieLabelError("scoring mode gives each single label's probability; it cannot be combined "
                                 "with multi-label output (separator / max_labels)", P_SEPARATOR)
        if scoring and spec.mode != "canonical":
            raise TrieLabelError("scoring mode scores each label's canonical tokenisation in context; mode "
                                 "must be canonical (the default)", P_MODE)
        return cls(spec, scoring)
