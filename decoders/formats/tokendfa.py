"""The token-level automaton: byte states lifted to the tokenizer's tokens, edges labelled by token sets.

A token is allowed from a state when its bytes keep the byte automaton alive, so every tokenisation of
an allowed string is accepted. Text slots add a token counter to the state: ``(byte state, tokens
used in the slot)``. States that cannot reach an accepting state are dropped, and ``dist`` gives the
fewest tokens to an accepting state, so "can this still finish within k tokens" is one lookup.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from decoders.formats.bytedfa import DEAD, ByteDFA, compile_bytes
from decoders.formats.nodes import FormatError
from decoders.formats.regex import parse_regex
from decoders.formats.template import parse_template, template_slots
from decoders.formats.tokens import TokenBytes, token_bytes
from decoders.resources import ResourceCache

__all__ = ["FORMAT_KINDS", "MAX_TOKEN_STATES", "UNREACHABLE", "TokenDFA", "build_token_dfa", "compile_format"]

logger = logging.getLogger(__name__)

FORMAT_KINDS = ("template", "regex")
MAX_TOKEN_STATES = 50_000
"""Formats whose token automaton needs more states are rejected as too complex."""
UNREACHABLE = np.iinfo(np.int32).max
_ZERO, _INC, _ONE = 0, 1, 2  # slot counter after a token: reset, +1, restart at 1


@dataclass(frozen=True)
class TokenDFA:
    """A deterministic automaton over token ids whose edges carry token sets (state 0 is the start)."""

    kind: str
    """``"template"`` or ``"regex"``."""
    source: str
    vocab_size: int
    accept: np.ndarray
    """(S,) bool."""
    edge_ptr: np.ndarray
    """(S+1,) int64: state s's edges are ``edge_ptr[s]:edge_ptr[s+1]`` in the arrays below."""
    edge_set: np.ndarray
    """(E,) int32: index into ``sets``."""
    edge_dst: np.ndarray
    """(E,) int32: destination state."""
    sets: tuple[np.ndarray, ...]
    """Distinct token sets, each a sorted int64 array of token ids (shared between edges)."""
    dist: np.ndarray
    """(S,) int32: fewest tokens from the state to an accepting state."""
    build_seconds: float = 0.0

    @property
    def num_states(self) -> int:
        return int(self.accept.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_set.shape[0])

    @property
    def min_tokens(self) -> int:
        """Fewest tokens of any accepted output (EOS not counted)."""
        return int(self.dist[0])

    @property
    def nbytes(self) -> int:
        arrays = (self.accept, self.edge_ptr, self.edge_set, self.edge_dst, self.dist)
        return int(sum(a.nbytes for a in arrays) + sum(s.nbytes for s in self.sets))

    def terminal(self, state: int) -> bool:
        """Accepting with nothing allowed after it: the output is complete."""
        return bool(self.accept[state]) and self.edge_ptr[state] == self.edge_ptr[state + 1]

    def edges(self, state: int) -> list[tuple[int, int]]:
        """``(set index, destination)`` pairs leaving ``state``."""
        lo, hi = int(self.edge_ptr[state]), int(self.edge_ptr[state + 1])
        return list(zip(self.edge_set[lo:hi].tolist(), self.edge_dst[lo:hi].tolist(), strict=True))

    def step(self, state: int, token: int) -> int:
        """The state after ``token``, or -1 if the token is not allowed."""
        for set_id, dst in self.edges(state):
            ids = self.sets[set_id]
            i = int(np.searchsorted(ids, token))
            if i < len(ids) and ids[i] == token:
                return dst
        return -1

    def allowed(self, state: int, remaining: int | None = None) -> np.ndarray:
        """Sorted token ids allowed next; with ``remaining`` (tokens left, this one included), only those
        after which an accepting state is still reachable in time."""
        parts = [self.sets[s] for s, d in self.edges(state)
                 if remaining is None or int(self.dist[d]) <= remaining - 1]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)

    def run(self, ids: Iterable[int]) -> int:
        """The state after ``ids`` (-1 once a token is not allowed)."""
        state = 0
        for t in ids:
            state = self.step(state, int(t))
            if state < 0:
                return -1
        return state

    def accepts(self, ids: Sequence[int]) -> bool:
        """Whether the token sequence spells an output the format allows."""
        state = self.run(ids)
        return state >= 0 and bool(self.accept[state])


