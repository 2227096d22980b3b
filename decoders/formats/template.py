"""Format templates: literal text with typed slots, parsed into a syntax tree whose choices are tries.

Syntax (everything outside braces is literal, matched exactly, whitespace and newlines included):

=====================  ================================================================
``{int}``              an integer: ``-?[0-9]+``
``{number}``           a decimal number: ``-?[0-9]+(\\.[0-9]+)?``
``{choice:a|b|c}``     exactly one of the options (non-empty; no ``|``, ``{`` or ``}`` inside)
``{text:N}``           free text on one line (no newline), at most N tokens (1 <= N <= 4096)
``{{`` / ``}}``        a literal ``{`` / ``}``
=====================  ================================================================

A choice's options go into a character trie, so options sharing a prefix share its states
(``{choice:low|lower}`` reads ``low`` once). Text after a ``{text:N}`` slot must tell where the slot
ends: end the template there or continue with a newline (checked when the automaton is built).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from decoders.formats.nodes import ANY_CHAR, Alt, Cat, FormatError, Lit, Node, Rep, Slot, char_class

__all__ = ["MAX_TEXT_TOKENS", "SlotSpec", "parse_template", "template_regex", "template_slots"]

MAX_TEXT_TOKENS = 4096
_DIGITS = Rep(char_class([(0x30, 0x39)]), 1, None)
_SIGN = Rep(Lit("-"), 0, 1)
_INT = Cat((_SIGN, _DIGITS))
_NUMBER = Cat((_SIGN, _DIGITS, Rep(Cat((Lit("."), _DIGITS)), 0, 1)))
_SLOT = re.compile(r"(int|number|choice|text)(?::(.*))?$", re.DOTALL)


@dataclass(frozen=True)
class SlotSpec:
    """One parsed slot (``arg``: the choice options or the text token limit)."""

    kind: str
    options: tuple[str, ...] = ()
    max_tokens: int = 0


def _error(message: str) -> FormatError:
    return FormatError(f"template: {message}", "template")


def _split(template: str) -> list[str | SlotSpec]:
    """Literal runs (``{{``/``}}`` unescaped) and slots, in order."""
    parts: list[str | SlotSpec] = []
    buf: list[str] = []
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if ch == "{" and template.startswith("{{", i):
            buf.append("{")
            i += 2
        elif ch == "}" and template.startswith("}}", i):
            buf.append("}")
            i += 2
        elif ch == "}":
            raise _error(f"unmatched '}}' at position {i} (write '}}}}' for a literal brace)")
        elif ch == "{":
            close = template.find("}", i)
            if close < 0:
                raise _error(f"unclosed '{{' at position {i} (write '{{{{' for a literal brace)")
            body = template[i + 1 : close]
            if "{" in body:
                raise _error(f"'{{' inside a slot at position {i}")
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(_slot(body, i))
            i = close + 1
        else:
            buf.append(ch)
            i += 1
    if buf:
        parts.append("".join(buf))
    return parts


def _slot(body: str, pos: int) -> SlotSpec:
    m = _SLOT.match(body)
    if m is None:
        raise _error(f"unknown slot {{{body}}} at position {pos}; expected {{int}}, {{number}}, "
                     "{choice:a|b|...} or {text:N}")
    kind, arg = m.group(1), m.group(2)
    if kind in ("int", "number"):
        if arg is not None:
            raise _error(f"{{{kind}}} takes no argument (position {pos})")
        return SlotSpec(kind)
    if arg is None:
        raise _error(f"{{{kind}:...}} needs an argument (position {pos})")
    if kind == "choice":
        options = tuple(arg.split("|"))
        if any(not o for o in options):
            raise _error(f"empty option in {{choice:{arg}}} at position {pos}")
        if any(0xD800 <= ord(c) <= 0xDFFF for o in options for c in o):
            raise _error("surrogate characters cannot be generated")
        return SlotSpec(kind, options=tuple(dict.fromkeys(options)))
    if not arg.isascii() or not arg.isdigit() or not 1 <= int(arg) <= MAX_TEXT_TOKENS:
        raise _error(f"{{text:N}} needs 1 <= N <= {MAX_TEXT_TOKENS}, got {arg!r} (position {pos})")
    return SlotSpec(kind, max_tokens=int(arg))


def _trie(options: list[str]) -> Node:
    """Alternation of ``options`` shaped as a trie: one branch per distinct first character."""
    ends = "" in options
    heads: dict[str, list[str]] = {}
    for o in options:
        if o:
            heads.setdefault(o[0], []).append(o[1:])
    branches: list[Node] = []
    for head, rests in heads.items():
        # Collapse single-child chains into one literal, as a compacted trie does.
        prefix = head
        while len(rests) > 1 and all(rests) and len({r[0] for r in rests}) == 1:
            prefix += rests[0][0]
            rests = [r[1:] for r in rests]
        if len(rests) == 1:
            branches.append(Lit(prefix + rests[0]))
        else:
            branches.append(Cat((Lit(prefix), _trie(rests))))
    if ends:
        branches.append(Lit(""))
    return branches[0] if len(branches) == 1 else Alt(tuple(branches))


def template_slots(template: str) -> list[str | SlotSpec]:
    """The template split into literal strings and :class:`SlotSpec` s (raises FormatError)."""
    if not isinstance(template, str):
        raise _error("must be a string")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in template):
        raise _error("surrogate characters cannot be generated")
    return _split(template)


def parse_template(template: str) -> Node:
    """The template's syntax tree (see the module docs for the syntax)."""
    items: list[Node] = []
    for part in template_slots(template):
        if isinstance(part, str):
            items.append(Lit(part))
        elif part.kind == "int":
            items.append(_INT)
        elif part.kind == "number":
            items.append(_NUMBER)
        elif part.kind == "choice":
            items.append(_trie(list(part.options)))
        else:
            items.append(Slot(Rep(ANY_CHAR, 0, None), part.max_tokens))
    return items[0] if len(items) == 1 else Cat(tuple(items))


def template_regex(template: str) -> str:
    """A Python regex matching the same strings (``{text:N}`` becomes ``[^\\n]*``; the token limit is
    not a property of the string). Useful to check outputs with ``re.fullmatch``."""
    out: list[str] = []
    for part in template_slots(template):
        if isinstance(part, str):
            out.append(re.escape(part))
        elif part.kind == "int":
            out.append(r"-?[0-9]+")
        elif part.kind == "number":
            out.append(r"-?[0-9]+(?:\.[0-9]+)?")
        elif part.kind == "choice":
            out.append("(?:" + "|".join(re.escape(o) for o in part.options) + ")")
        else:
            out.append(r"[^\n]*")
    return "".join(out)
