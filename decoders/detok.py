"""Incremental detokenisation and stop-string handling for streamed text deltas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["IncrementalDetokenizer", "TextStream"]

_CONTEXT = 6  # prompt tokens decoded as left context, so SentencePiece's leading "▁" becomes a space
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing token list into text deltas by prefix diff.

    Each push decodes a short window twice — up to the last emitted token, and up to the new one —
    and emits the difference. Text ending in U+FFFD (an incomplete UTF-8 sequence: a byte-level or
    byte-fallback token split a character) is held back until the character completes.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]) -> None:
        self._tok = tokenizer
        self._ids: list[int] = list(prompt_ids[-_CONTEXT:])
        self._prefix = 0  # window start
        self._read = len(self._ids)  # tokens up to here have been emitted as text

    def _decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def push(self, token_id: int) -> str:
        """Add a token; return the newly complete text (possibly empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Return whatever is still held back (may contain U+FFFD for truly invalid bytes)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :]


class TextStream:
    """Detokenised text with stop strings: releases only text that cannot be part of a stop string.

    ``push`` returns the delta safe to stream now; once a stop string is found, ``stopped`` holds it,
    the text ends just before it, and further pushes return "".
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], stop: Sequence[str]) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self._stop = tuple(stop)
        self._text = ""  # all text decoded so far (up to the stop string, once found)
        self._sent = 0  # chars of _text already released
        self.stopped: str | None = None

    @property
    def text(self) -> str:
        """The full text so far, including any held-back tail."""
        return self._text

    def push(self, token_id: int) -> str:
        if self.stopped is not None:
            return ""
        return self._add(self._detok.push(token_id), final=False)

    def flush(self) -> str:
        """At the end of generation: release everything held back."""
        if self.stopped is not None:
            return ""
        return self._add(self._detok.flush(), final=True)

    def _add(self, chunk: str, final: bool) -> str:
        if not chunk and not final:
            return ""
        start = max(0, len(self._text) - max((len(s) for s in self._stop), default=0) + 1)
        self._text += chunk
        # earliest stop string that now appears (it may straddle the previous chunk)
        hits = [(i, s) for s in self._stop if (i := self._text.find(s, start)) >= 0]
        if hits:
            cut, self.stopped = min(hits)
            self._text = self._text[:cut]
            end = cut
        elif final:
            end = len(self._text)
        else:
            end = len(self._text) - self._held_back()
        delta = self._text[self._sent : end]
        self._sent = max(self._sent, end)
        return delta

    def _held_back(self) -> int:
        # longest tail of the text that is a proper prefix of some stop string
        longest = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self._text)), longest, -1):
                if self._text.endswith(s[:n]):
                    longest = n
                    break
        return longest
