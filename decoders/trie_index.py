"""Label validation and the immutable label index (token or byte trie + per-node allowed-id arrays)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from decoders.processors.base import DecoderOptionError
from decoders.trie_vocab import NEVER, VocabBytes, vocab_bytes

__all__ = ["LabelIndex", "LabelSpec", "Transitions", "TrieLabelError", "label_index", "normalize_labels"]

logger = logging.getLogger(__name__)

Mode = Literal["any", "canonical"]
MODES: tuple[Mode, ...] = ("any", "canonical")
MAX_LABELS = 100_000
P_LABELS = "promptwire.decoder.labels"
P_SEPARATOR = "promptwire.decoder.separator"
P_MAX = "promptwire.decoder.max_labels"
P_MODE = "promptwire.decoder.mode"


class TrieLabelError(DecoderOptionError):
    """Bad trie options (empty / duplicate / too long labels, bad separator or count); ``param`` names it."""


def normalize_labels(labels: Any) -> list[str]:
    """Validate a label list (non-empty, strings, non-empty, no duplicates) and return it as a list.

    Labels are kept exactly as given (no stripping, no Unicode normalisation): the output text must equal
    one of them. Usable on its own, e.g. to map labels to an upstream's structured-output ``choice``.
    """
    if isinstance(labels, str | bytes) or not isinstance(labels, Sequence):
        raise TrieLabelError("labels must be a list of strings", P_LABELS)
    if not labels:
        raise TrieLabelError("labels must not be empty", P_LABELS)
    if len(labels) > MAX_LABELS:
        raise TrieLabelError(f"at most {MAX_LABELS} labels are allowed, got {len(labels)}", P_LABELS)
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise TrieLabelError(f"labels[{i}] must be a string", P_LABELS)
        if not label:
            raise TrieLabelError(f"labels[{i}] is empty", P_LABELS)
        if label in seen:
            raise TrieLabelError(f"duplicate label {label!r} (labels[{i}])", P_LABELS)
        seen.add(label)
    return list(labels)


@dataclass(frozen=True)
class LabelSpec:
    """What the client asked for, validated."""

    labels: tuple[str, ...]
    mode: Mode = "canonical"
    """``canonical``: only the tokenizer's own tokenisation of each label in context; ``any``: every
    token sequence that spells it."""
    separator: str | None = None
    """Set for multi-label output: labels joined by this text, none repeated."""
    max_labels: int = 1
    """Most labels in one output (1 unless ``separator`` is set)."""

    @classmethod
    def parse(cls, labels: Any, mode: Any = "canonical", separator: Any = None, max_labels: Any = None) -> LabelSpec:
        """Validate raw client options; raises :class:`TrieLabelError` naming the bad option."""
        norm = normalize_labels(labels)
        if mode not in MODES:
            raise TrieLabelError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", P_MODE)
        if separator is not None:
            if not isinstance(separator, str) or not separator:
                raise TrieLabelError("separator must be a non-empty string", P_SEPARATOR)
            for label in norm:
                if separator in label:
                    raise TrieLabelError(f"label {label!r} contains the separator {separator!r}", P_SEPARATOR)
        if max_labels is None:
            max_labels = len(norm) if separator is not None else 1
        if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1:
            raise TrieLabelError("max_labels must be a positive integer", P_MAX)
        if max_labels > 1 and separator is None:
            raise TrieLabelError("max_labels > 1 needs a separator", P_SEPARATOR)
        return cls(tuple(norm), mode, separator, min(max_labels, len(norm)))


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


_CACHE: OrderedDict[tuple[Any, ...], LabelIndex] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 32


def label_index(spec: LabelSpec, tokenizer: Any, prompt_ids: Sequence[int] = ()) -> LabelIndex:
    """The index for ``spec`` after ``prompt_ids`` — cached by (labels, options, tokenizer, context)."""
    vocab = vocab_bytes(tokenizer)
    context = vocab.context_text(prompt_ids) if spec.mode == "canonical" else ""
    key = (id(tokenizer), spec, context)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
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
    with _CACHE_LOCK:
        _CACHE[key] = index
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return index
