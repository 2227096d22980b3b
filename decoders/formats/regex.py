"""A parser for the supported subset of Python's regular expressions (full match, ASCII classes).

Supported (the result matches exactly what ``re.fullmatch(pattern, text, re.ASCII)`` matches):

- literal characters, any Unicode; escaped punctuation (``\\.``, ``\\*``, ``\\{``, ...);
- ``\\n \\t \\r \\f \\v \\a \\\\``, ``\\xhh``, ``\\uhhhh``, ``\\Uhhhhhhhh``, ``\\N{NAME}``, ``\\0`` octal;
- ``.`` (any character but a newline), ``\\d \\D \\w \\W \\s \\S`` with ASCII meaning
  (``\\d`` = ``[0-9]``, ``\\w`` = ``[A-Za-z0-9_]``, ``\\s`` = ``[ \\t\\n\\r\\f\\v]``; the negations include
  every non-ASCII character);
- classes ``[...]`` and ``[^...]`` with ranges and the escapes above (``\\b`` inside a class is a backspace);
- groups ``(...)``, ``(?:...)``, ``(?P<name>...)``; alternation ``|``;
- quantifiers ``* + ? {n} {n,} {,m} {n,m}`` and their lazy forms (``*?`` ... — the same strings match);
- ``^`` as the first character and ``$`` as the last (no-ops under full match).

Rejected with a :class:`FormatError`: backreferences, lookaround, anchors elsewhere (``\\A \\Z \\b \\B``),
inline flags, atomic groups, possessive quantifiers, conditional groups, comments, nested-set syntax,
counts above ``MAX_REPEAT``.
"""

from __future__ import annotations

import unicodedata

from decoders.formats.nodes import ANY_CHAR, Alt, Cat, Cls, FormatError, Lit, Node, Rep, char_class, negate

__all__ = ["MAX_REPEAT", "parse_regex"]

MAX_REPEAT = 1000
"""Largest count allowed in ``{n,m}``; bigger counts would build enormous automata."""

