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
    """One DFA state's outgoing tokens as tensors: ``ids`` sorted, ``rows[i]`` = which successor ``ids[i]``
    leads to, ``dsts`` / ``dist`` = the successors and their distance to acceptance."""

    ids: torch.Tensor
    """(m,) int64."""
    rows: torch.Tensor
    """(m,) int64 into ``dsts``."""
    dsts: torch.Tensor
    """(n,) int64."""
    dist: torch.Tensor
    """(n,) int64."""


class FormatIndex:
    """A :class:`TokenDFA` with per-state tensors built on first use (shared by every request of the format)."""

    def __init__(self, dfa: TokenDFA, device: torch.device | str = "cpu") -> None:
        self.dfa = dfa
        self.device = torch.device(device)
        self._states: dict[int, StateIndex] = {}

    def state(self, s: int) -> StateIndex:
        hit = self._states.get(s)
        if hit is None:
            edges = self.dfa.edges(s)
            sets = [self.dfa.sets[i] for i, _ in edges]
            ids = np.concatenate(sets) if sets else np.empty(0, dtype=np.int64)
            rows = np.repeat(np.arange(len(sets)), [len(x) for x in sets]).astype(np.int64)
            order = np.argsort(ids, kind="stable")
            dsts = np.asarray([d for _, d in edges], dtype=np.int64)
            hit = StateIndex(
                torch.from_numpy(ids[order]).to(self.device),
                torch.from_numpy(rows[order]).to(self.device),
                torch.from_numpy(dsts).to(self.device),
                torch.from_numpy(self.dfa.dist[dsts].astype(np.int64)).to(self.device),
            )
            self._states[s] = hit
        return hit

    def next_state(self, s: int, token: int) -> int:
        st = self.state(s)
        j = int(torch.searchsorted(st.ids, torch.tensor(token, device=st.ids.device)))
        if j < st.ids.numel() and int(st.ids[j]) == token:
            return int(st.dsts[st.rows[j]])
        return -1

    @property
    def nbytes(self) -> int:
        per = sum(sum(t.numel() * t.element_size() for t in (x.ids, x.rows, x.dsts, x.dist))
                  for x in self._states.values())
        return self.dfa.nbytes + per


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

    def _allowed(self) -> tuple[StateIndex, torch.Tensor]:
        st = self.index.state(self.state)
        ok = st.dist[st.rows] <= self.remaining - 1  # (m,)
        return st, ok

    def allowed_token_ids(self) -> torch.Tensor:
        st, ok = self._allowed()
        return st.ids[ok]

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
        self.emit = hmm.log_emission.exp()  # (h, V) shared view per HMM would be nicer; cheap at these sizes
        self.trans = hmm.log_transition.exp()  # (h, h)
        self.top_k = prune_top_k if prune_top_k is not None and prune_top_k < hmm.hidden_states else None
        self.table_cached = table_cached
        self.alpha = hmm.log_initial.clone()  # (h,) log P(prefix, next hidden state), normalised
        self._kept: tuple[torch.Tensor | None, torch.Tensor] | None = None  # (hidden idx, their alpha) of this step
        self._mass: list[float] = []

    def _support(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The hidden states taking part this step (None = all) and their forward log-mass."""
        if self.top_k is None:
            return None, self.alpha
        vals, idx = torch.topk(self.alpha, self.top_k)  # (k,)
        self._mass.append(math.exp(float(torch.logsumexp(vals, 0))))
        return idx, vals

    def process(self, logits: torch.Tensor, aux: Any = None) -> torch.Tensor:
        dev = self.alpha.device
        st, ok = self._allowed()
        idx, a = self._support()
        self._kept = (idx, a)
        ba = self.table.row(self.remaining - 1)[st.dsts]  # (n, h): log P(complete | enter dst, next hidden)
        emit = self.emit if idx is None else self.emit[idx]  # (k, V)
        if idx is not None:
            ba = ba[:, idx]
        scores = torch.cat([a[None, :] + ba, a[None, :]])  # (n+1, k); last row: P(x | prefix) alone
        peak = scores.max(dim=1, keepdim=True).values
        peak = torch.where(torch.isfinite(peak), peak, 0.0)  # (n+1, 1)
        weights = torch.exp(scores - peak)  # (n+1, k)
        ids = st.ids
        if ids.numel() * 2 > emit.shape[1]:
            per_token = (weights @ emit)[:, ids]  # (n+1, m)
        else:
            per_token = weights @ emit[:, ids]  # (n+1, m)
        logp = per_token.clamp_min(1e-38).log() + peak  # (n+1, m)
        cols = torch.arange(ids.numel(), device=dev)
        ratio = logp[st.rows, cols] - logp[-1]  # (m,) log P_HMM(complete | prefix, x)
        llm = torch.log_softmax(logits.float().to(dev), dim=-1)  # (V,)
        out = torch.full_like(llm, -math.inf)
        chosen = ids[ok]
        out[chosen] = (llm[chosen] + ratio[ok]).clamp_min(_FLOOR)
        if self.dfa.accept[self.state]:  # ending here completes the format: ratio 1
            eos = torch.tensor(sorted(self.eos_ids), device=dev)
            out[eos] = llm[eos]
        return out.to(logits.device)

    def advance(self, token_id: int) -> None:
        if token_id not in self.eos_ids:
            idx, a = self._kept if self._kept is not None else self._support()
            log_emit = self.hmm.log_emission[:, token_id] if idx is None else self.hmm.log_emission[idx, token_id]
            v = a + log_emit  # (k,): log P(prefix + x, current hidden)
            m = v.max()
            trans = self.trans if idx is None else self.trans[idx]  # (k, h)
            nxt = (torch.exp(v - m) @ trans).clamp_min(1e-38).log()  # (h,)
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
