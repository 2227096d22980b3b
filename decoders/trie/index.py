"""Label validation and the immutable label index (token or byte trie + per-node allowed-id arrays)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from decoders.resources import ResourceCache
from decoders.trie.labels import P_LABELS, LabelSpec, TrieLabelError
from decoders.trie.vocab import NEVER, VocabBytes, vocab_bytes

__all__ = ["LabelIndex", "Transitions", "label_index"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Transitions:
    """The tokens that may follow one trie node: ``ids[i]`` leads to node ``dest[i]``; ``done[i]`` is the
    label the token completes on its way (crossing a label end into the separator), else -1."""

    ids: np.ndarray  # (K,) int64
    dest: np.ndarray  # (K,) int64
    done: np.ndarray  # (K,) int64
    tensor: torch.Tensor  # (K,) int64, ``ids`` as a tensor (shared memory)
    lookup: dict[int, tuple[int, int]]  # token id -> (dest, done)
    fin_max: int  # the largest ``fin`` among ``dest`` (budget filtering is skipped while it fits)
    crossing: bool  # some token runs past a label end


class LabelIndex:
    """Immutable after construction (per-node transitions of the ``any`` mode are memoised on first use,
    idempotently). Node 0 roots the first label; in multi-label mode ``sep_root`` roots separator+label.

    Symbols are token ids (``canonical``) or bytes (``any``). ``label_at[n]`` is the label ending at node n
    (-1 none); ``count[n]`` how many labels pass through n; ``fin[n]`` the fewest tokens from n to the end of
    a label through n (exact for ``canonical``; for ``any``, the fewest-token spelling of the rest).
    """

    def __init__(self, spec: LabelSpec, vocab: VocabBytes, first: Sequence[Sequence[int]],
                 rest: Sequence[Sequence[int]] | None, first_costs: Sequence[Sequence[int]],
                 rest_costs: Sequence[Sequence[int]] | None) -> None:
        self.spec = spec
        self.vocab = vocab
        self.children: list[dict[int, int]] = [{}]
        self.label_at: list[int] = [-1]
        counts: list[int] = [0]
        fin: list[int] = [NEVER]
        self.paths: list[list[int]] = [[] for _ in spec.labels]  # every node on label i's paths
        self.sep_root = -1

        def insert(root: int, label: int, seq: Sequence[int], cost: Sequence[int]) -> None:
            node = root
            counts[node] += 1
            fin[node] = min(fin[node], cost[0])
            for depth, sym in enumerate(seq, start=1):
                nxt = self.children[node].get(sym)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][sym] = nxt
                    self.children.append({})
                    self.label_at.append(-1)
                    counts.append(0)
                    fin.append(NEVER)
                node = nxt
                counts[node] += 1
                fin[node] = min(fin[node], cost[depth])
                self.paths[label].append(node)
            self.label_at[node] = label

        for i, seq in enumerate(first):
            insert(0, i, seq, first_costs[i])
        if rest is not None:
            self.sep_root = len(self.children)
            self.children.append({})
            self.label_at.append(-1)
            counts.append(0)
            fin.append(NEVER)
            for i, seq in enumerate(rest):
                insert(self.sep_root, i, seq, rest_costs[i])  # type: ignore[index]
        self.count = np.asarray(counts, dtype=np.int64)
        self.fin = np.asarray(fin, dtype=np.int64)
        self.min_tokens = [int(c[0]) for c in first_costs]
        """Fewest tokens each label needs as the first label."""
        self._memo: dict[int, Transitions] = {}
        self._lock = threading.Lock()
        if spec.mode == "canonical":
            for n in range(len(self.children)):
                self._memo[n] = self._pack({t: (d, -1) for t, d in self.children[n].items()})

    @property
    def nbytes(self) -> int:
        """Approximate memory held (for the resource cache's budget): nodes, edges and transition arrays."""
        edges = sum(len(c) for c in self.children)
        packed = sum(t.ids.nbytes * 3 + len(t.lookup) * 120 for t in list(self._memo.values()))
        return len(self.children) * 200 + edges * 100 + sum(len(p) for p in self.paths) * 8 + packed

    def _pack(self, lookup: dict[int, tuple[int, int]]) -> Transitions:
        ids = np.fromiter(lookup.keys(), dtype=np.int64, count=len(lookup))
        dest = np.fromiter((v[0] for v in lookup.values()), dtype=np.int64, count=len(lookup))
        done = np.fromiter((v[1] for v in lookup.values()), dtype=np.int64, count=len(lookup))
        fin_max = int(self.fin[dest].max(initial=0))
        return Transitions(ids, dest, done, torch.from_numpy(ids), lookup, fin_max, bool((done >= 0).any()))

    def transitions(self, node: int) -> Transitions:
        """The tokens that may follow ``node`` (before exclusions of used labels)."""
        hit = self._memo.get(node)
        if hit is None:
            hit = self._walk(node)
            with self._lock:
                hit = self._memo.setdefault(node, hit)
        return hit

    def _walk(self, start: int) -> Transitions:
        # ``any`` mode: walk the vocabulary's byte trie jointly with the label trie from ``start``; every
        # vocabulary node reached that ends a token is an allowed token. A token may run past a label end
        # into the separator (jumping to sep_root), completing that label on the way.
        vc, ends = self.vocab.children, self.vocab.ends
        out: dict[int, tuple[int, int]] = {}
        stack: list[tuple[int, int, int]] = [(start, 0, -1)]
        while stack:
            node, vnode, done = stack.pop()
            steps = [(node, done)]
            lab = self.label_at[node]
            if vnode != 0 and lab >= 0 and done < 0 and self.sep_root >= 0:
                steps.append((self.sep_root, lab))
            for lnode, ldone in steps:
                for b, lnext in self.children[lnode].items():
                    vnext = vc[vnode].get(b)
                    if vnext is None:
                        continue
                    for tid in ends[vnext]:
                        prev = out.get(tid)
                        if prev is None or (prev[1] >= 0 and ldone < 0):  # prefer not crossing
                            out[tid] = (lnext, ldone)
                    stack.append((lnext, vnext, ldone))
        return self._pack(out)


def label_index(spec: LabelSpec, tokenizer: Any, prompt_ids: Sequence[int] = (),
                resources: ResourceCache | None = None) -> LabelIndex:
    """The index for ``spec`` after ``prompt_ids``; kept in the model's ``resources`` (when given) by
    (labels, options, context), so a label set is tokenised and indexed once per model."""
    vocab = vocab_bytes(tokenizer, resources)
    context = vocab.context_text(prompt_ids) if spec.mode == "canonical" else ""
    if resources is None:
        return _build(spec, vocab, context)
    index: LabelIndex = resources.get_or_build(("trie.index", spec, context), lambda: _build(spec, vocab, context))
    return index


def _build(spec: LabelSpec, vocab: VocabBytes, context: str) -> LabelIndex:
    if spec.mode == "canonical":
        first: list[list[int]] = vocab.canonical(context, spec.labels)
        rest = None
        if spec.separator is not None:
            # After a label: tokenised as the tokenizer writes separator+label following a word end.
            rest = vocab.canonical("x", [spec.separator + label for label in spec.labels])
    else:
        first = [list(label.encode("utf-8")) for label in spec.labels]
        rest = None
        if spec.separator is not None:
            rest = [list((spec.separator + label).encode("utf-8")) for label in spec.labels]
    for i, seq in enumerate(first):
        if not seq or (spec.mode == "any" and not vocab.shortest(bytes(seq))):
            raise TrieLabelError(f"label {spec.labels[i]!r} cannot be spelled with this tokenizer", P_LABELS)
    if spec.mode == "canonical":
        first_costs = [list(range(len(s), -1, -1)) for s in first]
        rest_costs = None if rest is None else [list(range(len(s), -1, -1)) for s in rest]
    else:
        first_costs = [vocab.suffix_costs(bytes(s))[0] for s in first]
        rest_costs = None if rest is None else [vocab.suffix_costs(bytes(s))[0] for s in rest]
    index = LabelIndex(spec, vocab, first, rest, first_costs, rest_costs)
    logger.debug("built %s label index: %d labels, %d nodes", spec.mode, len(spec.labels), len(index.children))
    return index
