"""Deco-G per-request steering: DFA mask x HMM lookahead on the LLM's logits, and a mask-only baseline."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from decoders.decog.hmm import HMM
from decoders.decog.table import BackwardTable
from decoders.formats import TokenDFA
from decoders.processor import Processor

__all__ = ["DecogProcessor", "FormatIndex", "MaskProcessor", "StateIndex"]

logger = logging.getLogger(__name__)

_FLOOR = -1e4  # an allowed token never goes to -inf, whatever the HMM says (compliance comes from the mask)


@dataclass(frozen=True)
class StateIndex:
    """One DFA state's outgoing tokens: ``ids`` sorted, ``rows[i]`` = which successor ``ids[i]`` leads to,
    ``dsts`` / ``dist`` = the successors and their distance to acceptance (tensors on the format's device,
    plus numpy copies for the per-token lookups of ``advance``)."""

    ids: torch.Tensor
    """(m,) int64."""
    rows: torch.Tensor
    """(m,) int64 into ``dsts``."""
    flat: torch.Tensor
    """(m,) int64: ``rows * m + arange(m)``, picks each id's own successor row from an (n+1, m) matrix."""
    dsts: torch.Tensor
    """(n,) int64."""
    dist: torch.Tensor
    """(n,) int64."""
    max_dist: int
    """Largest successor distance: with at least this many tokens left after the next, nothing is filtered."""
    ids_np: np.ndarray
    dst_of: np.ndarray
    """(m,) the successor of each id in ``ids_np``."""


EAGER_ENTRIES = 1 << 20
"""Formats whose edges list at most this many tokens in all get every state's tensors at construction (a
step then never builds one); larger ones (long text slots over big vocabularies) build them on first visit."""


class FormatIndex:
    """A :class:`TokenDFA` with per-state tensors (shared by every request of the format)."""

    def __init__(self, dfa: TokenDFA, device: torch.device | str = "cpu", width: int | None = None) -> None:
        self.dfa = dfa
        self.device = torch.device(device)
        self.width = width if width is not None else dfa.vocab_size
        """Logits width V (may exceed the tokenizer's vocabulary)."""
        self._states: dict[int, StateIndex] = {}
        self._masks: dict[int, torch.Tensor] = {}
        sizes = np.asarray([len(x) for x in dfa.sets], dtype=np.int64)
        if int(sizes[dfa.edge_set].sum()) <= EAGER_ENTRIES:
            for s in range(dfa.num_states):
                self.state(s)

    def state(self, s: int) -> StateIndex:
        hit = self._states.get(s)
        if hit is None:
            edges = self.dfa.edges(s)
            sets = [self.dfa.sets[i] for i, _ in edges]
            ids = np.concatenate(sets) if sets else np.empty(0, dtype=np.int64)
            rows = np.repeat(np.arange(len(sets)), [len(x) for x in sets]).astype(np.int64)
            order = np.argsort(ids, kind="stable")
            ids, rows = ids[order], rows[order]
            dsts = np.asarray([d for _, d in edges], dtype=np.int64)
            dist = self.dfa.dist[dsts].astype(np.int64)
            dev = self.device
            hit = StateIndex(
                ids=torch.from_numpy(ids).to(dev),
                rows=torch.from_numpy(rows).to(dev),
                flat=torch.from_numpy(rows * len(ids) + np.arange(len(ids))).to(dev),
                dsts=torch.from_numpy(dsts).to(dev),
                dist=torch.from_numpy(dist).to(dev),
                max_dist=int(dist.max()) if dist.size else 0,
                ids_np=ids,
                dst_of=dsts[rows],
            )
            self._states[s] = hit
        return hit

    def mask(self, s: int) -> torch.Tensor:
        """(V,) bool: the tokens allowed from ``s`` (budget aside), built on first use."""
        hit = self._masks.get(s)
        if hit is None:
            hit = torch.zeros(self.width, dtype=torch.bool, device=self.device)
            hit[self.state(s).ids] = True
            self._masks[s] = hit
        return hit

    def next_state(self, s: int, token: int) -> int:
        st = self.state(s)
        j = int(np.searchsorted(st.ids_np, token))
        if j < st.ids_np.size and int(st.ids_np[j]) == token:
            return int(st.dst_of[j])
        return -1

    @property
    def nbytes(self) -> int:
        per = sum(sum(t.numel() * t.element_size() for t in (x.ids, x.rows, x.flat, x.dsts, x.dist))
                  + x.ids_np.nbytes + x.dst_of.nbytes for x in self._states.values())
        return self.dfa.nbytes + per + len(self._masks) * self.width


class MaskProcessor(Processor):
    """The format as a hard mask only: tokens that keep the output completable within the budget.

    The baseline Deco-G is measured against; compliance is certain here too, but nothing looks ahead
    (the mask can leave only unlikely tokens, e.g. a forced end near the budget)."""

    def __init__(self, index: FormatIndex, eos_ids: frozenset[int], budget: int) -> None:
        self.index = index
        self.dfa = index.dfa
        self.eos_ids = eos_ids
        self.budget = budget
        self.state = 0
        self.steps = 0
        self.done = False

    @property
    def remaining(self) -> int:
        """Tokens left, the next one included."""
        return self.budget - self.steps

    def _allowed(self) -> tuple[StateIndex, torch.Tensor | None]:
        """This step's state and which of its ids still fit the budget (None: all of them)."""
        st = self.index.state(self.state)
        if st.max_dist <= self.remaining - 1:
            return st, None
        return st, st.dist[st.rows] <= self.remaining - 1  # (m,)

    def allowed_token_ids(self) -> torch.Tensor | None:
        st, ok = self._allowed()
        return self.index.mask(self.state) if ok is None else st.ids[ok]

    def eos_allowed(self) -> bool:
        return bool(self.dfa.accept[self.state])

    def advance(self, token_id: int) -> None:
        self.steps += 1
        if token_id in self.eos_ids:
            self.done = True
            return
        nxt = self.index.next_state(self.state, token_id)
        if nxt < 0:
            logger.warning("decog: token %d not allowed in DFA state %d; stopping", token_id, self.state)
            self.done = True
            return
        self.state = nxt

    def finished(self) -> bool:
        return self.done or self.dfa.terminal(self.state)

    def stats(self) -> Mapping[str, Any]:
        return {"dfa_states": self.dfa.num_states, "steps": self.steps}


