"""USCD's lame prompt: the request's prompt without its input-output examples (torch-free).

Rules, in order: the client's ``lame_prompt``; for chat requests, the few-shot user/assistant turns before
the final user message dropped (system messages kept); for code prompts, HumanEval-style ``>>>`` doctest
examples deleted from docstrings, else MBPP-style test asserts after the function dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from decoders.processor import DecoderContext
from decoders.uscd.options import UscdOptionError, UscdOptions

__all__ = ["RULES", "LamePrompt", "build_lame_prompt", "drop_chat_examples", "drop_doctests", "drop_test_asserts"]

RULES = ("client_text", "client_ids", "chat_examples", "doctest", "test_asserts")
"""``stats.lame_prompt_rule`` values: which rule built the lame prompt."""

_P = "promptwire.decoder.lame_prompt"
_SYSTEM_ROLES = ("system", "developer")
_EXAMPLE_INTRO = re.compile(r"^\s*(for\s+)?(an?\s+)?examples?\s*:?\s*$", re.IGNORECASE)
_QUOTES = ('"""', "'''")


@dataclass(frozen=True)
class LamePrompt:
    ids: tuple[int, ...]
    rule: str
    """One of :data:`RULES`."""
    removed_tokens: int
    """Main prompt tokens minus lame prompt tokens (what the rule removed; negative if a client's is longer)."""


def drop_doctests(code: str) -> str:
    """Delete ``>>>`` examples (with ``...`` continuations and their expected output, up to a blank line,
    the next example or the docstring's end) and an "Example(s):" line introducing them."""
    lines = code.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        while out and _EXAMPLE_INTRO.match(out[-1]):
            out.pop()
        i += 1  # the >>> line
        while i < len(lines):
            stripped = lines[i].strip()
            if not stripped or stripped.startswith(">>>"):
                break
            if stripped.startswith(_QUOTES):
                break  # the docstring closes here
            if stripped.endswith(_QUOTES):  # expected output and the closing quotes on one line
                indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
                lines[i] = indent + stripped[-3:]
                break
            i += 1
    return "\n".join(out)


def drop_test_asserts(code: str) -> str:
    """Delete top-level ``assert`` lines (MBPP's tests after the function); asserts inside a body stay."""
    return "\n".join(line for line in code.split("\n") if not re.match(r"assert\b", line))


def drop_chat_examples(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Drop every turn before the final user message except system messages (the few-shot pairs)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    if last < 0:
        return list(messages)
    return [m for m in messages[:last] if m.get("role") in _SYSTEM_ROLES] + list(messages[last:])


def _code_rule(text: str) -> tuple[str, str] | None:
    for rule, fn in (("doctest", drop_doctests), ("test_asserts", drop_test_asserts)):
        lame = fn(text)
        if lame != text and lame.strip():
            return rule, lame
    return None


def build_lame_prompt(opts: UscdOptions, ctx: DecoderContext) -> LamePrompt:
    """The lame prompt's token ids for this request, and which rule built it; :class:`UscdOptionError`
    (naming ``promptwire.decoder.lame_prompt``) when no rule applies or the result equals the main prompt."""
    main = ctx.prompt_ids
    messages = ctx.messages
    rule: str
    given = opts.lame_prompt
    if isinstance(given, tuple):
        rule, ids = "client_ids", list(given)
        if min(ids) < 0 or max(ids) >= ctx.vocab_size:
            raise UscdOptionError(f"lame_prompt token ids must be in [0, {ctx.vocab_size})", _P)
    elif isinstance(given, str):
        rule = "client_text"
        if messages is None:
            ids = ctx.encode(given)
        else:  # rendered as the conversation would be: system messages, then this as the user's turn
            system = [m for m in messages if m.get("role") in _SYSTEM_ROLES]
            ids = ctx.chat_prompt([*system, {"role": "user", "content": given}])
    elif messages is not None:
        lame_messages = drop_chat_examples(messages)
        if len(lame_messages) < len(messages):
            rule, ids = "chat_examples", ctx.chat_prompt(lame_messages)
        else:
            last = max(i for i, m in enumerate(messages) if m.get("role") == "user") if any(
                m.get("role") == "user" for m in messages) else -1
            content = messages[last].get("content") if last >= 0 else None
            found = _code_rule(content) if isinstance(content, str) else None
            if found is None:
                raise UscdOptionError(
                    "no few-shot examples to remove (no user/assistant turns before the final user message, no "
                    ">>> doctest examples or test asserts in it); give lame_prompt", _P)
            rule = found[0]
            ids = ctx.chat_prompt([*messages[:last], {**messages[last], "content": found[1]}, *messages[last + 1:]])
    elif ctx.prompt_text is not None:
        found = _code_rule(ctx.prompt_text)
        if found is None:
            raise UscdOptionError(
                "no examples to remove from the prompt (no >>> doctest examples or test asserts); give lame_prompt",
                _P)
        rule, ids = found[0], ctx.encode(found[1])
    else:
        raise UscdOptionError("a token-id prompt needs an explicit lame_prompt", _P)
    if not ids:
        raise UscdOptionError("the lame prompt is empty", _P)
    if tuple(ids) == tuple(main):
        raise UscdOptionError("the lame prompt equals the prompt: there is nothing to contrast", _P)
    return LamePrompt(tuple(int(t) for t in ids), rule, len(main) - len(ids))
