"""Stage `select_prompt`: IDP (soft prompt chosen by the local model's attention) and IDP-text (by embeddings).

Torch-free at import: the soft-prompt modules (`attention`, `train`) import torch and are loaded only
for soft pools; IDP-text runs on ONNX Runtime.
"""

from __future__ import annotations

from gateway.stages.select_prompt.encoder import EncoderError, SentenceEncoder, ensure_encoder, export_encoder
from gateway.stages.select_prompt.errors import SelectPromptError
from gateway.stages.select_prompt.pool import PoolError, PoolInfo, SoftPool, read_pool_info, save_pool
from gateway.stages.select_prompt.text import (
    TextChoice,
    TextEntry,
    TextSelector,
    query_text,
    with_instruction,
)

__all__ = [
    "EncoderError",
    "PoolError",
    "PoolInfo",
    "SelectPromptError",
    "SentenceEncoder",
    "SoftPool",
    "TextChoice",
    "TextEntry",
    "TextSelector",
    "ensure_encoder",
    "export_encoder",
    "query_text",
    "read_pool_info",
    "save_pool",
    "with_instruction",
]
