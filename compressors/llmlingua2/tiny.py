"""Deterministic tiny LLMLingua-2-style token classifiers with locally trained tokenizers."""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "N_FORCE_PLACEHOLDERS",
    "STANDINS",
    "TinyConfig",
    "build_tiny",
    "build_tiny_bert",
    "build_tiny_xlmr",
    "is_standin",
    "standin_checkpoint",
    "training_corpus",
]

logger = logging.getLogger(__name__)

N_FORCE_PLACEHOLDERS = 100
"""The real checkpoints ship the added special tokens [NEW0]..[NEW99]."""

Arch = Literal["bert", "xlmr"]


@dataclass(frozen=True)
class TinyConfig:
    """Dimensions and seed of a tiny token classifier (defaults: fast enough for unit tests)."""

    arch: Arch = "bert"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128
    trained_vocab: int = 2000
    """Vocabulary learned from the built-in corpus (before filler padding and [NEWi])."""
    vocab_size: int | None = None
    """Pad the vocabulary with filler tokens up to this many ids incl. [NEWi] (e.g. 119647 for mBERT)."""
    seed: int = 0
    head_scale: float = 2.5
    """Std of the classifier's keep-minus-drop logit, so probabilities spread over (0, 1)."""


_WORDS = {
    "en": "the meeting agenda budget council member vote motion approve public hearing item report city "
    "staff recommend discussion question answer project plan water street park library police fire "
    "department resolution amendment second carried unanimously next we will now move to please thank "
    "you everyone good evening tonight is about because this that these those with from into under over "
    "model token prompt compress language large inference server request response latency throughput",
    "de": "die der das und ist nicht ein eine Sitzung Haushalt Stadt Rat Antrag Abstimmung Bericht "
    "Straße Wasser Bibliothek Polizei danke schön heute Abend über für mit von zu werden können müssen",
    "fr": "le la les et est pas une un réunion budget ville conseil vote rapport rue eau bibliothèque "
    "police merci beaucoup ce soir pour avec dans sur nous vous être avoir élève déjà où très",
    "es": "el la los las y es no una un reunión presupuesto ciudad consejo voto informe calle agua "
    "biblioteca policía gracias esta noche para con en sobre nosotros señor año niño también",
    "ru": "и в не на что это как по но мы вы они совет город бюджет голосование отчёт улица вода "
    "библиотека полиция спасибо сегодня вечер",
    "zh": "会议 议程 预算 城市 议会 投票 报告 街道 水 图书馆 警察 谢谢 今天 晚上 我们 你们 他们 的 是 不 在 有 和",
    "ja": "会議 予算 都市 投票 報告 ありがとう 今日 私たち です ます の は が を に",
    "code": "def return import from class self None True False if else elif for while in print "
    "async await lambda yield try except raise with as json dict list int str float "
    "user_id getUserName max_tokens http_request parseJSON snake_case camelCase v2 sha256 utf8",
    "md": "# ## ### - * > ` ``` [link](https://example.com/path?q=1) **bold** _italic_ | table | --- |",
}


def training_corpus(seed: int = 0, n_lines: int = 3000) -> list[str]:
    """A deterministic multilingual corpus (prose, code, markdown, numbers) to train tokenizers on."""
    rng = random.Random(seed)
    langs = list(_WORDS)
    vocab = {k: v.split() for k, v in _WORDS.items()}
    lines = []
    # every printable ASCII character at least once so tokenizers rarely emit unknown tokens
    lines.append("".join(chr(c) for c in range(33, 127)))
    for _ in range(n_lines):
        lang = rng.choice(langs)
        n = rng.randint(4, 18)
        words = [rng.choice(vocab[lang]) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, n), str(rng.randint(0, 100000)))
        if rng.random() < 0.2:
            words.insert(
                rng.randint(0, n), f"{rng.randint(1, 31)}.{rng.randint(1, 12)}.{rng.randint(1990, 2030)}"
            )
        sep = "" if lang in ("zh", "ja") else " "
        line = sep.join(words)
        line = line[0].upper() + line[1:] + rng.choice([".", "?", "!", ":", ";", ","])
        lines.append(line)
    return lines


def _special_placeholders() -> list[str]:
    return [f"[NEW{i}]" for i in range(N_FORCE_PLACEHOLDERS)]


def _train_bert_tokenizer(cfg: TinyConfig) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.trained_vocab,
        special_tokens=specials,
        show_progress=False,
        continuing_subword_prefix="##",
    )
    tok.train_from_iterator(training_corpus(cfg.seed), trainer=trainer)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    pieces = [p for p, _ in vocab]
    target = cfg.vocab_size
    if target is not None:
        n_fill = target - N_FORCE_PLACEHOLDERS - len(pieces)
        if n_fill < 0:
            raise ValueError(f"vocab_size {target} is smaller than the trained vocabulary")
        pieces += [f"[unused{i}]" for i in range(n_fill)]
    new = Tokenizer(
        models.WordPiece(
            {p: i for i, p in enumerate(pieces)}, unk_token="[UNK]", max_input_chars_per_word=100
        )
    )
    new.normalizer = tok.normalizer
    new.pre_tokenizer = tok.pre_tokenizer
    new.decoder = tok.decoder
    new.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", pieces.index("[CLS]")), ("[SEP]", pieces.index("[SEP]"))],
    )
    new.add_special_tokens(specials + _special_placeholders())
    return new


