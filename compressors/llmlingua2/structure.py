"""Structure awareness: inline <pw:keep>/<pw:compress> markers and protected spans (code, JSON, URLs, ids, numbers)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = ["Protections", "Span", "block_ranges", "split_markers", "token_ranges"]

_MARKER = re.compile(r"<pw:(keep|compress)>(.*?)</pw:\1>", re.DOTALL)
_FENCE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`]+|\bwww\.[^\s<>\"'`]+|\b[\w.+-]+@[\w-]+\.[\w.-]+")
# snake_case, camelCase / PascalCase with an inner capital, dotted paths, and words mixing letters and digits
_IDENT = re.compile(
    r"\b(?:[A-Za-z_][A-Za-z0-9]*_[A-Za-z0-9_]*"
    r"|[a-z]+[A-Z][A-Za-z0-9]*"
    r"|[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*"
    r"|[A-Za-z]+[0-9][A-Za-z0-9]*"
    r"|[0-9]+[A-Za-z][A-Za-z0-9]*)\b"
)
_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?%?")


@dataclass(frozen=True)
class Protections:
    """Which structures are never compressed (each can be turned off)."""

    code: bool = True
    """Fenced code blocks and inline `code`."""
    json: bool = True
    """JSON objects and arrays that parse."""
    urls: bool = True
    """URLs and e-mail addresses."""
    identifiers: bool = True
    """snake_case, camelCase, and alphanumerics with digits (v2, sha256, user_id)."""
    numbers: bool = True


@dataclass(frozen=True)
class Span:
    """A piece of a message: compressible or passed through verbatim."""

    text: str
    compress: bool


def split_markers(text: str, default_compress: bool = True) -> list[Span]:
    """Split TEXT on <pw:keep>/<pw:compress> markers (removed from the output).

    When any <pw:compress> marker is present only the marked spans are compressible; <pw:keep>
    spans never are; elsewhere DEFAULT_COMPRESS decides.
    """
    has_compress = "<pw:compress>" in text
    outside = default_compress and not has_compress
    spans: list[Span] = []
    pos = 0
    for m in _MARKER.finditer(text):
        if m.start() > pos:
            spans.append(Span(text[pos : m.start()], outside))
        spans.append(Span(m.group(2), m.group(1) == "compress"))
        pos = m.end()
    if pos < len(text):
        spans.append(Span(text[pos:], outside))
    return [s for s in spans if s.text]


def _json_ranges(text: str) -> list[tuple[int, int]]:
    dec = json.JSONDecoder()
    out: list[tuple[int, int]] = []
    i = 0
    n = len(text)
    while i < n:
        j = min((k for k in (text.find("{", i), text.find("[", i)) if k >= 0), default=-1)
        if j < 0:
            break
        try:
            _, end = dec.raw_decode(text, j)
        except ValueError:
            i = j + 1
            continue
        if end - j > 2:
            out.append((j, end))
        i = end
    return out


def block_ranges(text: str, prot: Protections) -> list[tuple[int, int]]:
    """Char ranges passed through whole: code blocks, inline code, JSON."""
    blocks: list[tuple[int, int]] = []
    if prot.code:
        blocks += [m.span() for m in _FENCE.finditer(text)]
        blocks += [m.span() for m in _INLINE_CODE.finditer(text)]
    if prot.json:
        blocks += _json_ranges(text)
    return _merge(blocks)


def token_ranges(text: str, prot: Protections) -> list[tuple[int, int]]:
    """Char ranges whose words are force-kept: URLs, identifiers, numbers."""
    tokens: list[tuple[int, int]] = []
    if prot.urls:
        tokens += [m.span() for m in _URL.finditer(text)]
    if prot.identifiers:
        tokens += [m.span() for m in _IDENT.finditer(text)]
    if prot.numbers:
        tokens += [m.span() for m in _NUMBER.finditer(text)]
    return _merge(tokens)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out
