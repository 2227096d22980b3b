"""Diff history over chat messages: tool outputs grouped per tool, later ones replaced by diffs."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from compressors.diff_history.diff import apply, diff
from compressors.diff_history.errors import BudgetError, DiffHistoryError
from compressors.diff_history.history import (
    TokenCounter,
    approx_tokens,
    check_budget,
    check_int,
    check_window,
)

__all__ = [
    "DEFAULT_ROLES",
    "CondenseStats",
    "Condensed",
    "Kind",
    "Observation",
    "condense_messages",
    "looks_like_diff",
    "message_text",
    "placeholder_text",
]

DEFAULT_ROLES: tuple[str, ...] = ("tool",)

Kind = Literal["full", "diff", "placeholder", "kept"]
"""What became of an observation: ``full`` (content untouched: its group's anchor, or with
``prefer_shorter`` one whose diff would have been longer), ``diff`` (content
replaced by the diff against the group's previous observation), ``placeholder`` (older than the
window or dropped for the budget; one line), ``kept`` (shorter than ``min_chars``, untouched)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One observation message and what was done to it."""

    index: int
    """Position in the message list."""
    group: str
    """The tool's name (from the assistant's ``tool_calls`` entry it answers), else the role."""
    kind: Kind
    text: str
    """Its original text (string content, or its text parts joined with ``"\\n"``)."""


@dataclass(frozen=True, slots=True)
class CondenseStats:
    """What condensing did to one message list (tokens as the given counter counts message text)."""

    tokens_before: int
    tokens_after: int
    observations: int
    observations_diffed: int
    placeholders: int


@dataclass(frozen=True, slots=True)
class Condensed:
    """The condensed messages (a new list; untouched messages are the same objects) and a record."""

    messages: list[Mapping[str, Any]]
    stats: CondenseStats
    observations: tuple[Observation, ...]

    def recover(self) -> dict[int, str | None]:
        """Each observation's text rebuilt from the condensed messages alone (message index ->
        text; None for a placeholder). Full and kept ones come back verbatim, diffed ones as
        ``normalise(original)``: the reference's stripping is all that is lost."""
        out: dict[int, str | None] = {}
        last: dict[str, str] = {}
        for obs in self.observations:
            if obs.kind == "placeholder":
                out[obs.index] = None
                continue
            text = message_text(self.messages[obs.index])
            if obs.kind == "diff":
                text = apply(last[obs.group], text, param=f"messages[{obs.index}].content")
            last[obs.group] = text
            out[obs.index] = text
        return out


def looks_like_diff(content: str) -> bool:
    """True for text that reads as a diff: empty (no change) or starting with a hunk header."""
    return content == "" or content.startswith("@@ -")


def placeholder_text(group: str, text: str) -> str:
    """The one line an observation outside the window becomes."""
    n = len(text.splitlines())
    return f"[earlier {group} output omitted: {n} line{'' if n == 1 else 's'}]"


def message_text(message: Mapping[str, Any]) -> str:
    """A message's text: its string content, or its text parts joined with ``"\\n"``."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            t
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(t := p.get("text"), str)
        )
    return ""


def _observation_text(message: Mapping[str, Any], i: int) -> str:
    """The text of an observation message; anything that is not text raises naming the field."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        kind = "missing" if content is None else type(content).__name__
        raise DiffHistoryError(f"messages[{i}].content", f"an observation must be text, got {kind}")
    texts: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise DiffHistoryError(
                f"messages[{i}].content[{j}]", "a content part must be an object with a type"
            )
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise DiffHistoryError(
                    f"messages[{i}].content[{j}].text", "a text part's text must be a string"
                )
            texts.append(part["text"])
    if not texts:
        raise DiffHistoryError(f"messages[{i}].content", "an observation must have at least one text part")
    return "\n".join(texts)


