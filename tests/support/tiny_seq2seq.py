"""Deterministic tiny seq2seq translators (Marian-, M2M100-, NLLB-style) built locally for the tests.

Each builder trains its tokenizer on a small fixed corpus (SentencePiece for Marian and M2M100, a
tokenizers BPE for NLLB), initialises a random model from a seeded RNG and ``save_pretrained``s both,
so the translators load through the same ``AutoTokenizer`` / ``AutoModelForSeq2SeqLM.from_pretrained``
path a real checkpoint takes. The output is gibberish but the same on every run.

    build_tiny_seq2seq(tmp / "opus-mt-en-fr", "marian")
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["SEQ2SEQ_FAMILIES", "build_tiny_seq2seq", "corpus"]

Family = Literal["marian", "m2m100", "nllb"]
SEQ2SEQ_FAMILIES: tuple[Family, ...] = ("marian", "m2m100", "nllb")

_WORDS = (
    "the a of and to in is it that for on with as was at by an be this from or have not are but what "
    "le la les de des et est un une pour dans avec sur pas que qui "
    "der die das und ist nicht mit ein eine zu von "
    "question answer model prompt cat dog house water blue green red number "
    "café naïve élève über straße señor niño ça été 1 2 3 42 100 2024 3.14 . , ! ? ; : ' \" ( ) -"
).split()


def corpus(n: int = 400) -> list[str]:
    """Fixed pseudo-sentences (no RNG state shared with the caller)."""
    out = []
    state = 12345
    for i in range(n):
        words = []
        for _ in range(3 + i % 9):
            state = (state * 1103515245 + 12345) % (1 << 31)
            words.append(_WORDS[state % len(_WORDS)])
        out.append(" ".join(words))
    return out


def _spm_model(texts: list[str], vocab_size: int) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, num_threads=1, hard_vocab_limit=False, seed_sentencepiece_size=100_000, shuffle_input_sentence=False,
        unk_id=1, bos_id=-1, eos_id=2, pad_id=0, unk_piece="<unk>", eos_piece="</s>", pad_piece="<pad>",
        minloglevel=2,
    )
    return buf.getvalue()


def _save_model(out: Path, config: Any, seed: int, quiet_ids: list[int] | None = None) -> None:
    from transformers import AutoModelForSeq2SeqLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSeq2SeqLM.from_config(config)
    if quiet_ids:  # language tokens: small embeddings, so a random model does not repeat the forced one
        with torch.no_grad():
            model.get_input_embeddings().weight[quiet_ids] *= 0.02  # (V, d) rows
    # a random model often says </s> first; a few tokens at least keep the tests' translations non-empty
    model.generation_config.min_new_tokens = 8
    # ... and a growing push towards </s> keeps them short (a trained model stops by itself); pad, unk
    # and bos would decode to nothing
    model.generation_config.exponential_decay_length_penalty = (10, 1.5)
    model.generation_config.no_repeat_ngram_size = 2
    model.generation_config.suppress_tokens = sorted(
        {t for t in (config.pad_token_id, getattr(config, "bos_token_id", None), 1 if config.model_type == "marian" else 3)
         if t is not None}
    )
    model.save_pretrained(out)


def _marian(out: Path, seed: int, languages: tuple[str, ...]) -> None:
    from transformers import MarianConfig, MarianTokenizer

    texts = corpus()
    (out / "source.spm").write_bytes(_spm_model(texts, 200))
    (out / "target.spm").write_bytes(_spm_model(list(reversed(texts)), 200))
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=(out / "source.spm").read_bytes())
    tgt = spm.SentencePieceProcessor(model_proto=(out / "target.spm").read_bytes())
    # Marian's vocab.json is one shared piece -> id map; </s> 0, <unk> 1 as in opus-mt, <pad> last.
    vocab: dict[str, int] = {"</s>": 0, "<unk>": 1}
    for code in languages:  # a multi-target model (en-ROMANCE style) carries >>xx<< tokens
        vocab[f">>{code}<<"] = len(vocab)
    for proc in (sp, tgt):
        for i in range(proc.get_piece_size()):
            piece = proc.id_to_piece(i)
            if piece not in ("<unk>", "<pad>", "</s>", "<s>"):
                vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8")
    tok = MarianTokenizer(str(out / "source.spm"), str(out / "target.spm"), str(out / "vocab.json"))
    tok.save_pretrained(out)
    pad = vocab["<pad>"]
    config = MarianConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
        pad_token_id=pad, eos_token_id=0, decoder_start_token_id=pad, forced_eos_token_id=0,
        init_std=0.2, scale_embedding=True, share_encoder_decoder_embeddings=True,
    )
    _save_model(out, config, seed)


def _m2m100(out: Path, seed: int) -> None:
    from transformers import M2M100Config, M2M100Tokenizer

    (out / "sentencepiece.bpe.model").write_bytes(_spm_model(corpus(), 200))
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=(out / "sentencepiece.bpe.model").read_bytes())
    vocab: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8")
    tok = M2M100Tokenizer(str(out / "vocab.json"), str(out / "sentencepiece.bpe.model"), num_madeup_words=0)
    tok.save_pretrained(out)
    # the language tokens sit after the SentencePiece vocabulary, as in facebook/m2m100_418M
    config = M2M100Config(
        vocab_size=max(tok.lang_code_to_id.values()) + 1, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=256, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        init_std=0.2, scale_embedding=True,
    )
    _save_model(out, config, seed, sorted(tok.lang_code_to_id.values()))


def _nllb(out: Path, seed: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, NllbTokenizer

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False
    )
    raw.train_from_iterator(corpus(), trainer)
    data = json.loads(raw.to_str())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    tok = NllbTokenizer(vocab=data["model"]["vocab"], merges=merges)
    tok.save_pretrained(out)
    config = M2M100Config(
        vocab_size=max(tok.get_vocab().values()) + 1, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, init_std=0.2,
        scale_embedding=True,
    )
    langs = [i for t, i in tok.get_vocab().items() if re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", t)]
    _save_model(out, config, seed, sorted(langs))


def build_tiny_seq2seq(
    out_dir: str | Path, family: Family = "marian", seed: int = 0, languages: tuple[str, ...] = ()
) -> Path:
    """Build a tiny translator of ``family`` into ``out_dir`` (created) and return the directory.

    ``languages`` (Marian only) adds ``>>xx<<`` target tokens, as multi-target opus-mt models have."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if family == "marian":
        _marian(out, seed, languages)
    elif family == "m2m100":
        _m2m100(out, seed)
    elif family == "nllb":
        _nllb(out, seed)
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {SEQ2SEQ_FAMILIES}")
    return out