def _train_xlmr_tokenizer(cfg: TinyConfig) -> Any:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=cfg.trained_vocab, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(training_corpus(cfg.seed), trainer=trainer)
    model_json = json.loads(tok.to_str())["model"]
    pieces: list[tuple[str, float]] = [(p, float(s)) for p, s in model_json["vocab"]]
    target = cfg.vocab_size
    if target is not None:
        n_fill = target - N_FORCE_PLACEHOLDERS - 1 - len(pieces)  # 1 for <mask>
        if n_fill < 0:
            raise ValueError(f"vocab_size {target} is smaller than the trained vocabulary")
        pieces += [(f"<unused{i}>", -99.0) for i in range(n_fill)]
    pieces.append(("<mask>", 0.0))
    new = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    new.normalizer = tok.normalizer
    new.pre_tokenizer = tok.pre_tokenizer
    new.decoder = tok.decoder
    new.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    new.add_special_tokens([*specials, "<mask>", *_special_placeholders()])
    return new


def build_tiny(out_dir: str | Path, cfg: TinyConfig | None = None) -> Path:
    """Build and save a tiny token classifier + tokenizer; loadable by transformers and llmlingua."""
    import torch
    from transformers import (
        BertConfig,
        BertForTokenClassification,
        PreTrainedTokenizerFast,
        XLMRobertaConfig,
        XLMRobertaForTokenClassification,
    )

    cfg = cfg or TinyConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model: Any
    if cfg.arch == "bert":
        tok = _train_bert_tokenizer(cfg)
        names = dict(
            cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]"
        )
        config: Any = BertConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=512,
            num_labels=2,  # type: ignore[call-arg]
            pad_token_id=tok.token_to_id("[PAD]"),
        )
        cls: Any = BertForTokenClassification
    elif cfg.arch == "xlmr":
        tok = _train_xlmr_tokenizer(cfg)
        names = dict(
            bos_token="<s>",
            eos_token="</s>",
            cls_token="<s>",
            sep_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            mask_token="<mask>",
        )
        config = XLMRobertaConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=514,
            type_vocab_size=1,
            num_labels=2,  # type: ignore[call-arg]
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        cls = XLMRobertaForTokenClassification
    else:
        raise ValueError(f"unknown arch {cfg.arch!r}")
    config.id2label = {0: "LABEL_0", 1: "LABEL_1"}
    config.label2id = {"LABEL_0": 0, "LABEL_1": 1}

    torch.manual_seed(cfg.seed)
    model = cls(config).eval()
    with torch.no_grad():
        # spread keep-probabilities: logit difference std ~ head_scale for unit-variance features
        std = cfg.head_scale / (2 * cfg.hidden_size) ** 0.5
        g = torch.Generator().manual_seed(cfg.seed + 1)
        w = torch.randn(2, cfg.hidden_size, generator=g) * std  # (2, H)
        model.classifier.weight.copy_(w)
        model.classifier.bias.copy_(torch.tensor([0.0, 0.1]))
    model.save_pretrained(out)

    hf_tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, model_max_length=512, **names
    )
    hf_tok.save_pretrained(out)
    logger.info("built tiny %s classifier in %s (vocab %d)", cfg.arch, out, tok.get_vocab_size())
    return out


def build_tiny_bert(out_dir: str | Path, **kw: Any) -> Path:
    """BERT-multilingual-style tiny classifier (WordPiece "##", [CLS]/[SEP], [NEWi])."""
    return build_tiny(out_dir, TinyConfig(arch="bert", **kw))


def build_tiny_xlmr(out_dir: str | Path, **kw: Any) -> Path:
    """XLM-R-style tiny classifier (Unigram "▁", <s>/</s>, [NEWi])."""
    return build_tiny(out_dir, TinyConfig(arch="xlmr", **kw))


STANDINS = {"tiny:llmlingua2": "bert", "tiny:llmlingua2-xlmr": "xlmr"}
"""Model names that stand for a tiny classifier built locally on first use (the embedded default's
compressor): its choices of words are arbitrary, it exists so compression runs end to end offline."""


def is_standin(source: str | Path) -> bool:
    return str(source).startswith("tiny:")


def standin_checkpoint(source: str, root: Path) -> Path:
    """The checkpoint directory of stand-in SOURCE under ROOT, built once (atomically) if missing."""
    arch = STANDINS.get(source)
    if arch is None:
        raise ValueError(f"unknown stand-in {source!r}; expected one of {', '.join(STANDINS)}")
    target = root / "tiny" / f"{source.split(':', 1)[1]}-classifier"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".standin-", dir=target.parent))
        build_tiny(tmp, TinyConfig(arch=arch))  # type: ignore[arg-type]
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return target