class DecogProcessor(MaskProcessor):
    """Samples from p_LLM(x | prefix) * p_HMM(format completable | prefix, x), renormalised, under the mask.

    The HMM keeps a forward vector over its hidden states (log P(prefix, next hidden state)); each step
    scores every allowed token x with the backward table row of the state x leads to, divided by the
    HMM's own P(x | prefix). With ``prune_top_k`` only the k hidden states with the most forward mass
    take part (the mass kept is reported).
    """

    def __init__(self, index: FormatIndex, table: BackwardTable, hmm: HMM, eos_ids: frozenset[int], budget: int,
                 prune_top_k: int | None = None, table_cached: bool = False) -> None:
        super().__init__(index, eos_ids, budget)
        self.table = table
        self.hmm = hmm
        self.top_k = prune_top_k if prune_top_k is not None and prune_top_k < hmm.hidden_states else None
        self.table_cached = table_cached
        self.alpha = hmm.log_initial.clone()  # (h,) log P(prefix, next hidden state), normalised
        self._eos = torch.tensor(sorted(eos_ids), device=hmm.device)
        self._kept: tuple[torch.Tensor | None, torch.Tensor] | None = None  # (hidden idx, their alpha) this step
        self._mass: list[float] = []

    def _support(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The hidden states taking part this step (None = all) and their forward log-mass."""
        if self.top_k is None:
            return None, self.alpha
        vals, idx = torch.topk(self.alpha, self.top_k)  # (k,)
        self._mass.append(math.exp(float(torch.logsumexp(vals, 0))))
        return idx, vals

    def process(self, logits: torch.Tensor, aux: Any = None) -> torch.Tensor:
        st, ok = self._allowed()
        idx, a = self._support()
        self._kept = (idx, a)
        ba = self.table.row(self.remaining - 1).index_select(0, st.dsts)  # (n, h): log P(complete | enter dst, h)
        if idx is not None:
            ba = ba.index_select(1, idx)  # (n, k)
        scores = torch.cat([a[None, :] + ba, a[None, :]])  # (n+1, k); last row: P(x | prefix) alone
        peak = scores.amax(dim=1, keepdim=True).clamp_min(-1e30)  # (n+1, 1); rows of -inf stay -inf
        weights = torch.exp(scores - peak)  # (n+1, k)
        ids = st.ids
        m = ids.numel()
        by_token = self.hmm.emission_by_token  # (V, h)
        if m * 2 > by_token.shape[0]:
            emit = by_token if idx is None else by_token.index_select(1, idx)  # (V, k)
            per_token = (weights @ emit.t()).index_select(1, ids)  # (n+1, m)
        else:
            emit = by_token.index_select(0, ids)  # (m, h)
            if idx is not None:
                emit = emit.index_select(1, idx)  # (m, k)
            per_token = weights @ emit.t()  # (n+1, m)
        logp = per_token.clamp_min_(1e-38).log_().add_(peak)  # (n+1, m)
        ratio = logp.view(-1).index_select(0, st.flat) - logp[-1]  # (m,) log P_HMM(complete | prefix, x)
        llm = torch.log_softmax(logits.to(self.alpha.device, torch.float32), dim=-1)  # (V,)
        out = torch.full_like(llm, -math.inf)  # the DFA mask: only ids may come next
        if ok is not None:
            ids, ratio = ids[ok], ratio[ok]
        out[ids] = (llm.index_select(0, ids) + ratio).clamp_min_(_FLOOR)
        if self.dfa.accept[self.state]:  # ending here completes the format: ratio 1
            out[self._eos] = llm.index_select(0, self._eos)
        return out.to(logits.device)

    def allowed_token_ids(self) -> None:
        return None  # process() already set every token outside the DFA's set to -inf

    def eos_allowed(self) -> bool:
        return True  # process() already set EOS to -inf unless the DFA state accepts

    def advance(self, token_id: int) -> None:
        if token_id not in self.eos_ids:
            idx, a = self._kept if self._kept is not None else self._support()
            log_emit = self.hmm.log_emission_by_token[token_id]  # (h,)
            trans = self.hmm.transition
            if idx is not None:
                log_emit, trans = log_emit.index_select(0, idx), trans.index_select(0, idx)  # (k,), (k, h)
            v = a + log_emit  # (k,): log P(prefix + x, current hidden)
            nxt = (torch.exp(v - v.max()) @ trans).log_()  # (h,); transitions are never exactly zero
            self.alpha = nxt - torch.logsumexp(nxt, 0)
        self._kept = None
        super().advance(token_id)

    def stats(self) -> Mapping[str, Any]:
        mass = self._mass
        return {
            "dfa_states": self.dfa.num_states,
            "hidden_states": self.hmm.hidden_states,
            "prune_top_k": self.top_k,
            "mass_kept": round(sum(mass) / len(mass), 6) if mass else 1.0,
            "mass_kept_min": round(min(mass), 6) if mass else 1.0,
            "table_build_ms": round(self.table.seconds * 1000, 3),
            "table_cached": self.table_cached,
            "table_bytes": self.table.nbytes,
            "steps": self.steps,
        }
