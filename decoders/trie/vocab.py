"""The bytes each token id spells, a byte trie over the vocabulary, and in-context canonical tokenisation."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from decoders.resources import ResourceCache

__all__ = ["NEVER", "VocabBytes", "token_bytes", "vocab_bytes"]

logger = logging.getLogger(__name__)

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
NEVER = 1 << 30  # "cannot be spelled" token count
_NEUTRAL_CONTEXT = "\n"  # used when the prompt ends in a special token (or is empty)


def _gpt2_byte_decoder() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-unicode table (the ByteLevel pre-tokenizer's alphabet).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _walk_decoders(spec: Any) -> list[dict[str, Any]]:
    if not isinstance(spec, dict):
        return []
    if spec.get("type") == "Sequence":
        return [d for sub in spec.get("decoders", []) for d in _walk_decoders(sub)]
    return [spec]


class VocabBytes:
    """Per token id, the exact bytes it contributes in the middle of a text (None: never generated as text).

    Built once per tokenizer. ``root`` / ``children`` / ``ends`` form a byte trie over all token byte
    strings, which the ``any`` mode walks jointly with a label trie to find every token that fits.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.pieces: list[bytes | None] = token_bytes(tokenizer)
        self.special: frozenset[int] = frozenset(i for i, p in enumerate(self.pieces) if p is None)
        # Byte trie over the vocabulary: node 0 is the root; ends[n] lists the token ids spelling node n.
        self.children: list[dict[int, int]] = [{}]
        self.ends: list[list[int]] = [[]]
        for tid, piece in enumerate(self.pieces):
            if not piece:
                continue
            node = 0
            for b in piece:
                nxt = self.children[node].get(b)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][b] = nxt
                    self.children.append({})
                    self.ends.append([])
                node = nxt
            self.ends[node].append(tid)

    @property
    def nbytes(self) -> int:
        """Approximate memory held (for the resource cache's budget)."""
        pieces = sum(len(p) + 40 for p in self.pieces if p is not None)
        return pieces + len(self.children) * 200 + sum(len(c) for c in self.children) * 100

    def spell(self, ids: Sequence[int]) -> bytes | None:
        """The bytes a token sequence spells in the middle of a text, or None if it has a special token."""
        out = bytearray()
        for i in ids:
            piece = self.pieces[i] if 0 <= i < len(self.pieces) else None
            if piece is None:
                return None
            out += piece
        return bytes(out)

    def suffix_costs(self, data: bytes) -> tuple[list[int], list[int]]:
        """For each i, the fewest tokens spelling ``data[i:]`` (a large number if impossible) and the first
        token of such a spelling (ties: the longest token; -1 if impossible)."""
        n = len(data)
        cost = [NEVER] * (n + 1)
        first = [-1] * (n + 1)
        cost[n] = 0
        for i in range(n - 1, -1, -1):
            node = 0
            for j in range(i, n):
                node = self.children[node].get(data[j], -1)
                if node < 0:
                    break
                if self.ends[node] and cost[j + 1] + 1 <= cost[i]:
                    cost[i] = cost[j + 1] + 1
                    first[i] = self.ends[node][0]
        return cost, first

    def shortest(self, data: bytes) -> list[int]:
        """Fewest tokens spelling ``data`` exactly (ties: longest first token); [] if impossible."""
        cost, first = self.suffix_costs(data)
        if cost[0] >= NEVER:
            return []
        ids, i = [], 0
        while i < len(data):
            ids.append(first[i])
            i += len(self.pieces[first[i]] or b"")
        return ids

    def context_text(self, prompt_ids: Sequence[int], max_tokens: int = 3) -> str:
        """The text of the prompt's tail (up to the last special token), the context labels follow."""
        tail = bytearray()
        for tid in reversed(prompt_ids[-max_tokens:]):
            piece = self.pieces[tid] if 0 <= tid < len(self.pieces) else None
            if piece is None:
                break
            tail[:0] = piece
        text = bytes(tail).decode("utf-8", errors="ignore")
        return text or _NEUTRAL_CONTEXT

    def canonical(self, context: str, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids as the tokenizer writes it right after ``context``.

        ``encode(context + text)`` minus ``encode(context)``, provided the context's tokens stay a
        prefix and the rest spells ``text`` exactly; otherwise (a merge across the boundary, or an
        added "▁"/space) the fewest-token spelling, so the result always spells the text byte for byte.
        """
        ctx_ids = self.tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        full = self.tokenizer([context + t for t in texts], add_special_tokens=False)["input_ids"]
        out: list[list[int]] = []
        fallbacks = 0
        for text, ids in zip(texts, full, strict=True):
            want = text.encode("utf-8")
            rest = list(ids[len(ctx_ids) :])
            if list(ids[: len(ctx_ids)]) != list(ctx_ids) or self.spell(rest) != want:
                rest = self.shortest(want)
                fallbacks += 1
            out.append(rest)
        if fallbacks:
            logger.debug("canonical tokenisation: %d of %d texts re-spelled at the boundary", fallbacks, len(texts))
        return out


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    n = len(tokenizer)
    vocab: dict[str, int] = tokenizer.get_vocab()
    by_id: list[str | None] = [None] * n
    for text, tid in vocab.items():
        if 0 <= tid < n:
            by_id[tid] = text
    special = set(getattr(tokenizer, "all_special_ids", []))
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    for tid, tok in added.items():
        if getattr(tok, "special", False):
            special.add(int(tid))
    kinds: set[str] = set()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str()).get("decoder")
        kinds = {str(d.get("type")) for d in _walk_decoders(spec)}
        for d in _walk_decoders(spec):
            if d.get("type") == "Replace" and d.get("content") == " ":
                kinds.add("Metaspace")
    byte_decoder = _gpt2_byte_decoder() if "ByteLevel" in kinds else None
    out: list[bytes | None] = []
    for tid, piece in enumerate(by_id):
        if piece is None or tid in special:
            out.append(None)
            continue
        if tid in added:  # non-special added tokens are written verbatim
            out.append(piece.encode("utf-8"))
        elif byte_decoder is not None:
            try:
                out.append(bytes(byte_decoder[c] for c in piece))
            except KeyError:
                out.append(piece.encode("utf-8"))
        elif (m := _BYTE_PIECE.match(piece)) and "ByteFallback" in kinds:
            out.append(bytes([int(m.group(1), 16)]))
        elif "Metaspace" in kinds:
            out.append(piece.replace("▁", " ").encode("utf-8"))
        else:  # WordPiece and other decoders: best effort
            out.append(tokenizer.convert_tokens_to_string([piece]).encode("utf-8"))
    return out


def vocab_bytes(tokenizer: Any, resources: ResourceCache | None = None) -> VocabBytes:
    """The tokenizer's :class:`VocabBytes`, kept in the model's ``resources`` when given (built once per model)."""
    if resources is None:
        return VocabBytes(tokenizer)
    vocab: VocabBytes = resources.get_or_build(("trie.vocab", id(tokenizer)), lambda: VocabBytes(tokenizer))
    return vocab
