"""A stable id of a causal LM's weights and tokenizer, read from its files (independent of dtype and device)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["model_fingerprint"]

_VERSION = b"promptwire-fingerprint/1"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HEAD = 1 << 20
"""Bytes read in full at the start of a weight file (safetensors: the header with every tensor's name,
dtype, shape and offsets)."""
_SAMPLES = 256
_SAMPLE = 1 << 12
"""Evenly spaced blocks read from the rest of a weight file: about 1 MiB, whatever the checkpoint's size."""
_TOKENIZER_FILES = frozenset(
    {"tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt"}
)
"""The files that define the token ids (chat templates and generation settings do not)."""


def _resolve(source: str | Path) -> Path:
    p = Path(source)
    if p.is_dir():
        return p
    # a Hugging Face id: only what the local hub cache holds (a fingerprint never downloads)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(source), local_files_only=True))


def _identity_files(root: Path) -> list[Path]:
    return sorted(
        f for f in root.iterdir()
        if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name in _TOKENIZER_FILES)
    )


def _hash_weights(h: Any, fh: BinaryIO, size: int) -> None:
    h.update(size.to_bytes(8, "little"))
    h.update(fh.read(_HEAD))
    if size <= _HEAD:
        return
    stride = (size - _HEAD) / _SAMPLES
    for i in range(_SAMPLES):
        fh.seek(_HEAD + int(i * stride))
        h.update(fh.read(_SAMPLE))


@functools.lru_cache(maxsize=16)
def _digest(files: tuple[tuple[str, int, int], ...], root: str) -> str:
    h = hashlib.sha256(_VERSION)
    for name, size, _ in files:
        h.update(name.encode() + b"\0")
        with open(Path(root) / name, "rb") as fh:
            if Path(name).suffix in _WEIGHT_SUFFIXES:
                _hash_weights(h, fh, size)
            else:
                h.update(fh.read())
    return h.hexdigest()[:32]


def model_fingerprint(source: str | Path) -> str:
    """32 hex digits identifying the weights and the tokenizer of SOURCE (a directory or a Hugging Face id
    already in the local cache).

    Reads the weight files (``*.safetensors``, ``*.bin``: size, the first MiB with the tensor index,
    and 256 evenly spaced 4 KiB blocks — about 2 MiB per file, so large checkpoints cost milliseconds)
    and the vocabulary files in full. The same checkpoint gives the same id wherever it is copied and
    whatever dtype or device it is loaded with; a different chat template or generation config does
    not change it; other weights (a fine-tune of the same base changes nearly every block) do. An
    identity check against mix-ups, not a security hash. Memoised per file set (name, size, mtime).
    """
    root = _resolve(source)
    files = _identity_files(root)
    if not any(f.suffix in _WEIGHT_SUFFIXES for f in files):
        raise FileNotFoundError(f"{root}: no weight files (*.safetensors, *.bin) to fingerprint")
    key = tuple((f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in files)
    return _digest(key, str(root.resolve()))
