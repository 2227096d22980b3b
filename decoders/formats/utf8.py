"""Code point ranges as sequences of UTF-8 byte ranges, so character classes become byte automata."""

from __future__ import annotations

__all__ = ["utf8_sequences"]

# Largest code point encoded with 1, 2, 3 and 4 bytes.
_LENGTH_MAX = (0x7F, 0x7FF, 0xFFFF, 0x10FFFF)

ByteRanges = tuple[tuple[int, int], ...]


def _encode(cp: int) -> bytes:
    return chr(cp).encode("utf-8")


def _split(lo: int, hi: int, out: list[ByteRanges]) -> None:
    # Same encoded length assumed. Cut the range until every byte position varies independently, i.e.
    # for each continuation depth i the range either stays inside one 64**i block or covers whole blocks.
    n = len(_encode(lo))
    for i in range(1, n):
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m != 0:
                _split(lo, lo | m, out)
                _split((lo | m) + 1, hi, out)
                return
            if hi & m != m:
                _split(lo, (hi & ~m) - 1, out)
                _split(hi & ~m, hi, out)
                return
    a, b = _encode(lo), _encode(hi)
    out.append(tuple(zip(a, b, strict=True)))


def utf8_sequences(ranges: tuple[tuple[int, int], ...]) -> list[ByteRanges]:
    """Byte-range sequences whose union is exactly the UTF-8 encodings of the given code points.

    ``ranges`` are inclusive code point ranges without surrogates. Each result item is a tuple of
    (low, high) byte ranges, one per byte of the encoding; e.g. U+0080..U+07FF gives
    ``((0xC2, 0xDF), (0x80, 0xBF))``.
    """
    out: list[ByteRanges] = []
    for lo, hi in ranges:
        start = lo
        for top in _LENGTH_MAX:
            if start > hi:
                break
            if start > top:
                continue
            end = min(hi, top)
            _split(start, end, out)
            start = end + 1
    return out
