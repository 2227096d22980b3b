"""The backward table against brute-force enumeration, convergence, and real formats."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from decoders.decog.hmm import HMM
from decoders.decog.table import build_table, set_weights
from decoders.formats import TokenDFA, compile_format

EOS = 4


def _toy_dfa() -> TokenDFA:
    """Tokens 0-3 (4 is EOS): start -{0,1}-> A -{0,1}-> A, A -{2}-> B (accepts), B -{3}-> C (accepts, terminal)."""
    sets = (np.array([0, 1]), np.array([2]), np.array([3]))
    edges = [[(0, 1)], [(0, 1), (1, 2)], [(2, 3)], []]
    ptr = np.cumsum([0] + [len(e) for e in edges])
    return TokenDFA(
        kind="regex", source="toy", vocab_size=5,
        accept=np.array([False, False, True, True]),
        edge_ptr=ptr.astype(np.int64),
        edge_set=np.array([s for e in edges for s, _ in e], dtype=np.int32),
        edge_dst=np.array([d for e in edges for _, d in e], dtype=np.int32),
        sets=sets,
        dist=np.array([2, 1, 0, 0], dtype=np.int32),
    )


def _brute(hmm: HMM, dfa: TokenDFA, state: int, k: int, first_hidden: int) -> float:
    """P(the output completes within k tokens | DFA state, hidden state of the next emission), by enumeration."""
    pi = torch.zeros(hmm.hidden_states, dtype=torch.double)
    pi[first_hidden] = 1.0
    a, e = hmm.log_transition.exp().double(), hmm.log_emission.exp().double()

    def prob(seq: tuple[int, ...]) -> float:  # P(x_1..x_j | z_1 = first_hidden)
        f = pi * e[:, seq[0]]
        for x in seq[1:]:
            f = (f @ a) * e[:, x]
        return float(f.sum())

    if dfa.terminal(state) or (k == 0 and dfa.accept[state]):
        return 1.0
    total = 0.0
    for j in range(1, k + 1):
        for seq in itertools.product(range(5), repeat=j):
            s, ok = state, True
            for x in seq[:-1]:
                s = dfa.step(s, x) if x != EOS else -1
                if s < 0 or dfa.terminal(s):
                    ok = False
                    break
            if not ok:
                continue
            last = seq[-1]
            if last == EOS:
                event = bool(dfa.accept[s])
            else:
                s = dfa.step(s, last)
                event = s >= 0 and (dfa.terminal(s) or (j == k and bool(dfa.accept[s])))
            if event:
                total += prob(seq)
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_table_matches_enumeration(seed: int) -> None:
    hmm = HMM.random(3, 5, eos_token_id=EOS, fingerprint="t", seed=seed)
    dfa = _toy_dfa()
    table = build_table(hmm, dfa, budget=4, tol=0.0)
    assert table.ba.shape == (5, 4, 3)
    trans = hmm.log_transition.exp().double()
    for k in range(5):
        for s in range(4):
            b = torch.tensor([_brute(hmm, dfa, s, k, h) for h in range(3)], dtype=torch.double)
            want = (trans @ b).log()  # Ba[k][s, h] = log sum_h' T[h, h'] B[k][s, h']
            torch.testing.assert_close(table.row(k)[s].double(), want, atol=1e-5, rtol=1e-4)


def test_set_weights_sum_emissions() -> None:
    hmm = HMM.random(3, 5, eos_token_id=EOS, fingerprint="t", seed=2)
    w = set_weights(hmm, _toy_dfa())
    torch.testing.assert_close(w[0], torch.logsumexp(hmm.log_emission[:, [0, 1]], dim=1))
    torch.testing.assert_close(w[1], hmm.log_emission[:, 2])


def test_table_stops_when_converged_and_answers_every_budget() -> None:
    hmm = HMM.random(3, 5, eos_token_id=EOS, fingerprint="t", seed=0)
    dfa = _toy_dfa()
    full = build_table(hmm, dfa, budget=400, tol=0.0)
    early = build_table(hmm, dfa, budget=400, tol=1e-6)
    assert early.converged_at is not None and early.ba.shape[0] < 400
    for k in (0, 3, 50, 399, 400):
        torch.testing.assert_close(early.row(k), full.row(k), atol=1e-4, rtol=0)
    assert early.nbytes < full.nbytes


def test_tables_for_real_formats(tiny_lm: Callable[[str], tuple[Any, Any]], tiny_hmm: Callable[[str], HMM]) -> None:
    _, tok = tiny_lm("gpt2")
    hmm = tiny_hmm("gpt2")
    dfa = compile_format("template", "Answer: {int}\nConfidence: {choice:low|medium|high}", tok)
    table = build_table(hmm, dfa, budget=64)
    rows = table.ba[: dfa.min_tokens + 2]
    assert torch.isfinite(table.row(64)).all()  # every live state can complete with 64 tokens left
    for s in range(dfa.num_states):  # a row is finite exactly when the state can finish in time
        for k in range(rows.shape[0]):
            assert bool(torch.isfinite(rows[k, s]).all()) == (int(dfa.dist[s]) <= k), (s, k)
    assert (table.row(64) <= 1e-5).all()  # probabilities
    diffs = table.ba[1:] - table.ba[:-1]
    assert (diffs[torch.isfinite(diffs)] >= -1e-4).all()  # more tokens left never lowers the chance