_DIGIT = char_class([(0x30, 0x39)])
_WORD = char_class([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
_SPACE = char_class([(0x09, 0x0D), (0x20, 0x20)])
_CLASS_ESCAPES = {
    "d": _DIGIT, "D": negate(_DIGIT), "w": _WORD, "W": negate(_WORD), "s": _SPACE, "S": negate(_SPACE),
}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "\\": "\\"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def _error(message: str, pos: int) -> FormatError:
    return FormatError(f"regex: {message} at position {pos}", "regex")


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.src = pattern
        self.pos = 0

    # -- helpers ----------------------------------------------------------------------------------------

    def peek(self, k: int = 0) -> str | None:
        i = self.pos + k
        return self.src[i] if i < len(self.src) else None

    def take(self) -> str:
        ch = self.src[self.pos]
        self.pos += 1
        return ch

    def at_end(self) -> bool:
        return self.pos >= len(self.src)

    # -- grammar ----------------------------------------------------------------------------------------

    def parse(self) -> Node:
        if self.peek() == "^":
            self.pos += 1
        node = self.alternation(depth=0)
        if not self.at_end():
            raise _error("unbalanced parenthesis", self.pos)
        return node

    def alternation(self, depth: int) -> Node:
        branches = [self.sequence(depth)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence(depth))
        return branches[0] if len(branches) == 1 else Alt(tuple(branches))

    def sequence(self, depth: int) -> Node:
        items: list[Node] = []
        while not self.at_end():
            ch = self.src[self.pos]
            if ch == "|" or (ch == ")" and depth > 0):
                break
            if ch == ")":
                raise _error("unbalanced parenthesis", self.pos)
            if ch == "$":
                if self.pos == len(self.src) - 1 and depth == 0:
                    self.pos += 1
                    break
                raise _error("'$' is supported only as the last character", self.pos)
            if ch == "^":
                raise _error("'^' is supported only as the first character", self.pos)
            if ch in "*+?" or (ch == "{" and self._quantifier_ahead()):
                raise _error("nothing to repeat", self.pos)
            atom = self.atom(depth)
            items.append(self.quantified(atom))
        return items[0] if len(items) == 1 else Cat(tuple(items))

    def quantified(self, atom: Node) -> Node:
        ch = self.peek()
        if ch is None:
            return atom
        start = self.pos
        if ch == "*":
            self.pos += 1
            low, high = 0, None
        elif ch == "+":
            self.pos += 1
            low, high = 1, None
        elif ch == "?":
            self.pos += 1
            low, high = 0, 1
        elif ch == "{" and self._quantifier_ahead():
            low, high = self._braces()
        else:
            return atom
        nxt = self.peek()
        if nxt == "?":
            self.pos += 1  # lazy: the same strings match
        elif nxt == "+":
            raise _error("possessive quantifiers are not supported", self.pos)
        if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self._quantifier_ahead()):
            raise _error("multiple repeat", self.pos)
        if high is not None and low > high:
            raise _error("min repeat greater than max repeat", start)
        return Rep(atom, low, high)

    def _quantifier_ahead(self) -> bool:
        # Python reads "{" as a quantifier only for {n}, {n,}, {,m}, {n,m} (and {,}); otherwise a literal.
        i = self.pos + 1
        src = self.src
        j = i
        while j < len(src) and src[j].isdigit() and src[j].isascii():
            j += 1
        if j < len(src) and src[j] == "}":
            return j > i
        if j >= len(src) or src[j] != ",":
            return False
        j += 1
        while j < len(src) and src[j].isdigit() and src[j].isascii():
            j += 1
        return j < len(src) and src[j] == "}"

    def _braces(self) -> tuple[int, int | None]:
        start = self.pos
        close = self.src.index("}", self.pos)
        body = self.src[self.pos + 1 : close]
        self.pos = close + 1
        if "," in body:
            lo_s, hi_s = body.split(",", 1)
            low = int(lo_s) if lo_s else 0
            high = int(hi_s) if hi_s else None
        else:
            low = high = int(body)
        if low > MAX_REPEAT or (high is not None and high > MAX_REPEAT):
            raise _error(f"repeat counts above {MAX_REPEAT} are not supported", start)
        return low, high

    def atom(self, depth: int) -> Node:
        pos = self.pos
        ch = self.take()
        if ch == "(":
            return self.group(depth, pos)
        if ch == "[":
            return self.char_set(pos)
        if ch == ".":
            return ANY_CHAR
        if ch == "\\":
            return self.escape(pos, in_class=False)
        return _literal(ch, pos)

    def group(self, depth: int, pos: int) -> Node:
        if self.peek() == "?":
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.src.startswith("?P<", self.pos):
                close = self.src.find(">", self.pos)
                name = self.src[self.pos + 3 : close] if close > 0 else ""
                if not name.isidentifier():
                    raise _error("bad group name", pos)
                self.pos = close + 1
            else:
                raise _error("only (...), (?:...) and (?P<name>...) groups are supported "
                             "(no lookaround, flags, atomic, conditional or comment groups)", pos)
        node = self.alternation(depth + 1)
        if self.peek() != ")":
            raise _error("missing ), unterminated subpattern", pos)
        self.pos += 1
        return node

    def escape(self, pos: int, in_class: bool) -> Node:
        if self.at_end():
            raise _error("bad escape (end of pattern)", pos)
        ch = self.take()
        if ch in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[ch]
        if ch in _CHAR_ESCAPES:
            return Lit(_CHAR_ESCAPES[ch])
        if ch == "b" and in_class:
            return Lit("\b")
        if ch in _HEX_ESCAPES:
            n = _HEX_ESCAPES[ch]
            digits = self.src[self.pos : self.pos + n]
            if len(digits) != n or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise _error(f"incomplete escape \\{ch}{digits}", pos)
            self.pos += n
            if int(digits, 16) > 0x10FFFF:
                raise _error(f"bad escape \\{ch}{digits}", pos)
            return _literal(chr(int(digits, 16)), pos)
        if ch == "N":
            if self.peek() != "{" or "}" not in self.src[self.pos :]:
                raise _error("missing {NAME} after \\N", pos)
            close = self.src.index("}", self.pos)
            name = self.src[self.pos + 1 : close]
            try:
                char = unicodedata.lookup(name)
            except KeyError:
                raise _error(f"undefined character name {name!r}", pos) from None
            self.pos = close + 1
            return _literal(char, pos)
        if ch == "0":
            digits = ""
            while len(digits) < 2 and (self.peek() or "x") in "01234567":
                digits += self.take()
            return Lit(chr(int(digits or "0", 8)))
        if ch.isdigit():
            raise _error("backreferences are not supported", pos)
        if ch in "AZbB":
            raise _error(f"the anchor \\{ch} is not supported (the whole output must match)", pos)
        if ch.isascii() and ch.isalnum():
            raise _error(f"bad escape \\{ch}", pos)
        return _literal(ch, pos)

    def char_set(self, pos: int) -> Node:
        negated = False
        if self.peek() == "^":
            negated = True
            self.pos += 1
        if self.peek() == "[":
            raise _error("nested sets are not supported (write \\[ for a literal bracket)", self.pos)
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            if self.at_end():
                raise _error("unterminated character set", pos)
            item_pos = self.pos
            ch = self.take()
            if ch == "]" and not first:
                break
            first = False
            lo = self._class_item(ch, item_pos)
            if self.peek() == "-" and self.peek(1) not in (None, "]"):
                self.pos += 1
                hi_pos = self.pos
                hi = self._class_item(self.take(), hi_pos)
                if not isinstance(lo, int) or not isinstance(hi, int):
                    raise _error("bad character range", item_pos)
                if hi < lo:
                    raise _error("bad character range (reversed)", item_pos)
                ranges.append((lo, hi))
            elif isinstance(lo, int):
                ranges.append((lo, lo))
            else:
                ranges.extend(lo.ranges)
        cls = char_class(ranges)
        return negate(cls) if negated else cls

    def _class_item(self, ch: str, pos: int) -> int | Cls:
        if ch == "\\":
            node = self.escape(pos, in_class=True)
            if isinstance(node, Cls):
                return node
            assert isinstance(node, Lit) and len(node.text) == 1
            return ord(node.text)
        if ch in "-&~|" and self.peek() == ch:
            raise _error(f"set operations ({ch}{ch}) are not supported", pos)
        if ch == "[" and self.peek() in (":", "=", "."):
            raise _error("POSIX classes are not supported", pos)
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise _error("surrogate characters cannot be generated", pos)
        return ord(ch)


def _literal(ch: str, pos: int) -> Node:
    if 0xD800 <= ord(ch) <= 0xDFFF:
        raise _error("surrogate characters cannot be generated", pos)
    return Lit(ch)


def parse_regex(pattern: str) -> Node:
    """Parse ``pattern`` (the supported subset, see the module docs) into a syntax tree."""
    if not isinstance(pattern, str):
        raise FormatError("regex must be a string", "regex")
    return _Parser(pattern).parse()

