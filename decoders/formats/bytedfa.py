"""Syntax tree -> byte-level NFA (UTF-8) -> minimal DFA, with the bytes of each text slot tagged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from decoders.formats.nodes import Alt, Cat, Cls, FormatError, Lit, Node, Rep, Slot
from decoders.formats.utf8 import utf8_sequences

__all__ = ["DEAD", "MAX_DFA_STATES", "ByteDFA", "compile_bytes"]

DEAD = 0
"""Index of the dead state in every :class:`ByteDFA` (absorbing, never accepting)."""
MAX_DFA_STATES = 20_000
"""Formats whose automaton needs more states than this are rejected as too complex."""


@dataclass(frozen=True)
class ByteDFA:
    """A deterministic automaton over bytes: state 0 is dead, ``start`` is where matching begins."""

    trans: np.ndarray
    """(Q, 256) int32: next state per byte."""
    accept: np.ndarray
    """(Q,) bool."""
    slot: np.ndarray
    """(Q,) int16: the text slot a state lies in (it may read that slot's bytes next), or -1."""
    slot_byte: np.ndarray
    """(Q, 256) int16: the slot whose text the byte belongs to when read in that state, or -1."""
    slot_limits: tuple[int, ...]
    """Per text slot, its token limit N."""
    start: int

    @property
    def num_states(self) -> int:
        return int(self.trans.shape[0])

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` is in the language (token limits of text slots aside)."""
        state = self.start
        for b in data:
            state = int(self.trans[state, b])
        return bool(self.accept[state])


class _NFA:
    """Thompson NFA: per state, epsilon targets and byte-range edges ``(lo, hi, target, slot)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int, int, int]]] = []
        self.slot_limits: list[int] = []
        self._slot = -1

    def new(self) -> int:
        self.eps.append([])
        self.edges.append([])
        if len(self.eps) > 20 * MAX_DFA_STATES:
            raise FormatError(f"{self.kind}: too complex (more than {20 * MAX_DFA_STATES} NFA states)", self.kind)
        return len(self.eps) - 1

    def edge(self, src: int, lo: int, hi: int, dst: int) -> None:
        self.edges[src].append((lo, hi, dst, self._slot))

    def build(self, node: Node, start: int) -> int:
        """Add ``node`` starting at ``start``; returns its end state."""
        if isinstance(node, Lit):
            cur = start
            for b in node.text.encode("utf-8"):
                nxt = self.new()
                self.edge(cur, b, b, nxt)
                cur = nxt
            return cur
        if isinstance(node, Cls):
            end = self.new()
            for seq in utf8_sequences(node.ranges):
                cur = start
                for i, (lo, hi) in enumerate(seq):
                    nxt = end if i == len(seq) - 1 else self.new()
                    self.edge(cur, lo, hi, nxt)
                    cur = nxt
            return end
        if isinstance(node, Cat):
            cur = start
            for item in node.items:
                cur = self.build(item, cur)
            return cur
        if isinstance(node, Alt):
            end = self.new()
            for item in node.items:
                branch = self.new()
                self.eps[start].append(branch)
                self.eps[self.build(item, branch)].append(end)
            return end
        if isinstance(node, Rep):
            cur = start
            for _ in range(node.low):
                cur = self.build(node.item, cur)
            if node.high is None:
                loop = self.new()
                self.eps[cur].append(loop)
                body = self.new()
                self.eps[loop].append(body)
                self.eps[self.build(node.item, body)].append(loop)
                return loop
            end = self.new()
            self.eps[cur].append(end)
            for _ in range(node.high - node.low):
                nxt = self.build(node.item, cur)
                self.eps[nxt].append(end)
                cur = nxt
            return end
        assert isinstance(node, Slot)
        if self._slot >= 0:
            raise FormatError(f"{self.kind}: text slots cannot nest", self.kind)
        self._slot = len(self.slot_limits)
        self.slot_limits.append(node.max_tokens)
        inner = self.new()
        self.eps[start].append(inner)
        end = self.build(node.item, inner)
        self._slot = -1
        out = self.new()
        self.eps[end].append(out)
        return out


def _closure(nfa: _NFA, states: set[int]) -> frozenset[int]:
    stack = list(states)
    seen = set(states)
    while stack:
        for nxt in nfa.eps[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return frozenset(seen)


def _determinise(nfa: _NFA, start: int, final: int) -> ByteDFA:
    sets: list[frozenset[int]] = [frozenset(), _closure(nfa, {start})]
    index = {sets[0]: 0, sets[1]: 1}
    trans_rows: list[list[int]] = [[0] * 256]
    tag_rows: list[list[int]] = [[-1] * 256]
    i = 1
    while i < len(sets):
        buckets: list[set[int]] = [set() for _ in range(256)]
        tags = [-2] * 256
        for s in sets[i]:
            for lo, hi, dst, slot in nfa.edges[s]:
                for b in range(lo, hi + 1):
                    buckets[b].add(dst)
                    if tags[b] == -2:
                        tags[b] = slot
                    elif tags[b] != slot:
                        raise FormatError(
                            f"{nfa.kind}: the end of a {{text:N}} slot is ambiguous (byte {b:#04x} could belong to "
                            "the text or to what follows); end the template after the slot or follow it "
                            "with a newline", nfa.kind)
        row = [0] * 256
        for b in range(256):
            if buckets[b]:
                key = _closure(nfa, buckets[b])
                j = index.get(key)
                if j is None:
                    j = index[key] = len(sets)
                    sets.append(key)
                    if len(sets) > MAX_DFA_STATES:
                        raise FormatError(f"{nfa.kind}: too complex (more than {MAX_DFA_STATES} automaton "
                                          "states)", nfa.kind)
                row[b] = j
        trans_rows.append(row)
        tag_rows.append([t if t >= 0 else -1 for t in tags])
        i += 1
    trans = np.asarray(trans_rows, dtype=np.int32)
    slot_byte = np.asarray(tag_rows, dtype=np.int16)
    accept = np.asarray([final in s for s in sets], dtype=bool)
    slot = slot_byte.max(axis=1).astype(np.int16)
    return ByteDFA(trans, accept, slot, slot_byte, tuple(nfa.slot_limits), start=1)


def _prune_and_minimise(dfa: ByteDFA) -> ByteDFA:
    trans, accept = dfa.trans, dfa.accept
    q = trans.shape[0]
    # States that cannot reach an accepting state behave like the dead state.
    live = accept.copy()
    while True:
        grown = live | live[trans].any(axis=1)
        if (grown == live).all():
            break
        live = grown
    live[DEAD] = False
    trans = np.where(live[trans], trans, DEAD).astype(np.int32)
    slot_byte = np.where(live[trans], dfa.slot_byte, -1).astype(np.int16)
    slot = slot_byte.max(axis=1).astype(np.int16)
    # Moore refinement: start from (accept, slot, slot tags of the row), split by successor classes.
    sig0 = np.concatenate([accept[:, None].astype(np.int64), slot[:, None].astype(np.int64),
                           slot_byte.astype(np.int64)], axis=1)
    sig0[DEAD] = -3
    cls = np.unique(sig0, axis=0, return_inverse=True)[1].reshape(-1)
    while True:
        sig = np.concatenate([cls[:, None], cls[trans]], axis=1)
        new = np.unique(sig, axis=0, return_inverse=True)[1].reshape(-1)
        if new.max() == cls.max():
            break
        cls = new
    # Quotient automaton, renumbered breadth-first from the start (dead = 0; unreachable classes dropped).
    reps: dict[int, int] = {}
    for s in range(q - 1, -1, -1):
        reps[int(cls[s])] = s
    dead_cls = int(cls[DEAD])
    order = [dead_cls]
    seen = {dead_cls: 0}
    start_cls = int(cls[dfa.start])
    if start_cls not in seen:
        seen[start_cls] = len(order)
        order.append(start_cls)
    i = 1
    while i < len(order):
        for c in np.unique(cls[trans[reps[order[i]]]]):
            if int(c) not in seen:
                seen[int(c)] = len(order)
                order.append(int(c))
        i += 1
    rows = np.asarray([reps[c] for c in order])
    rows[0] = DEAD
    remap = np.zeros(int(cls.max()) + 1, dtype=np.int32)
    for c, new_id in seen.items():
        remap[c] = new_id
    return ByteDFA(
        trans=remap[cls[trans[rows]]].astype(np.int32),
        accept=accept[rows].copy(),
        slot=slot[rows].copy(),
        slot_byte=slot_byte[rows].copy(),
        slot_limits=dfa.slot_limits,
        start=seen[start_cls],
    )


def compile_bytes(node: Node, kind: str) -> ByteDFA:
    """The minimal byte DFA of ``node`` (``kind``, "template" or "regex", names the option in errors)."""
    nfa = _NFA(kind)
    start = nfa.new()
    final = nfa.build(node, start)
    return _prune_and_minimise(_determinise(nfa, start, final))
