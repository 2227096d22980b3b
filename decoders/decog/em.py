"""Baum-Welch (EM) for the HMM: batched, scaled forward-backward; held-out log-likelihood per epoch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from decoders.decog.hmm import HMM

__all__ = ["EpochReport", "Sequences", "expected_counts", "fit", "mean_log_likelihood"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sequences:
    """Token sequences, right-padded: row i holds ``lengths[i]`` real tokens."""

    ids: torch.Tensor
    """(N, T) int64."""
    lengths: torch.Tensor
    """(N,) int64."""

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def split(self, heldout: float, seed: int) -> tuple[Sequences, Sequences]:
        """(train, held-out) by a seeded shuffle; the held-out part has at least one row when N >= 2."""
        n = len(self)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        k = min(n - 1, max(1, round(n * heldout))) if n >= 2 and heldout > 0 else 0
        test, train = perm[:k], perm[k:]
        return Sequences(self.ids[train], self.lengths[train]), Sequences(self.ids[test], self.lengths[test])


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    train_ll: float
    """Mean log-likelihood per token of the training data under the parameters before this epoch's M-step."""
    heldout_ll: float | None
    """Mean log-likelihood per token of the held-out data after the M-step (None without held-out data)."""
    seconds: float


@torch.no_grad()
def expected_counts(hmm: HMM, ids: torch.Tensor, lengths: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """E-step on one batch: expected initial (h,), transition (h, h) and emission (h, V) counts, and the
    log-likelihood of each sequence (B,). Scaled forward-backward in probability space."""
    dev = hmm.device
    ids, lengths = ids.to(dev), lengths.to(dev)
    b, t_len = ids.shape
    h, v = hmm.hidden_states, hmm.vocab_size
    trans = hmm.log_transition.exp()  # (h, h)
    valid = torch.arange(t_len, device=dev)[None, :] < lengths[:, None]  # (B, T)
    emit = torch.where(valid[..., None], hmm.log_emission.t().exp()[ids], 1.0)  # (B, T, h)

    fwd = torch.empty(b, t_len, h, device=dev)  # normalised forward messages
    scale = torch.empty(b, t_len, device=dev)
    f = hmm.log_initial.exp()[None, :] * emit[:, 0]  # (B, h)
    for t in range(t_len):
        if t:
            f = (f @ trans) * emit[:, t]
        c = f.sum(dim=-1)  # (B,)
        f = f / c[:, None]
        fwd[:, t], scale[:, t] = f, c

    bwd = torch.empty(b, t_len, h, device=dev)
    g = torch.ones(b, h, device=dev)
    bwd[:, -1] = g
    for t in range(t_len - 2, -1, -1):
        g = ((emit[:, t + 1] * g) @ trans.t()) / scale[:, t + 1, None]  # (B, h)
        bwd[:, t] = g

    post = fwd * bwd  # (B, T, h), each valid row sums to 1
    init = post[:, 0].sum(dim=0)  # (h,)
    emission = torch.zeros(v, h, device=dev)
    emission.index_add_(0, ids[valid], post[valid])
    # xi_t(i, j) = f_t(i) A(i, j) e_{t+1}(j) g_{t+1}(j) / c_{t+1}, only where t+1 is a real token.
    nxt = (emit[:, 1:] * bwd[:, 1:] / scale[:, 1:, None]) * valid[:, 1:, None]  # (B, T-1, h)
    transition = trans * (fwd[:, :-1].reshape(-1, h).t() @ nxt.reshape(-1, h))  # (h, h)
    loglik = torch.where(valid, scale.log(), 0.0).sum(dim=1)  # (B,)
    return init, transition, emission.t(), loglik


def mean_log_likelihood(hmm: HMM, data: Sequences, batch_size: int = 256) -> float:
    """Mean log-likelihood per token of ``data``."""
    total = 0.0
    for i in range(0, len(data), batch_size):
        total += float(hmm.log_likelihood(data.ids[i : i + batch_size], data.lengths[i : i + batch_size]).sum())
    return total / max(1, data.tokens)


def fit(
    hmm: HMM,
    train: Sequences,
    heldout: Sequences | None = None,
    epochs: int = 10,
    batch_size: int = 256,
    pseudocount: float = 0.01,
    progress: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> tuple[HMM, list[EpochReport]]:
    """Run ``epochs`` of full-batch EM (counts summed over mini-batches, one M-step per epoch).

    Returns the fitted HMM and one report per epoch (held-out log-likelihood after each M-step).
    """
    reports: list[EpochReport] = []
    bar = tqdm(range(1, epochs + 1), desc="EM", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        h, v, dev = hmm.hidden_states, hmm.vocab_size, hmm.device
        init = torch.zeros(h, device=dev)
        trans = torch.zeros(h, h, device=dev)
        emit = torch.zeros(h, v, device=dev)
        ll = 0.0
        for i in range(0, len(train), batch_size):
            ci, ct, ce, lb = expected_counts(hmm, train.ids[i : i + batch_size], train.lengths[i : i + batch_size])
            init += ci
            trans += ct
            emit += ce
            ll += float(lb.sum())
        hmm = HMM.from_counts(init, trans, emit, hmm.eos_token_id, hmm.fingerprint, pseudocount, hmm.meta)
        held = mean_log_likelihood(hmm, heldout, batch_size) if heldout is not None and len(heldout) else None
        report = EpochReport(epoch, ll / max(1, train.tokens), held, time.perf_counter() - t0)
        reports.append(report)
        bar.set_postfix(train_ll=f"{report.train_ll:.3f}", heldout_ll="-" if held is None else f"{held:.3f}")
        logger.info("EM epoch %d: train ll/token %.4f, held-out ll/token %s (%.1fs)", epoch, report.train_ll,
                    "-" if held is None else f"{held:.4f}", report.seconds)
        if on_epoch is not None:
            on_epoch(report)
    return hmm, reports
