"""Leetspeak: the letters a e i o s t become 4 3 1 0 5 7, and back where the digits sit inside words.

Rules (docs/conjugate.md restates them with examples):

- ``encode`` replaces a e i o s t (either case) by 4 3 1 0 5 7. Every other character — other
  letters with their case, digits, punctuation, spaces, any script — is kept as it is.
- ``decode`` looks at words: maximal runs of letters and digits (any script), apostrophes inside
  included (``5m17h'5``). In a word that also
  holds a Latin letter, the digits 4 3 1 0 5 7 become a e i o s t again; a run of digits alone
  (``2024``, ``3.14``, ``42``) and digits next to other scripts only (``2024年``) stay numbers.
- Case of the restored letters: upper when the word's remaining cased letters are all upper and
  there are two of them or the word does not start with its only one (``7H3`` → ``THE``, ``4P1`` →
  ``API``); otherwise lower, except that a word starting with a restored letter at the start of a
  sentence (start of text or line, or after ``.`` ``!`` ``?``, closing quotes and a space) is
  capitalised (``7h3 c47.`` → ``The cat.``).

What the round trip loses (``decode(encode(x)) != x``):

- words made only of a e i o s t: ``a I is it at as so to its sat set sit tea eat toss`` become numbers
  (``4 1 15 17 47 45 50 70 175 547 537 517 734 347 7055``) and stay numbers;
- digits that were already inside a word with letters: ``mp3`` → ``mpe``, ``COVID19`` → ``COVIDI9``,
  ``v1.0`` → ``vi.0``, ``4th`` → ``ath``;
- the case of a e i o s t where the rule above guesses wrong: ``Cat`` and ``CAT`` both encode to
  ``C47`` (decoded ``Cat``), ``This`` mid-sentence decodes to ``this``, ``NASA`` (``N454``) to ``Nasa``.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["decode", "encode"]

_ENCODE = str.maketrans("aeiostAEIOST", "431057431057")
_DECODE = {"4": "a", "3": "e", "1": "i", "0": "o", "5": "s", "7": "t"}
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")  # "5m17h'5" is one word
_OPENERS = "\"'“‘«([{¿¡*_"
_CLOSERS = "\"'”’»)]}*_"


def encode(text: str) -> str:
    """Leetspeak of ``text``: a e i o s t (either case) → 4 3 1 0 5 7; nothing else changes."""
    return text.translate(_ENCODE)


def _is_latin_letter(c: str) -> bool:
    return c.isalpha() and unicodedata.name(c, "").startswith("LATIN ")


def _sentence_start(text: str, start: int) -> bool:
    i = start
    while i > 0 and text[i - 1] in _OPENERS:  # "(7h3 ...", "«7h3 ..."
        i -= 1
    j = i
    while j > 0 and text[j - 1] in " \t":
        j -= 1
    if j == 0 or text[j - 1] in "\r\n":
        return True
    k = j
    while k > 0 and text[k - 1] in _CLOSERS:  # 'he said "no." 7h3n'
        k -= 1
    return k > 0 and text[k - 1] in ".!?" and j < i  # "end. 7h3" but not "3.14" or "e.g.7"


def _decode_word(word: str, text: str, start: int) -> str:
    if not any(c in _DECODE for c in word) or not any(_is_latin_letter(c) for c in word):
        return word
    cased = [c for c in word if c.isupper() or c.islower()]
    upper = bool(cased) and all(c.isupper() for c in cased) and (len(cased) >= 2 or not word[0].isalpha())
    out = [(_DECODE[c].upper() if upper else _DECODE[c]) if c in _DECODE else c for c in word]
    if not upper and word[0] in _DECODE and _sentence_start(text, start):
        out[0] = out[0].upper()
    return "".join(out)


def decode(text: str) -> str:
    """Undo ``encode`` where it can (module docstring): digits inside words become letters again."""
    return _WORD.sub(lambda m: _decode_word(m.group(), text, m.start()), text)
