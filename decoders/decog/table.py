"""The backward table: per tokens left, DFA state and hidden state, log P(the format can still complete).

With ``B[k][s, h]`` = log P(the output is complete within k more tokens | DFA state s, the next token is
emitted from hidden state h), where complete means: EOS in an accepting state, a terminal state (the
decoder stops there), or an accepting state when the budget runs out::

    B[0][s]    = 0 if s accepts else -inf
    B[k][s]    = 0 for terminal s, else
                 log( [s accepts] * emit[h, EOS]  +  sum over edges s -x-> s' of emit[h, x] * exp(Ba[k-1][s', h]) )
    Ba[k][s,h] = log sum_h' trans[h, h'] * exp(B[k][s, h'])

The table stores ``Ba`` (K+1, S, h): what a step needs to score "emit x now, then complete from s'".
Edges are grouped by token set, so the inner sum over x is one (h,)-vector per distinct set, computed
once per (format, HMM). ``B[k]`` grows with k and converges; once a step changes nothing (within
``tol``) the remaining rows equal the last one and are not stored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from decoders.decog.hmm import HMM
from decoders.formats import TokenDFA

__all__ = ["BackwardTable", "build_table", "set_weights"]

logger = logging.getLogger(__name__)

_NEG = float("-inf")


@dataclass(frozen=True)
class BackwardTable:
    """``Ba`` for k = 0..K (rows past ``rows - 1`` equal the last one) and how it was built."""

    ba: torch.Tensor
    """(R, S, h) float32: row k = Ba[k] (R <= budget + 1 when it converged early)."""
    budget: int
    """Largest k the table answers (tokens left after the next one)."""
    seconds: float

    def row(self, k: int) -> torch.Tensor:
        """Ba[k] (S, h) for 0 <= k <= budget."""
        assert 0 <= k <= self.budget, (k, self.budget)
        return self.ba[min(k, self.ba.shape[0] - 1)]

    @property
    def converged_at(self) -> int | None:
        """The k after which rows repeat, or None if the table runs to ``budget``."""
        rows = self.ba.shape[0]
        return rows - 1 if rows - 1 < self.budget else None

    @property
    def nbytes(self) -> int:
        return int(self.ba.numel() * self.ba.element_size())


def set_weights(hmm: HMM, dfa: TokenDFA, chunk: int = 64) -> torch.Tensor:
    """log sum_{x in set} emit[h, x] for every token set of ``dfa``: (n_sets, h)."""
    emit = hmm.emission  # (h, V)
    out = torch.empty(len(dfa.sets), hmm.hidden_states, device=hmm.device)
    for lo in range(0, len(dfa.sets), chunk):
        sets = dfa.sets[lo : lo + chunk]
        ind = torch.zeros(hmm.vocab_size, len(sets), device=hmm.device)  # (V, c)
        for j, ids in enumerate(sets):
            ind[torch.from_numpy(ids[ids < hmm.vocab_size]).to(hmm.device), j] = 1.0
        out[lo : lo + len(sets)] = (emit @ ind).t().log()  # (c, h)
    return out


def _log_matmul_rows(x: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """log( exp(x) @ trans^T ) row-stably for x (S, h) with -inf entries: out[s, h] = log sum_h' T[h,h'] e^x[s,h']."""
    m = x.max(dim=1, keepdim=True).values  # (S, 1)
    safe = torch.where(torch.isfinite(m), m, 0.0)
    return (torch.exp(x - safe) @ trans.t()).log() + safe  # (S, h)


@torch.no_grad()
def build_table(hmm: HMM, dfa: TokenDFA, budget: int, tol: float = 1e-5) -> BackwardTable:
    """Build ``Ba[0..budget]`` for ``dfa`` under ``hmm`` (see the module docs)."""
    t0 = time.perf_counter()
    dev = hmm.device
    s_count, h = dfa.num_states, hmm.hidden_states
    trans = hmm.transition  # (h, h)
    weights = set_weights(hmm, dfa)  # (n_sets, h)
    src = torch.from_numpy(np.repeat(np.arange(s_count), np.diff(dfa.edge_ptr))).to(dev)  # (E,)
    e_set = torch.from_numpy(dfa.edge_set.astype(np.int64)).to(dev)  # (E,)
    e_dst = torch.from_numpy(dfa.edge_dst.astype(np.int64)).to(dev)  # (E,)
    accept = torch.from_numpy(dfa.accept).to(dev)  # (S,)
    terminal = accept & torch.from_numpy(np.diff(dfa.edge_ptr) == 0).to(dev)  # (S,)
    eos = torch.where(accept[:, None], hmm.log_emission[:, hmm.eos_token_id][None, :], _NEG)  # (S, h)
    edge_w = weights[e_set]  # (E, h)
    src_rows = src[:, None].expand(-1, h).contiguous()  # (E, h); an expanded index makes scatter slow

    b = torch.where(accept[:, None], 0.0, _NEG).expand(s_count, h).contiguous()  # B[0] (S, h)
    rows = [_log_matmul_rows(b, trans)]
    for _ in range(1, budget + 1):
        vals = edge_w + rows[-1][e_dst]  # (E, h): emit a token of the set, then complete from dst
        peak = torch.full((s_count, h), _NEG, device=dev).scatter_reduce(0, src_rows, vals, "amax")
        peak = torch.maximum(peak, eos)
        safe = torch.where(torch.isfinite(peak), peak, 0.0)  # (S, h)
        total = torch.zeros(s_count, h, device=dev).scatter_add(0, src_rows, torch.exp(vals - safe[src]))
        total += torch.exp(eos - safe)
        b = torch.where(terminal[:, None], 0.0, total.log() + safe)  # B[k] (S, h)
        nxt = _log_matmul_rows(b, trans)
        same = _close(nxt, rows[-1], tol)
        rows.append(nxt)
        if same:
            break
    table = BackwardTable(torch.stack(rows), budget, time.perf_counter() - t0)
    logger.debug("decog table: %d states x %d hidden, %d of %d rows, %.1f MB, %.3fs", s_count, h, len(rows),
                 budget + 1, table.nbytes / 1e6, table.seconds)
    return table


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb):
        return False
    return bool(((a - b).abs()[fa] <= tol).all()) if bool(fa.any()) else True
