"""The hidden Markov model Deco-G distils from the LLM: log-space parameters, safetensors I/O, likelihood."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["HMM", "HMM_FILE", "HMMError", "tokenizer_fingerprint"]

logger = logging.getLogger(__name__)

HMM_FILE = "hmm.safetensors"
"""File name inside a distillation output directory (a path to the file itself also works)."""
_FORMAT = "promptwire.decog.hmm/1"


class HMMError(ValueError):
    """An HMM file is missing, malformed, or made for another tokenizer."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable id of what a tokenizer does: its vocabulary, merges, added tokens and text pipeline.

    Padding/truncation settings are left out, so the same tokenizer loaded twice (or saved and loaded)
    has the same fingerprint; any change to how text maps to ids changes it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        keep = {k: spec.get(k) for k in ("model", "added_tokens", "normalizer", "pre_tokenizer", "decoder")}
    else:  # slow tokenizers: the vocabulary is what we can see
        keep = {"vocab": sorted(tokenizer.get_vocab().items())}
    keep["special"] = sorted(getattr(tokenizer, "all_special_ids", []))
    blob = json.dumps(keep, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _log_normalise(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x - torch.logsumexp(x, dim=dim, keepdim=True)


class HMM:
    """z_1 ~ initial; x_t ~ emission[z_t]; z_{t+1} ~ transition[z_t]. All parameters are log-probabilities.

    ``log_transition`` (h, h), ``log_emission`` (h, V), ``log_initial`` (h,). ``eos_token_id`` is the
    token that ends the distilled sequences; ``fingerprint`` ties the model to its tokenizer.
    """

    def __init__(
        self,
        log_initial: torch.Tensor,
        log_transition: torch.Tensor,
        log_emission: torch.Tensor,
        eos_token_id: int,
        fingerprint: str,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        h = log_initial.shape[0]
        if log_transition.shape != (h, h) or log_emission.ndim != 2 or log_emission.shape[0] != h:
            raise HMMError(f"inconsistent HMM shapes: initial {tuple(log_initial.shape)}, transition "
                           f"{tuple(log_transition.shape)}, emission {tuple(log_emission.shape)}")
        if not 0 <= eos_token_id < log_emission.shape[1]:
            raise HMMError(f"eos_token_id {eos_token_id} outside the vocabulary ({log_emission.shape[1]})")
        self.log_initial = log_initial.float()
        self.log_transition = log_transition.float()
        self.log_emission = log_emission.float()
        self.eos_token_id = int(eos_token_id)
        self.fingerprint = fingerprint
        self.meta = dict(meta or {})
        self.uid = uuid.uuid4().hex
        """Identifies this HMM object in cache keys (two HMMs never share a backward table)."""

    # -- construction -----------------------------------------------------------------------------------

    @classmethod
    def random(cls, hidden: int, vocab: int, eos_token_id: int, fingerprint: str, seed: int = 0) -> HMM:
        """Random parameters (rows drawn from a softmax of Gaussian scores)."""
        g = torch.Generator().manual_seed(seed)
        return cls(
            _log_normalise(torch.randn(hidden, generator=g)),
            _log_normalise(torch.randn(hidden, hidden, generator=g)),
            _log_normalise(torch.randn(hidden, vocab, generator=g)),
            eos_token_id, fingerprint,
        )

    @classmethod
    def from_counts(cls, initial: torch.Tensor, transition: torch.Tensor, emission: torch.Tensor,
                    eos_token_id: int, fingerprint: str, pseudocount: float = 0.01,
                    meta: Mapping[str, str] | None = None) -> HMM:
        """Normalised (expected) counts; each row gets ``pseudocount`` spread evenly over its entries so
        no probability is zero (the backward table needs every token to keep some mass)."""

        def norm(c: torch.Tensor) -> torch.Tensor:
            c = c.double() + pseudocount / c.shape[-1]
            return (c / c.sum(dim=-1, keepdim=True)).log().float()

        return cls(norm(initial), norm(transition), norm(emission), eos_token_id, fingerprint, meta)

    # -- properties ---------------------------------------------------------------------------------------

    @property
    def hidden_states(self) -> int:
        return int(self.log_initial.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.log_emission.shape[1])

    @property
    def nbytes(self) -> int:
        """Parameters plus the probability-space copies decoding keeps (about 4x the parameters)."""
        return 4 * sum(t.numel() * t.element_size() for t in (self.log_initial, self.log_transition, self.log_emission))

    @functools.cached_property
    def emission(self) -> torch.Tensor:
        """(h, V) emission probabilities (computed once)."""
        return self.log_emission.exp()

    @functools.cached_property
    def transition(self) -> torch.Tensor:
        """(h, h) transition probabilities (computed once)."""
        return self.log_transition.exp()

    @functools.cached_property
    def emission_by_token(self) -> torch.Tensor:
        """(V, h) emission probabilities, one contiguous row per token."""
        return self.emission.t().contiguous()

    @functools.cached_property
    def log_emission_by_token(self) -> torch.Tensor:
        """(V, h) log emission, one contiguous row per token (what a decoding step reads)."""
        return self.log_emission.t().contiguous()

    @property
    def device(self) -> torch.device:
        return self.log_emission.device

    def to(self, device: torch.device | str) -> HMM:
        """A copy on ``device`` (self if already there)."""
        if torch.device(device) == self.device:
            return self
        return HMM(self.log_initial.to(device), self.log_transition.to(device), self.log_emission.to(device),
                   self.eos_token_id, self.fingerprint, self.meta)

    # -- likelihood ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def log_likelihood(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """log P(sequence) per row of ``ids`` (B, T), each counted up to its length (B,)."""
        trans = self.log_transition.exp()  # (h, h)
        emit_t = self.log_emission.t().exp()  # (V, h)
        ids = ids.to(self.device)
        valid = torch.arange(ids.shape[1], device=self.device)[None, :] < lengths.to(self.device)[:, None]  # (B, T)
        f = self.log_initial.exp()[None, :].expand(ids.shape[0], -1)  # (B, h)
        total = torch.zeros(ids.shape[0], device=self.device, dtype=torch.float64)
        for t in range(ids.shape[1]):
            if t:
                f = f @ trans
            e = torch.where(valid[:, t, None], emit_t[ids[:, t]], 1.0)  # (B, h)
            f = f * e
            c = f.sum(dim=-1)  # (B,)
            f = f / c[:, None]
            total += c.log().double()
        return total

    # -- files --------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (a directory gets ``hmm.safetensors`` inside) with the tokenizer fingerprint."""
        from safetensors.torch import save_file

        out = Path(path)
        if out.suffix != ".safetensors":
            out.mkdir(parents=True, exist_ok=True)
            out = out / HMM_FILE
        meta = {**self.meta, "format": _FORMAT, "tokenizer_fingerprint": self.fingerprint,
                "eos_token_id": str(self.eos_token_id)}
        tensors = {"log_initial": self.log_initial, "log_transition": self.log_transition,
                   "log_emission": self.log_emission}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out), metadata=meta)
        return out

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None, device: str | torch.device = "cpu") -> HMM:
        """Read an HMM file (or a directory holding ``hmm.safetensors``).

        With ``fingerprint`` (see :func:`tokenizer_fingerprint`), an HMM made for another tokenizer is an
        :class:`HMMError`.
        """
        from safetensors import SafetensorError, safe_open

        src = Path(path)
        if src.is_dir():
            src = src / HMM_FILE
        if not src.is_file():
            raise HMMError(f"no HMM file at {src}")
        try:
            with safe_open(str(src), framework="pt", device=str(device)) as fh:
                meta = dict(fh.metadata() or {})
                tensors = {k: fh.get_tensor(k) for k in ("log_initial", "log_transition", "log_emission")}
        except (SafetensorError, OSError, KeyError) as exc:
            raise HMMError(f"{src} is not a promptwire HMM file: {exc}") from exc
        if meta.get("format") != _FORMAT:
            raise HMMError(f"{src} is not a promptwire HMM file (format {meta.get('format')!r})")
        stored = meta.get("tokenizer_fingerprint", "")
        if fingerprint is not None and stored != fingerprint:
            raise HMMError(f"{src} was distilled for another tokenizer (fingerprint {stored[:19]}..., "
                           f"this model's tokenizer is {fingerprint[:19]}...)")
        extra = {k: v for k, v in meta.items() if k not in ("format", "tokenizer_fingerprint", "eos_token_id")}
        return cls(tensors["log_initial"], tensors["log_transition"], tensors["log_emission"],
                   int(meta.get("eos_token_id", "0")), stored, extra)
