"""The vocabulary as a byte matrix, and a byte automaton run over every token at once (vectorised)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from decoders.formats.bytedfa import DEAD, ByteDFA
from decoders.resources import ResourceCache
from decoders.trie.vocab import (
    token_bytes as id_bytes,  # the bytes each id spells (the trie decoder's byte trie not built)
)

__all__ = ["Lifted", "TokenBytes", "token_bytes"]


@dataclass(frozen=True)
class Lifted:
    """Where each token leads from one byte state (arrays over ``TokenBytes.ids``)."""

    end: np.ndarray
    """(n,) int32: the byte state after the token's bytes (0 = dead)."""
    first_slot: np.ndarray
    """(n,) int16: the text slot the token's first byte belongs to, or -1."""
    last_slot: np.ndarray
    """(n,) int16: the text slot its last byte belongs to, or -1."""
    all_slot: np.ndarray
    """(n,) bool: every byte belongs to the same text slot."""


class TokenBytes:
    """Every token that spells text (special and empty tokens left out), as a padded byte matrix.

    Tokens are sorted by byte length, longest first, so the automaton's step ``i`` only touches the
    prefix of rows still that long.
    """

    def __init__(self, tokenizer: Any) -> None:
        pieces = id_bytes(tokenizer)
        self.vocab_size = len(pieces)
        self.pieces = pieces
        self.piece_set = frozenset(p for p in pieces if p)
        kept = [(len(p), tid) for tid, p in enumerate(pieces) if p]
        kept.sort(key=lambda t: (-t[0], t[1]))
        self.ids = np.asarray([tid for _, tid in kept], dtype=np.int64)  # (n,)
        self.lens = np.asarray([n for n, _ in kept], dtype=np.int64)  # (n,)
        width = int(self.lens[0]) if len(kept) else 0
        flat = np.frombuffer(b"".join(pieces[tid] or b"" for _, tid in kept), dtype=np.uint8)  # (sum lens,)
        rows = np.repeat(np.arange(len(kept)), self.lens)
        cols = np.arange(flat.size) - np.repeat(np.cumsum(self.lens) - self.lens, self.lens)
        self.matrix = np.zeros((len(kept), width), dtype=np.uint8)  # (n, L)
        self.matrix[rows, cols] = flat
        self.columns = [np.ascontiguousarray(self.matrix[:, i]).astype(np.int32) for i in range(width)]  # L x (n,)
        # active[i]: how many tokens have more than i bytes (a prefix of the rows, by the sort).
        self.active = np.searchsorted(-self.lens, -np.arange(width), side="left").astype(np.int64)

    def spellable(self, data: bytes) -> bool:
        """Whether some token sequence spells ``data`` exactly."""
        n = len(data)
        longest = int(self.lens[0]) if self.lens.size else 0
        reach = [False] * (n + 1)
        reach[0] = True
        for i in range(n):
            if reach[i]:
                for j in range(i + 1, min(n, i + longest) + 1):
                    if data[i:j] in self.piece_set:
                        reach[j] = True
        return reach[n]

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes * 5 + self.ids.nbytes + self.lens.nbytes)

    def run(self, dfa: ByteDFA, state: int) -> Lifted:
        """Run every token's bytes through ``dfa`` from ``state``.

        Step i reads column i for the tokens still alive and at least i+1 bytes long; tokens die fast
        in literal text, so most steps touch few rows.
        """
        n = len(self.ids)
        trans = dfa.trans.reshape(-1)  # (Q*256,)
        col = self.columns[0] if n else np.empty(0, dtype=np.int32)
        cur = trans[state * 256 + col]  # (n,)
        tagged = bool((dfa.slot_byte >= 0).any())
        if tagged:
            tags = dfa.slot_byte.reshape(-1)
            first = tags[state * 256 + col]  # (n,)
            last = first.copy()
            same = first >= 0
        rows = np.flatnonzero(cur != DEAD)
        for i in range(1, self.matrix.shape[1]):
            rows = rows[: int(np.searchsorted(rows, self.active[i]))]
            if rows.size == 0:
                break
            flat = cur[rows] * 256 + self.columns[i][rows]  # (k,)
            if tagged:
                tag = tags[flat]
                same[rows] &= tag == first[rows]
                last[rows] = tag
            nxt = trans[flat]
            cur[rows] = nxt
            rows = rows[nxt != DEAD]
        if not tagged:
            first = last = np.full(n, -1, dtype=np.int16)
            same = np.zeros(n, dtype=bool)
        return Lifted(cur, first, last, same)


def token_bytes(tokenizer: Any, resources: ResourceCache | None = None) -> TokenBytes:
    """The tokenizer's :class:`TokenBytes`, kept in the model's ``resources`` when given (built once per model)."""
    if resources is None:
        return TokenBytes(tokenizer)
    tb: TokenBytes = resources.get_or_build(("formats.tokens", id(tokenizer)), lambda: TokenBytes(tokenizer))
    return tb