def _with_text(message: Mapping[str, Any], text: str) -> dict[str, Any]:
    """A copy of ``message`` whose text is ``text``: string content replaced; in a part list the
    first text part carries it, the other text parts go and every non-text part stays in place."""
    out = dict(message)
    content = message["content"]
    if isinstance(content, str):
        out["content"] = text
        return out
    parts: list[Any] = []
    placed = False
    for part in content:
        if part.get("type") != "text":
            parts.append(part)
        elif not placed:
            parts.append({**part, "text": text})
            placed = True
    out["content"] = parts
    return out


def _check_options(roles: object, min_chars: object) -> tuple[frozenset[str], int]:
    if isinstance(roles, str) or not isinstance(roles, Sequence) or not roles:
        raise DiffHistoryError("roles", "must be a non-empty list of role names")
    for k, r in enumerate(roles):
        if not isinstance(r, str) or not r:
            raise DiffHistoryError(f"roles[{k}]", f"must be a non-empty string, got {r!r}")
    return frozenset(roles), check_int(min_chars, "min_chars", 0, "a number of characters") or 0


def _find_observations(
    messages: Sequence[Mapping[str, Any]], roles: frozenset[str]
) -> list[tuple[int, str, str]]:
    """(message index, group, text) of every observation; tool messages are matched to their call."""
    calls: dict[str, str] = {}
    found: list[tuple[int, str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise DiffHistoryError(f"messages[{i}]", "a message must be an object with a string role")
        role = m["role"]
        if role == "assistant":
            for k, call in enumerate(m.get("tool_calls") or ()):
                fn = call.get("function") if isinstance(call, Mapping) else None
                name = fn.get("name") if isinstance(fn, Mapping) else None
                if (
                    not isinstance(call, Mapping)
                    or not isinstance(call.get("id"), str)
                    or not isinstance(name, str)
                ):
                    raise DiffHistoryError(
                        f"messages[{i}].tool_calls[{k}]", "a tool call needs a string id and function.name"
                    )
                calls[call["id"]] = name
        if role not in roles:
            continue
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in calls:
                raise DiffHistoryError(
                    f"messages[{i}].tool_call_id",
                    f"tool message answers no earlier assistant tool call (tool_call_id {call_id!r})",
                )
            group = calls[call_id]
        else:
            name = m.get("name")
            group = name if role == "function" and isinstance(name, str) else role
        found.append((i, group, _observation_text(m, i)))
    return found


def condense_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    window: int | None = None,
    budget_tokens: int | None = None,
    roles: Sequence[str] = DEFAULT_ROLES,
    min_chars: int = 0,
    count_tokens: TokenCounter = approx_tokens,
    prefer_shorter: bool = False,
    diff_fn: Callable[[str, str], str] = diff,
) -> Condensed:
    """Condense an OpenAI chat message list into a diff history.

    Observations are the messages whose role is in ``roles`` (tool results by default), grouped
    per tool: a ``tool`` message's group is the function name of the assistant ``tool_calls`` entry
    whose id it answers; other roles group by role (``function`` messages by name). In each group
    the oldest observation kept keeps its content, and every later one's content becomes
    ``diff(previous observation's full text, this one's)``. ``window`` keeps the last N observations
    per group; older ones become a one-line placeholder, so tool calls stay answered and the list
    stays valid for OpenAI's API. ``budget_tokens`` then turns the oldest remaining observations
    (across groups, in message order) into placeholders until the message text counts at most that
    many tokens; the last observation always stays. Observations shorter than ``min_chars``
    characters stay as they are. Non-text content parts are left in place.

    ``diff_fn`` makes the diffs (:func:`diff` by default); a caller serving an agent loop can pass a
    cached one, since every turn resends the same earlier outputs.

    ``prefer_shorter`` (not in the reference; off by default) keeps an observation in full where
    its diff would count more tokens than the text itself (outputs that change completely from one
    call to the next). A reader tells the two apart by :func:`looks_like_diff`: a diff is ``""`` or
    starts with ``"@@ -"``, and a text that looks like one is always sent as a diff.

    Raises :class:`DiffHistoryError` naming the parameter: a tool message with no matching call
    (``messages[i].tool_call_id``), an observation that is not text (``messages[i].content``), a
    window < 1 (``window``), and :class:`BudgetError` (``budget_tokens``) for a budget too small for
    the last observation."""
    window = check_window(window)
    budget_tokens = check_budget(budget_tokens)
    role_set, min_chars = _check_options(roles, min_chars)
    found = _find_observations(messages, role_set)

    # kinds per group: placeholders before the window, then the anchor, then diffs
    kinds: list[Kind] = []
    prev: list[int | None] = []  # the previous observation of the same group (position in found)
    group_members: dict[str, list[int]] = {}
    for pos, (_, group, _) in enumerate(found):
        group_members.setdefault(group, []).append(pos)
        kinds.append("full")
        prev.append(None)
    for members in group_members.values():
        first = 0 if window is None else max(0, len(members) - window)
        for j, pos in enumerate(members):
            prev[pos] = members[j - 1] if j else None
            if len(found[pos][2]) < min_chars:
                kinds[pos] = "kept"
            elif j < first:
                kinds[pos] = "placeholder"
            elif j > first:
                kinds[pos] = "diff"

    # token accounting per message (only observation messages ever change)
    msg_tokens = [count_tokens(message_text(m)) for m in messages]
    before = sum(msg_tokens)
    new_text: list[str | None] = [None] * len(found)  # None: content untouched

    def settle(pos: int) -> int:
        """Set the new text of ``found[pos]`` for its kind; returns its token count."""
        i, group, text = found[pos]
        kind = kinds[pos]
        if kind == "placeholder":
            new_text[pos] = placeholder_text(group, text)
        elif kind == "diff":
            p = prev[pos]
            assert p is not None
            d = diff_fn(found[p][2], text)
            tokens = count_tokens(d)
            if prefer_shorter and tokens > msg_tokens[i] and not looks_like_diff(text):
                kinds[pos] = "full"  # the whole text is cheaper than its diff, and cannot be misread
                new_text[pos] = None
                return msg_tokens[i]
            new_text[pos] = d
            return tokens
        else:
            new_text[pos] = None
            return msg_tokens[i]
        return count_tokens(new_text[pos] or "")

    after_tokens = list(msg_tokens)
    for pos in range(len(found)):
        after_tokens[found[pos][0]] = settle(pos)
    total = sum(after_tokens)

    if budget_tokens is not None and total > budget_tokens:
        nxt: dict[int, int] = {}
        for members in group_members.values():
            nxt.update(itertools.pairwise(members))
        for pos in range(len(found) - 1):  # oldest first; the last observation always stays
            if total <= budget_tokens:
                break
            if kinds[pos] not in ("full", "diff"):
                continue
            kinds[pos] = "placeholder"
            i = found[pos][0]
            total += (t := settle(pos)) - after_tokens[i]
            after_tokens[i] = t
            succ = nxt.get(pos)
            if succ is not None and kinds[succ] == "diff":  # the group's next one becomes its anchor
                kinds[succ] = "full"
                j = found[succ][0]
                total += (t := settle(succ)) - after_tokens[j]
                after_tokens[j] = t
        if total > budget_tokens:
            raise BudgetError(
                "budget_tokens",
                f"{budget_tokens} tokens cannot hold the conversation even with every observation but the "
                f"last one dropped ({total} tokens needed)",
                needed=total,
            )

    out: list[Mapping[str, Any]] = list(messages)
    for pos, (i, _, _) in enumerate(found):
        text = new_text[pos]
        if text is not None:
            out[i] = _with_text(messages[i], text)
    observations = tuple(Observation(i, g, kinds[pos], t) for pos, (i, g, t) in enumerate(found))
    stats = CondenseStats(
        tokens_before=before,
        tokens_after=total,
        observations=len(found),
        observations_diffed=sum(1 for k in kinds if k == "diff"),
        placeholders=sum(1 for k in kinds if k == "placeholder"),
    )
    return Condensed(out, stats, observations)
