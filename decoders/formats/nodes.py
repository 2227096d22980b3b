"""The character-level syntax tree that templates and regexes both compile to, and the format error."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ANY_CHAR",
    "MAX_CODEPOINT",
    "Alt",
    "Cat",
    "Cls",
    "FormatError",
    "Lit",
    "Node",
    "Rep",
    "Slot",
    "char_class",
    "negate",
]

MAX_CODEPOINT = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)


class FormatError(ValueError):
    """A format is malformed, outside the supported subset, or cannot be written with the model's tokens.

    ``kind`` is ``"template"`` or ``"regex"`` (the format option at fault); a decoder maps it to the
    request parameter ``promptwire.decoder.format.<kind>``.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Lit:
    """A literal string (matched as its UTF-8 bytes)."""

    text: str


@dataclass(frozen=True)
class Cls:
    """A set of code points as sorted, disjoint, non-adjacent inclusive ranges (surrogates excluded)."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Cat:
    """Concatenation."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    """Alternation (an empty tuple matches nothing)."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Rep:
    """``item`` repeated ``low`` to ``high`` times (``high`` None: unbounded)."""

    item: Node
    low: int
    high: int | None


@dataclass(frozen=True)
class Slot:
    """A template's free-text slot: ``item`` (one line of text) limited to ``max_tokens`` tokens.

    The limit is on tokens, so it is enforced by the token-level automaton, not here: a token counts
    toward the slot when at least one of its bytes falls inside the slot.
    """

    item: Node
    max_tokens: int


Node = Lit | Cls | Cat | Alt | Rep | Slot


def char_class(ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> Cls:
    """Normalise code point ranges: sort, merge overlapping and adjacent ones, drop the surrogates."""
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if lo > hi:
            continue
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    out: list[tuple[int, int]] = []
    s_lo, s_hi = _SURROGATES
    for lo, hi in merged:
        if hi < s_lo or lo > s_hi:
            out.append((lo, hi))
            continue
        if lo < s_lo:
            out.append((lo, s_lo - 1))
        if hi > s_hi:
            out.append((s_hi + 1, hi))
    return Cls(tuple(out))


def negate(cls: Cls) -> Cls:
    """Every code point (surrogates aside) not in ``cls``."""
    out: list[tuple[int, int]] = []
    nxt = 0
    for lo, hi in cls.ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODEPOINT:
        out.append((nxt, MAX_CODEPOINT))
    return char_class(out)


ANY_CHAR = negate(char_class([(ord("\n"), ord("\n"))]))
"""``.`` in a regex and the characters of a ``{text:N}`` slot: anything but a newline."""
