"""Line diffs exactly as the diff-history reference makes them (difflib, no context, no headers), and back."""

from __future__ import annotations

import difflib
import itertools
import re

from compressors.diff_history.errors import PatchError

__all__ = ["apply", "diff", "normalise"]

# difflib's range format: "start" for one line, "start,length" otherwise (an empty range names the
# line before it, so "-3,0" means "after old line 3")
_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def normalise(text: str) -> str:
    """The text a diff carries: ``text.strip()`` with every line break written as ``"\\n"``.

    This is all that :func:`apply` can rebuild. Lost against the original: whitespace at the very
    start and end (``str.strip``: spaces, tabs, blank lines, a final newline, and the other
    Unicode whitespace such as U+00A0, U+3000, U+001C-U+001F), and which line break each line had
    (``str.splitlines`` also breaks at ``\\r\\n``, ``\\r``, ``\\v``, ``\\f``, U+001C-U+001E, U+0085,
    U+2028 and U+2029; all come back as ``\\n``). Blank lines inside the text, indentation and
    trailing whitespace of inner lines are kept."""
    return "\n".join(text.strip().splitlines())


def diff(a: str, b: str, n: int = 0) -> str:
    """Unified diff from ``a`` to ``b`` as the reference's ``get_diff`` makes it.

    ``difflib.unified_diff`` over ``a.strip().splitlines()`` and ``b.strip().splitlines()`` with
    ``n`` context lines (0 by default), the two file header lines dropped, the ``@@`` hunk headers
    and ``-``/``+`` lines kept, joined with ``"\\n"``. Identical texts (after normalising) give ``""``.
    """
    lines = difflib.unified_diff(
        a.strip().splitlines(), b.strip().splitlines(), fromfile="file1", tofile="file2", lineterm="", n=n
    )
    # the reference drops the first two lines by position ("--- file1", "+++ file2"), never by prefix
    return "\n".join(itertools.islice(lines, 2, None))


def apply(a: str, d: str, param: str = "diff") -> str:
    """Rebuild ``b`` from ``a`` and ``d = diff(a, b)``: returns ``normalise(b)``.

    Every removed and context line is checked against ``a``, and every hunk's line counts against
    its header, so a diff made from another text raises :class:`PatchError` (naming ``param``)
    instead of producing a wrong text."""
    src = a.strip().splitlines()
    if not d:
        return "\n".join(src)
    lines = d.split("\n")  # diff lines come from splitlines(), so none holds a "\n" of its own
    out: list[str] = []
    pos = 0  # next source line not yet copied or consumed
    i = 0
    while i < len(lines):
        m = _HUNK.fullmatch(lines[i])
        if m is None:
            raise PatchError(
                param, f"line {i + 1}: expected a hunk header '@@ -a,b +c,d @@', got {lines[i][:40]!r}"
            )
        old_len = 1 if m[2] is None else int(m[2])
        new_len = 1 if m[4] is None else int(m[4])
        start = int(m[1]) - 1 if old_len else int(m[1])
        if start < pos or start + old_len > len(src):
            raise PatchError(
                param, f"line {i + 1}: hunk at old line {m[1]} is out of order or past the text's end"
            )
        out.extend(src[pos:start])
        pos = start
        new_start = int(m[3]) - 1 if new_len else int(m[3])
        if new_start != len(out):
            raise PatchError(
                param, f"line {i + 1}: hunk says new line {m[3]}, the text is at line {len(out) + 1}"
            )
        i += 1
        old_seen = new_seen = 0
        while old_seen < old_len or new_seen < new_len:
            if i >= len(lines):
                raise PatchError(param, "the diff ends inside a hunk")
            tag, body = lines[i][:1], lines[i][1:]
            if tag == "+":
                out.append(body)
                new_seen += 1
            elif tag in ("-", " "):
                if pos >= len(src) or src[pos] != body:
                    raise PatchError(param, f"line {i + 1}: does not match old line {pos + 1} of the text")
                pos += 1
                old_seen += 1
                if tag == " ":
                    out.append(body)
                    new_seen += 1
            else:
                raise PatchError(param, f"line {i + 1}: expected a line starting with '+', '-' or ' '")
            if old_seen > old_len or new_seen > new_len:
                raise PatchError(param, f"line {i + 1}: more lines than the hunk header says")
            i += 1
    out.extend(src[pos:])
    return "\n".join(out)
