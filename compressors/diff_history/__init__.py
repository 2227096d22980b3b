"""Diff history (arXiv 2312.07540): agent observations condensed to exact line diffs, recoverable.

``diff``/``apply`` make and apply the reference's diffs; ``layout`` is the reference's text layout
of (action, observation) steps; ``condense_messages`` does the same over OpenAI chat messages.
No gateway imports: token counting is a parameter (``count_tokens``)."""

from __future__ import annotations

from compressors.diff_history.chat import (
    DEFAULT_ROLES,
    Condensed,
    CondenseStats,
    Kind,
    Observation,
    condense_messages,
    looks_like_diff,
    message_text,
    placeholder_text,
)
from compressors.diff_history.diff import apply, diff, normalise
from compressors.diff_history.errors import BudgetError, DiffHistoryError, PatchError
from compressors.diff_history.history import (
    ACTION_MARKER,
    OBSERVATION_MARKER,
    History,
    HistoryItem,
    Step,
    TokenCounter,
    approx_tokens,
    layout,
)

__all__ = [
    "ACTION_MARKER",
    "DEFAULT_ROLES",
    "OBSERVATION_MARKER",
    "BudgetError",
    "CondenseStats",
    "Condensed",
    "DiffHistoryError",
    "History",
    "HistoryItem",
    "Kind",
    "Observation",
    "PatchError",
    "Step",
    "TokenCounter",
    "apply",
    "approx_tokens",
    "condense_messages",
    "diff",
    "layout",
    "looks_like_diff",
    "message_text",
    "normalise",
    "placeholder_text",
]
