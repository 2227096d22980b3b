"""The peer for bench/decog_cost.py: Ctrl-G's published mechanics, re-implemented naively (no pruning, no cache).

What Ctrl-G does (joshuacnf/Ctrl-G, ``ConstraintLogitsProcessor``), written here from its description:

- the DFA as dense masks: T (edges x V) with a 1 where a token labels an edge, VE (states x edges) and
  EV (edges x states) for edge sources and destinations;
- per request, the whole backward table C of shape (T+1, S, h), every row computed (T = the budget),
  with the edge weights ``log(T @ emit^T)`` from a dense (E, V) x (V, h) product;
- per step, the HMM term for every DFA state and every token: ``logsumexp_s (A + C[k][s]) . emit`` masked by
  ``(VE[state] * EV)^T @ T`` — an (S, h) x (h, V) product and an (S, E) x (E, V) product — then minus
  ``log P_HMM(x | prefix)``, plus the LLM's log-softmax.

Same event as ours (EOS in an accepting state, a terminal state, or an accepting state at the budget), so
the two compute the same distribution; only the cost differs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from decoders.decog.hmm import HMM
from decoders.formats import TokenDFA
from decoders.processor import Processor

__all__ = ["NaiveCtrlG"]

_NEG = -1e30


def _log_mm(a: torch.Tensor, b_exp: torch.Tensor) -> torch.Tensor:
    """log(exp(a) @ b) for log-space rows ``a`` (R, h) and a probability matrix ``b`` (h, C)."""
    m = a.amax(dim=1, keepdim=True).clamp_min(_NEG)
    return (torch.exp(a - m) @ b_exp).clamp_min(1e-38).log() + m


class NaiveCtrlG(Processor):
    """Builds its masks and full table in the constructor (per request, as Ctrl-G's processor does)."""

    def __init__(self, dfa: TokenDFA, hmm: HMM, eos_ids: frozenset[int], budget: int, width: int) -> None:
        t0 = time.perf_counter()
        self.dfa, self.hmm, self.eos_ids, self.budget = dfa, hmm, eos_ids, budget
        s_count, v, h = dfa.num_states, hmm.vocab_size, hmm.hidden_states
        e_count = dfa.num_edges
        src = np.repeat(np.arange(s_count), np.diff(dfa.edge_ptr))
        self.t_mask = torch.zeros(e_count, v)  # (E, V)
        for e, set_id in enumerate(dfa.edge_set.tolist()):
            self.t_mask[e, torch.from_numpy(dfa.sets[set_id])] = 1.0
        self.ve = torch.zeros(s_count, e_count)  # (S, E)
        self.ve[torch.from_numpy(src), torch.arange(e_count)] = 1.0
        self.ev = torch.zeros(e_count, s_count)  # (E, S)
        self.ev[torch.arange(e_count), torch.from_numpy(dfa.edge_dst.astype(np.int64))] = 1.0
        emit, trans = hmm.log_emission.exp(), hmm.log_transition.exp()
        t_weights = (self.t_mask @ emit.t()).clamp_min(1e-38).log()  # (E, h)
        accept = torch.from_numpy(dfa.accept)
        terminal = accept & torch.from_numpy(np.diff(dfa.edge_ptr) == 0)
        eos = torch.where(accept[:, None], hmm.log_emission[:, hmm.eos_token_id][None, :], _NEG)  # (S, h)
        b = torch.where(accept[:, None], 0.0, _NEG).expand(s_count, h).contiguous()
        rows = [_log_mm(b, trans.t())]
        dst = torch.from_numpy(dfa.edge_dst.astype(np.int64))
        src_rows = torch.from_numpy(src)[:, None].expand(-1, h).contiguous()  # (E, h)
        for _ in range(budget):  # every row, no early stop
            y = t_weights + rows[-1][dst]  # (E, h)
            m = torch.full((s_count, h), _NEG).scatter_reduce(0, src_rows, y, "amax")  # per (state, h), as Ctrl-G
            m = torch.maximum(m, eos)
            agg = self.ve @ torch.exp(y - m[src_rows[:, 0]]) + torch.exp(eos - m)  # (S, h)
            b = torch.where(terminal[:, None], 0.0, agg.clamp_min(1e-38).log() + m)
            rows.append(_log_mm(b, trans.t()))
        self.table = torch.stack(rows)  # (T+1, S, h)
        self.emit, self.trans = emit, trans
        self.alpha = hmm.log_initial.clone()
        self.state, self.steps, self.done = 0, 0, False
        self.width = width
        self.build_seconds = time.perf_counter() - t0

    def process(self, logits: torch.Tensor, aux: Any = None) -> torch.Tensor:
        k = self.budget - self.steps - 1
        c = self.alpha[None, :] + self.table[k]  # (S, h)
        hmm_all = _log_mm(c, self.emit)  # (S, V): every state, every token
        mask = (self.ve[self.state][:, None] * self.ev).t() @ self.t_mask  # (S, V): state s -> s' on token x
        fits = torch.from_numpy(self.dfa.dist <= k)[:, None]
        hmm_logits = torch.logsumexp(hmm_all + torch.where((mask > 0) & fits, 0.0, -math.inf), dim=0)  # (V,)
        norm = _log_mm(self.alpha[None, :], self.emit)[0]  # (V,) log P_HMM(x | prefix)
        llm = torch.log_softmax(logits.float(), dim=-1)
        out = torch.full_like(llm, -math.inf)
        v = hmm_logits.shape[0]
        out[:v] = llm[:v] + hmm_logits - norm
        eos = torch.tensor(sorted(self.eos_ids))
        out[eos] = llm[eos] if self.dfa.accept[self.state] else -math.inf
        return out

    def eos_allowed(self) -> bool:
        return bool(self.dfa.accept[self.state])

    def advance(self, token_id: int) -> None:
        self.steps += 1
        if token_id in self.eos_ids:
            self.done = True
            return
        v = self.alpha + self.hmm.log_emission[:, token_id]
        nxt = (torch.exp(v - v.max()) @ self.trans).log()
        self.alpha = nxt - torch.logsumexp(nxt, 0)
        self.state = self.dfa.step(self.state, token_id)
        if self.state < 0:
            self.done = True

    def finished(self) -> bool:
        return self.done or self.dfa.terminal(self.state)

    def stats(self) -> Mapping[str, Any]:
        return {"table_build_ms": round(self.build_seconds * 1000, 3), "table_bytes": self.table.numel() * 4}
