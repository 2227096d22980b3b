"""Deterministic tiny causal LMs (Llama-, GPT-2-, Qwen2-style) with locally trained tokenizers."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

__all__ = ["FAMILIES", "TinySpec", "build_tiny_causal_lm", "corpus"]

logger = logging.getLogger(__name__)

Family = Literal["llama", "gpt2", "qwen2"]
FAMILIES: tuple[Family, ...] = ("llama", "gpt2", "qwen2")


@dataclass(frozen=True)
class TinySpec:
    """Model dimensions; the defaults make a test-sized model (~0.2M parameters)."""

    vocab_size: int = 512
    """Target BPE vocabulary (byte tokens and specials included)."""
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 1024
    init_std: float = 0.2
    """Weight init std; larger than HF's 0.02 so random logits are peaked and outputs vary."""


# Words from several scripts so the tokenizers learn multi-byte pieces and still fall back to bytes.
_WORDS = (
    "the a of and to in is it that for on with as was at by an be this from or have not are but "
    "model prompt token label answer question gateway decode stream cache batch sample logits "
    "café naïve résumé über straße größer façade déjà señor niño ça été "
    "東京 日本語 中文 模型 提示 你好 世界 こんにちは ありがとう 한국어 안녕하세요 "
    "привет мир модель ελληνικά αλφα 😀 🚀 ✨ 👍 🎉 "
    "def return class import print self None True False 0 1 2 3 42 100 ( ) [ ] { } : , . ! ? = + -"
).split()

_LLAMA_CHAT = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}<<SYS>>\n{{ m['content'] }}\n<</SYS>>\n\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)
_GPT2_CHAT = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """A deterministic multilingual pseudo-text corpus (also handy as benchmark prompts)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        lines.append(" ".join(words) + rng.choice([".", "!", "?", "", "\n"]))
    return lines


def _llama_tokenizer(spec: TinySpec, texts: list[str]) -> Tokenizer:
    # SentencePiece-like: "▁" marks spaces, unknown characters fall back to <0xNN> byte tokens.
    specials = ["<unk>", "<s>", "</s>"]
    n_bytes = 256
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size - n_bytes, special_tokens=specials, limit_alphabet=120, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    # Insert the 256 byte tokens right after the specials, as Llama's tokenizer.json has them.
    data = json.loads(tok.to_str())
    old = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab: dict[str, int] = {}
    for piece, _ in old[: len(specials)]:
        vocab[piece] = len(vocab)
    for b in range(n_bytes):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in old[len(specials) :]:
        vocab.setdefault(piece, len(vocab))
    data["model"]["vocab"] = vocab
    data["added_tokens"] = [
        {"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for s in specials
    ]
    data["decoder"] = json.loads(
        decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        ).__getstate__()
    )
    tok = Tokenizer.from_str(json.dumps(data))
    # Like Llama, encoding a plain string starts with <s>.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok


def _byte_level_tokenizer(spec: TinySpec, texts: list[str], specials: list[str]) -> Tokenizer:
    # GPT-2 / Qwen2: byte-level BPE, every string round-trips, no unknown tokens.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def _model_config(family: Family, spec: TinySpec, vocab: int, ids: dict[str, int]) -> Any:
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common: dict[str, Any] = {"vocab_size": vocab, "initializer_range": spec.init_std}
    if family == "gpt2":
        return GPT2Config(
            n_embd=spec.hidden_size, n_layer=spec.num_layers, n_head=spec.num_heads,
            n_positions=spec.max_positions, bos_token_id=ids["bos"], eos_token_id=ids["eos"], **common,
        )
    cls = LlamaConfig if family == "llama" else Qwen2Config
    return cls(
        hidden_size=spec.hidden_size, intermediate_size=spec.hidden_size * 2,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=max(1, spec.num_heads // 2), max_position_embeddings=spec.max_positions,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        tie_word_embeddings=family == "qwen2", **common,
    )


def build_tiny_causal_lm(out_dir: str | Path, family: Family, seed: int = 0, spec: TinySpec | None = None) -> Path:
    """Train a tokenizer, initialise a random model and ``save_pretrained`` both into ``out_dir``.

    Deterministic in (family, seed, spec); never touches the network. The directory then loads with
    ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` offline and carries
    a chat template and a generation config (EOS, pad).
    """
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    spec = spec or TinySpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = corpus(seed)

    # 1) tokenizer, trained locally
    if family == "llama":
        raw = _llama_tokenizer(spec, texts)
        tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
        template = _LLAMA_CHAT
    elif family == "gpt2":
        raw = _byte_level_tokenizer(spec, texts, ["<|endoftext|>"])
        tokens = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        template = _GPT2_CHAT
    else:
        raw = _byte_level_tokenizer(spec, texts, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        tokens = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        template = _CHATML
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, **tokens)  # type: ignore[no-untyped-call]
    tokenizer.chat_template = template
    ids: dict[str, int] = {}
    for key, name in (("bos", tokens.get("bos_token", tokens["pad_token"])), ("eos", tokens["eos_token"]),
                      ("pad", tokens["pad_token"])):
        token_id = raw.token_to_id(name)
        assert token_id is not None, name
        ids[key] = token_id

    # 2) model, random weights from a private RNG so the caller's global seed is untouched
    config = _model_config(family, spec, len(tokenizer), ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.bos_token_id = ids["bos"]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.info("built tiny %s causal LM (vocab %d) in %s", family, len(tokenizer), out)
    return out