class _Builder:
    def __init__(self, bdfa: ByteDFA, tb: TokenBytes, kind: str) -> None:
        self.bdfa = bdfa
        self.tb = tb
        self.kind = kind
        self.set_index: dict[bytes, int] = {}
        self.sets: list[np.ndarray] = []
        self.groups: dict[int, tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]] = {}

    def intern(self, ids: np.ndarray) -> int:
        key = ids.tobytes()
        idx = self.set_index.get(key)
        if idx is None:
            idx = self.set_index[key] = len(self.sets)
            self.sets.append(ids)
        return idx

    def _group(self, ids: np.ndarray, keys: np.ndarray) -> list[tuple[int, int, int]]:
        # -> [(set index, byte state after, counter code)], one per distinct (byte state, code).
        if ids.size == 0:
            return []
        uniq, inv = np.unique(keys, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        bounds = np.cumsum(np.bincount(inv, minlength=len(uniq)))[:-1]
        out = []
        for key, members in zip(uniq.tolist(), np.split(ids[order], bounds), strict=True):
            out.append((self.intern(np.sort(members)), key // 3, key % 3))
        return out

    def groups_of(self, byte_state: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Edges from a byte state: for a counter below the slot limit, and at the limit."""
        hit = self.groups.get(byte_state)
        if hit is not None:
            return hit
        lifted = self.tb.run(self.bdfa, byte_state)
        valid = lifted.end != DEAD
        code = np.where(lifted.last_slot >= 0, np.where(lifted.all_slot, _INC, _ONE), _ZERO)
        keys = lifted.end.astype(np.int64) * 3 + code
        below = self._group(self.tb.ids[valid], keys[valid])
        if self.bdfa.slot[byte_state] >= 0:
            full = valid & (lifted.first_slot < 0)  # at the limit no new token may add text to the slot
            at_limit = self._group(self.tb.ids[full], keys[full])
        else:
            at_limit = below
        self.groups[byte_state] = (below, at_limit)
        return below, at_limit


def build_token_dfa(bdfa: ByteDFA, tb: TokenBytes, kind: str, source: str = "") -> TokenDFA:
    """Lift ``bdfa`` to ``tb``'s tokens (see the module docs); raises FormatError if nothing is writable."""
    t0 = time.perf_counter()
    builder = _Builder(bdfa, tb, kind)
    index: dict[tuple[int, int], int] = {(bdfa.start, 0): 0}
    keys: list[tuple[int, int]] = [(bdfa.start, 0)]
    edges: list[list[tuple[int, int]]] = []
    i = 0
    while i < len(keys):
        byte_state, count = keys[i]
        slot = int(bdfa.slot[byte_state])
        below, at_limit = builder.groups_of(byte_state)
        limited = slot >= 0 and count >= bdfa.slot_limits[slot]
        out = []
        for set_id, end, code in at_limit if limited else below:
            nxt = 0 if code == _ZERO else count + 1 if code == _INC else 1
            key = (end, nxt if bdfa.slot[end] >= 0 else 0)
            dst = index.get(key)
            if dst is None:
                dst = index[key] = len(keys)
                keys.append(key)
                if len(keys) > MAX_TOKEN_STATES:
                    raise FormatError(f"{kind}: too complex (more than {MAX_TOKEN_STATES} token-level states)", kind)
            out.append((set_id, dst))
        edges.append(out)
        i += 1
    accept = np.asarray([bool(bdfa.accept[b]) for b, _ in keys], dtype=bool)
    dist = _distances(accept, edges)
    live = dist < UNREACHABLE
    if not live[0]:
        raise FormatError(f"{kind}: no output this format allows can be written with this model's tokens", kind)
    # Keep live states only, renumbered in discovery order (the start stays 0).
    renum = np.cumsum(live) - 1
    ptr = [0]
    e_set: list[int] = []
    e_dst: list[int] = []
    for s in np.flatnonzero(live).tolist():
        for set_id, dst in edges[s]:
            if live[dst]:
                e_set.append(set_id)
                e_dst.append(int(renum[dst]))
        ptr.append(len(e_set))
    dfa = TokenDFA(
        kind=kind,
        source=source,
        vocab_size=tb.vocab_size,
        accept=accept[live],
        edge_ptr=np.asarray(ptr, dtype=np.int64),
        edge_set=np.asarray(e_set, dtype=np.int32),
        edge_dst=np.asarray(e_dst, dtype=np.int32),
        sets=tuple(builder.sets),
        dist=dist[live].astype(np.int32),
        build_seconds=time.perf_counter() - t0,
    )
    logger.debug("%s automaton: %d byte states -> %d token states, %d edges, %d token sets in %.3fs",
                 kind, bdfa.num_states, dfa.num_states, dfa.num_edges, len(dfa.sets), dfa.build_seconds)
    return dfa


def _distances(accept: np.ndarray, edges: list[list[tuple[int, int]]]) -> np.ndarray:
    """Fewest tokens from each state to an accepting one (reverse breadth-first search)."""
    n = len(edges)
    preds: list[list[int]] = [[] for _ in range(n)]
    for s, out in enumerate(edges):
        for _, d in out:
            preds[d].append(s)
    dist = np.full(n, UNREACHABLE, dtype=np.int64)
    queue = deque(np.flatnonzero(accept).tolist())
    dist[accept] = 0
    while queue:
        s = queue.popleft()
        for p in preds[s]:
            if dist[p] == UNREACHABLE:
                dist[p] = dist[s] + 1
                queue.append(p)
    return dist


def _check_spellable(template: str, tb: TokenBytes) -> None:
    for part in template_slots(template):
        texts = [part] if isinstance(part, str) else list(part.options)
        for text in texts:
            if text and not tb.spellable(text.encode("utf-8")):
                what = "literal text" if isinstance(part, str) else "choice option"
                raise FormatError(f"template: {what} {text!r} cannot be written with this model's tokens",
                                  "template")


def compile_format(kind: str, source: str, tokenizer: Any, resources: ResourceCache | None = None) -> TokenDFA:
    """Compile a template or a regex (``kind``) to the token automaton for ``tokenizer`` (its vocabulary
    table is kept in ``resources`` when given).

    Raises :class:`FormatError` (with ``.kind``) for bad syntax, an unsupported construct, or a format
    that the tokenizer cannot write.
    """
    if kind not in FORMAT_KINDS:
        raise FormatError(f"unknown format kind {kind!r}; expected one of {FORMAT_KINDS}", kind)
    tb = token_bytes(tokenizer, resources)
    if kind == "template":
        node = parse_template(source)
        _check_spellable(source, tb)
    else:
        node = parse_regex(source)
    bdfa = compile_bytes(node, kind)
    return build_token_dfa(bdfa, tb, kind, source)
