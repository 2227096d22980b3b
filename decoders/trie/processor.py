"""The ``trie`` decoder: output restricted to one label, or several joined by a separator, none repeated."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from decoders.processor import DecoderContext, Processor
from decoders.trie.index import LabelIndex, label_index
from decoders.trie.labels import P_LABELS, P_SCORING, TrieLabelError, TrieOptions

__all__ = ["TrieProcessor", "build"]

logger = logging.getLogger(__name__)

_EMPTY = torch.empty(0, dtype=torch.int64)


class TrieProcessor(Processor):
    """One request's walk through a shared, immutable :class:`LabelIndex`; all mutable state is here.

    Per step: the current node's precomputed id array, filtered only when labels have been used (multi-label:
    nodes whose labels are all used are dead) or the token budget is nearly spent — small numpy ops, never
    anything over the vocabulary.
    """

    def __init__(self, index: LabelIndex, eos_ids: frozenset[int], max_new_tokens: int) -> None:
        self.index = index
        self.eos_ids = eos_ids
        self.budget = max_new_tokens
        self.node = 0
        self.used: list[int] = []  # labels completed, in order
        self.passed: dict[int, int] = {}  # node -> how many used labels pass through it
        self.dead = np.empty(0, dtype=np.int64)  # nodes all of whose labels are used
        self.steps = 0
        self.done = False
        self._allowed: tuple[int, torch.Tensor, bool] | None = None  # (steps, ids, eos) cache for one step

    # -- the engine's per-step calls -------------------------------------------------------------------

    def allowed_token_ids(self) -> torch.Tensor:
        return self._step()[0]

    def eos_allowed(self) -> bool:
        return self._step()[1]

    def advance(self, token_id: int) -> None:
        self.steps += 1
        self._allowed = None
        if token_id in self.eos_ids:
            self.done = True
            return
        index = self.index
        hit = index.transitions(self.node).lookup.get(token_id)
        if hit is not None and not self._alive(hit[0], hit[1]):
            hit = None
        if hit is None and self._may_continue():
            # The token starts the separator: the label ending here is complete.
            nxt = index.transitions(index.sep_root).lookup.get(token_id)
            if nxt is not None:
                self._use(index.label_at[self.node])
                hit = nxt
        if hit is None:
            # Only reachable if the engine sampled a masked token; stop rather than emit garbage.
            logger.warning("trie decoder: token %d not allowed at node %d; stopping", token_id, self.node)
            self.done = True
            return
        dest, done = hit
        if done >= 0:
            self._use(done)
        self.node = dest

    def finished(self) -> bool:
        return self.done

    def stats(self) -> Mapping[str, Any]:
        labels = self.index.spec.labels
        out = [labels[i] for i in self.used]
        lab = self.index.label_at[self.node]
        if lab >= 0 and lab not in self.used:
            out.append(labels[lab])
        return {"labels": out}

    # -- internals ----------------------------------------------------------------------------------

    def _may_continue(self) -> bool:
        # Another label may follow the one ending at the current node.
        lab = self.index.label_at[self.node]
        return (self.index.sep_root >= 0 and lab >= 0 and lab not in self.used
                and len(self.used) + 1 < self.index.spec.max_labels)

    def _alive(self, dest: int, done: int) -> bool:
        if done >= 0 and (done in self.used or len(self.used) + 1 >= self.index.spec.max_labels):
            return False
        return bool(self.index.count[dest] - self.passed.get(dest, 0) - self._through(done, dest) > 0)

    def _through(self, label: int, node: int) -> int:
        return 1 if label >= 0 and node in self.index.paths[label] else 0

    def _use(self, label: int) -> None:
        self.used.append(label)
        dead = []
        for n in self.index.paths[label]:
            self.passed[n] = self.passed.get(n, 0) + 1
            if self.passed[n] >= self.index.count[n]:
                dead.append(n)
        if dead:
            self.dead = np.concatenate([self.dead, np.asarray(dead, dtype=np.int64)])

    def _filter(self, node: int, extra: int) -> torch.Tensor:
        # Drop tokens leading into dead nodes (all labels used), crossing into a used label, or too far
        # from any label end for the remaining budget. ``extra`` is a label treated as used (the one
        # ending at the current node when we jump to the separator).
        index = self.index
        tr = index.transitions(node)
        left = self.budget - self.steps - 1  # tokens still allowed after this one
        tight = left < tr.fin_max
        if not len(self.dead) and extra < 0 and not tight and not tr.crossing:
            return tr.tensor
        keep = np.ones(len(tr.ids), dtype=bool)
        if len(self.dead):
            keep &= ~np.isin(tr.dest, self.dead)
        if extra >= 0:
            # nodes kept alive only by ``extra`` die with it
            on = np.asarray([n for n in index.paths[extra]
                             if index.count[n] - self.passed.get(n, 0) <= 1], dtype=np.int64)
            if len(on):
                keep &= ~np.isin(tr.dest, on)
        if tight:
            keep &= index.fin[tr.dest] <= left
        for i in np.flatnonzero(tr.done >= 0) if tr.crossing else ():  # rare: tokens running past a label end
            keep[i] = keep[i] and extra < 0 and self._alive(int(tr.dest[i]), int(tr.done[i]))
        return torch.from_numpy(tr.ids[keep])

    def _step(self) -> tuple[torch.Tensor, bool]:
        if self._allowed is not None and self._allowed[0] == self.steps:
            return self._allowed[1], self._allowed[2]
        index = self.index
        lab = index.label_at[self.node]
        eos = lab >= 0 and lab not in self.used
        if self.done:
            ids = _EMPTY
        else:
            ids = self._filter(self.node, -1)
            if self._may_continue():
                ids = torch.cat([ids, self._filter(index.sep_root, lab)])
        self._allowed = (self.steps, ids, eos)
        return ids, eos


def build(options: Mapping[str, Any], ctx: DecoderContext) -> TrieProcessor:
    """The trie decoder's factory: options ``labels`` (required), ``mode`` (``canonical`` | ``any``),
    ``separator`` and ``max_labels`` (multi-label). ``scoring: true`` is the provider's business (it
    scores instead of generating), so it never reaches here."""
    opts = TrieOptions.parse(options)
    if opts.scoring:
        raise TrieLabelError("scoring mode is served by the provider, not by a generating decoder", P_SCORING)
    spec = opts.spec
    index = label_index(spec, ctx.tokenizer, ctx.prompt_ids, ctx.resources)
    longest = max(range(len(spec.labels)), key=index.min_tokens.__getitem__)
    if index.min_tokens[longest] > ctx.max_new_tokens:
        raise TrieLabelError(
            f"label {spec.labels[longest]!r} needs more tokens than max_tokens={ctx.max_new_tokens} allows",
            P_LABELS,
        )
    return TrieProcessor(index, ctx.eos_token_ids, ctx.max_new_tokens)
