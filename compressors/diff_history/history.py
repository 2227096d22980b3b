"""The reference's text layout of (action, observation) steps: one full anchor, then diffs, window and budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from compressors.diff_history.diff import apply, diff
from compressors.diff_history.errors import BudgetError, DiffHistoryError

__all__ = [
    "ACTION_MARKER",
    "OBSERVATION_MARKER",
    "History",
    "HistoryItem",
    "Step",
    "TokenCounter",
    "approx_tokens",
    "check_budget",
    "check_int",
    "check_window",
    "layout",
]

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text; pass your model's tokenizer (``lambda s: len(tok.encode(s))``)."""

ACTION_MARKER = "<|action|>"
OBSERVATION_MARKER = "<|observation|>"
"""The reference's special tokens between steps (its ``special_tokens_interaction_history``)."""


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (4 characters a token); the default only where none is given."""
    return (len(text) + 3) // 4


@dataclass(frozen=True, slots=True)
class Step:
    """One agent step: the action taken and the observation it produced."""

    action: str | None
    """None for the first observation (the environment's reset) when no action led to it."""
    observation: str


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One step as laid out: the anchor carries its observation in full, every later step a diff."""

    index: int
    """Position of the step in the input."""
    action: str | None
    text: str
    """The full observation (anchor) or ``diff(previous observation, this one)``."""
    full: bool


@dataclass(frozen=True, slots=True)
class History:
    """A laid-out history: ``items[0]`` is the anchor, steps before ``items[0].index`` were dropped."""

    instruction: str | None
    items: tuple[HistoryItem, ...]
    action_marker: str = ACTION_MARKER
    observation_marker: str = OBSERVATION_MARKER

    @property
    def dropped(self) -> int:
        """Steps left out before the anchor (by the window or the budget)."""
        return self.items[0].index if self.items else 0

    def render(self, next_action: bool = True) -> str:
        """The prompt text the reference builds: instruction, blank line, the anchor observation,
        then per later step ``"\\n" + action_marker + action`` and ``"\\n" + observation_marker +
        "\\n" + diff``; with ``next_action`` a final ``"\\n" + action_marker`` asks for the next action.

        The anchor's own action is not shown (the reference starts the window at an observation)."""
        parts: list[str] = []
        if self.instruction is not None:
            parts.append(self.instruction.strip() + "\n\n")
        if self.items:
            parts.append(self.items[0].text.strip() + "\n")
        for item in self.items[1:]:
            parts.append(f"\n{self.action_marker}{item.action or ''}")
            parts.append(f"\n{self.observation_marker}\n{item.text}")
        if next_action:
            parts.append(f"\n{self.action_marker}")
        return "".join(parts)

    def observations(self) -> list[str]:
        """Every laid-out observation rebuilt from the anchor and the diffs (normalised texts)."""
        out: list[str] = []
        for item in self.items:
            out.append(item.text if item.full else apply(out[-1], item.text, param=f"items[{item.index}]"))
        return out


def check_int(value: object, param: str, least: int, what: str) -> int | None:
    """``value`` as an int >= ``least``, or None (unset); anything else raises DiffHistoryError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise DiffHistoryError(param, f"must be {what} (an integer >= {least}), got {value!r}")
    return value


def check_window(window: object, param: str = "window") -> int | None:
    """``window`` as an int >= 1 (observations kept), or None (no window)."""
    return check_int(window, param, 1, "the number of observations kept")


def check_budget(budget_tokens: object, param: str = "budget_tokens") -> int | None:
    """``budget_tokens`` as an int >= 1, or None (no budget)."""
    return check_int(budget_tokens, param, 1, "a number of tokens")


def _items(steps: Sequence[Step], start: int, diffs: dict[int, str]) -> tuple[HistoryItem, ...]:
    items = [HistoryItem(start, steps[start].action, steps[start].observation, True)]
    for k in range(start + 1, len(steps)):
        if k not in diffs:
            diffs[k] = diff(steps[k - 1].observation, steps[k].observation)
        items.append(HistoryItem(k, steps[k].action, diffs[k], False))
    return tuple(items)


def layout(
    steps: Sequence[Step],
    *,
    instruction: str | None = None,
    window: int | None = None,
    budget_tokens: int | None = None,
    count_tokens: TokenCounter = approx_tokens,
    action_marker: str = ACTION_MARKER,
    observation_marker: str = OBSERVATION_MARKER,
) -> History:
    """Lay out the last ``window`` steps (all when None) as the reference does: the oldest
    observation in the window in full, each later one as the diff against the one before.

    ``window`` counts observations, the anchor included: the reference's ``history=h`` is
    ``window=h + 1``. With ``budget_tokens`` the oldest steps are dropped, one at a time, until
    ``count_tokens(history.render())`` is at most the budget (the reference: below
    ``max_ctx_tokens``); the new oldest step becomes the full anchor each time. A budget that
    cannot hold the latest observation alone raises :class:`BudgetError` naming ``budget_tokens``.
    """
    window = check_window(window)
    budget_tokens = check_budget(budget_tokens)
    if not steps:
        return History(instruction, (), action_marker, observation_marker)
    for k, step in enumerate(steps):
        if not isinstance(step.observation, str):
            raise DiffHistoryError(
                f"steps[{k}].observation", f"must be text, got {type(step.observation).__name__}"
            )
    start = 0 if window is None else max(0, len(steps) - window)
    diffs: dict[int, str] = {}
    while True:
        history = History(instruction, _items(steps, start, diffs), action_marker, observation_marker)
        if budget_tokens is None:
            return history
        tokens = count_tokens(history.render())
        if tokens <= budget_tokens:
            return history
        if start == len(steps) - 1:
            raise BudgetError(
                "budget_tokens",
                f"{budget_tokens} tokens cannot hold the latest observation ({tokens} tokens with the instruction)",
                needed=tokens,
            )
        start += 1
