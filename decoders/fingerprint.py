"""A stable id of a causal LM's weights and tokenizer, read from its files (independent of dtype and device)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["model_fingerprint"]

_VERSION = b"promptwire-fingerprint/1"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
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


@functools.lru_cache(maxsize=16)
def _digest(files: tuple[tuple[str, int, int], ...], root: str) -> str:
    h = hashlib.sha256(_VERSION)
    for name, _, _ in files:
        h.update(name.encode() + b"\0")
        with open(Path(root) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:32]


def model_fingerprint(source: str | Path) -> str:
    """32 hex digits identifying the weights and the tokenizer of SOURCE (a directory or a Hugging Face id
    already in the local cache).

    Hashes the weight files (``*.safetensors``, ``*.bin``) and the vocabulary files by content, so the
    same checkpoint gives the same id wherever it is copied and whatever dtype or device it is loaded
    with; a different chat template or generation config does not change it. Memoised per file set
    (name, size, mtime), so asking twice costs one directory listing.
    """
    root = _resolve(source)
    files = _identity_files(root)
    if not any(f.suffix in _WEIGHT_SUFFIXES for f in files):
        raise FileNotFoundError(f"{root}: no weight files (*.safetensors, *.bin) to fingerprint")
    key = tuple((f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in files)
    return _digest(key, str(root.resolve()))
