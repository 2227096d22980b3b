"""Translators on tiny locally built checkpoints: the real from_pretrained path, codes per family, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from decoders.tiny import build_tiny_causal_lm
from gateway.config import LocalBackendConfig
from gateway.providers.local import LocalProvider
from gateway.stages.conjugate.languages import canonical, flores
from gateway.stages.conjugate.translate import (
    INSTRUCTION,
    SelfTranslator,
    Seq2SeqTranslator,
    TranslatorUnavailable,
    UnknownLanguage,
    provider_complete,
    segments,
)
from tests.support.tiny_seq2seq import build_tiny_seq2seq

TEXT = "The cat is blue. It has 42 legs!\n\nA second paragraph."


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seq2seq")
    build_tiny_seq2seq(root / "opus-mt-en-fr", "marian", seed=1)
    build_tiny_seq2seq(root / "opus-mt-fr-en", "marian", seed=2)
    build_tiny_seq2seq(root / "m2m", "m2m100")
    build_tiny_seq2seq(root / "nllb", "nllb")
    return root


def _direct(model_dir: Path, texts: list[str], **kw: object) -> list[str]:
    """What transformers itself answers, greedy, for comparison."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    for k in ("src_lang",):
        if k in kw:
            setattr(tok, k, kw.pop(k))
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ids = model.generate(**enc, do_sample=False, num_beams=1,
                             max_new_tokens=min(2 * enc["input_ids"].shape[1] + 16, 254), **kw)
    lang_ids = set(getattr(tok, "lang_code_to_id", {}).values())
    rows = [[t for t in row if t not in lang_ids] for row in ids.tolist()]
    return [t.strip() for t in tok.batch_decode(rows, skip_special_tokens=True)]


def test_segments_keep_every_separator() -> None:
    parts = segments(TEXT)
    assert "".join(parts) == TEXT
    assert parts[::2] == ["The cat is blue.", "It has 42 legs!", "A second paragraph."]
    assert segments("") == [""]


def test_language_codes() -> None:
    assert [canonical(c) for c in ("fr", "FR", "fra", "fra_Latn", " de ", "gsw", "pt-BR", "x", "f r", "")] == [
        "fr", "fr", "fr", "fr", "de", "gsw", "pt-BR", "", "", ""
    ]
    assert flores("fr") == "fra_Latn" and flores("zh") == "zho_Hans" and flores("ast_Latn") == "ast_Latn"
    assert flores("gsw") is None


async def test_marian_template_translates_both_ways_like_transformers(models: Path) -> None:
    t = Seq2SeqTranslator(str(models / "opus-mt-{src}-{tgt}"), languages=["fr"])
    try:
        assert t.language("fr") == "fr" and t.language("FRA") == "fr"
        there = await t.translate([TEXT, "", "  "], "en", "fr")
        a, b, c = _direct(models / "opus-mt-en-fr", ["The cat is blue.", "It has 42 legs!", "A second paragraph."])
        assert there == [f"{a} {b}\n\n{c}", "", "  "]  # separators verbatim; blank texts not sent to the model
        back = await t.translate([there[0]], "fr", "en")
        parts = segments(there[0])
        parts[::2] = _direct(models / "opus-mt-fr-en", parts[::2])
        assert back == ["".join(parts)]
    finally:
        await t.aclose()


async def test_m2m100_and_nllb_use_their_own_codes(models: Path) -> None:
    m2m = Seq2SeqTranslator(str(models / "m2m"))
    nllb = Seq2SeqTranslator(str(models / "nllb"), languages=["fr", "de"])
    try:
        assert m2m.language("fra_Latn") == "fr" and m2m.language("de") == "de"  # any code it has a token for
        with pytest.raises(UnknownLanguage, match="__zz__") as e:
            m2m.language("zz")
        assert e.value.param == "promptwire.conjugate.language"
        out = await m2m.translate(["The cat is blue."], "en", "fr")
        tok = AutoTokenizer.from_pretrained(models / "m2m")
        assert out == _direct(models / "m2m", ["The cat is blue."], src_lang="en",
                              forced_bos_token_id=tok.get_lang_id("fr"))
        assert nllb.language("fr") == "fr" and nllb.language("fra_Latn") == "fr"
        with pytest.raises(UnknownLanguage, match="configured languages"):
            nllb.language("es")
        out = await nllb.translate(["The cat is blue."], "en", "fr")
        tok = AutoTokenizer.from_pretrained(models / "nllb")
        assert out == _direct(models / "nllb", ["The cat is blue."], src_lang="eng_Latn",
                              forced_bos_token_id=tok.convert_tokens_to_ids("fra_Latn"))
        assert out != await nllb.translate(["The cat is blue."], "en", "de")  # the target token matters
    finally:
        await m2m.aclose()
        await nllb.aclose()


@pytest.mark.parametrize("code", ["", "f r", "en", "ENG", "eng_Latn", "!!"])
def test_bad_language_codes_name_the_option(models: Path, code: str) -> None:
    t = Seq2SeqTranslator(str(models / "m2m"))
    with pytest.raises(UnknownLanguage) as e:
        t.language(code)
    assert e.value.param == "promptwire.conjugate.language"


def test_translators_that_cannot_load_name_the_key(models: Path, tmp_path: Path) -> None:
    causal = build_tiny_causal_lm(tmp_path / "llama", "llama")
    cases = [
        (str(tmp_path / "missing"), "no such directory"),
        (str(causal), "cannot load translator"),  # a causal LM is not a seq2seq translator
        (str(models / "opus-mt-en-fr"), "one way only"),
        (str(models / "opus-mt-{src}-{tgt}"), "list its languages"),
    ]
    for source, message in cases:
        with pytest.raises(TranslatorUnavailable, match=message) as e:
            Seq2SeqTranslator(source)
        assert e.value.param == "stages.conjugate.translator"
    with pytest.raises(TranslatorUnavailable, match="opus-mt-en-de"):  # a listed language without its model
        Seq2SeqTranslator(str(models / "opus-mt-{src}-{tgt}"), languages=["fr", "de"])
    with pytest.raises(TranslatorUnavailable, match=r"stages\.conjugate\.languages"):
        Seq2SeqTranslator(str(models / "m2m"), languages=["zz"])
    with pytest.raises(TranslatorUnavailable, match="device 'nodevice'"):
        Seq2SeqTranslator(str(models / "m2m"), device="nodevice")


@pytest.fixture
async def local_provider(tmp_path: Path) -> AsyncIterator[LocalProvider]:
    path = build_tiny_causal_lm(tmp_path / "qwen", "qwen2", seed=5)
    provider = LocalProvider("local", LocalBackendConfig(type="local", model_path=str(path), models=("tiny",)))
    yield provider
    await provider.aclose()


async def test_self_translation_on_the_tiny_local_model(local_provider: LocalProvider) -> None:
    seen: list[list[dict[str, str]]] = []
    complete = provider_complete(local_provider, "tiny")

    async def recording(messages: list[dict[str, str]], max_tokens: int) -> str:
        seen.append(messages)
        return await complete(messages, max_tokens)

    t = SelfTranslator(recording, backend="local", max_tokens=12)
    assert t.name == "self:local"
    assert t.language("fr") == "fr"
    with pytest.raises(UnknownLanguage, match="no name"):
        t.language("gsw")
    out = await t.translate(["The cat is blue.", ""], "en", "fr")
    assert seen == [[{"role": "system", "content": INSTRUCTION.format(source="English", target="French")},
                     {"role": "user", "content": "The cat is blue."}]]
    assert out[1] == ""
    # greedy on the engine: the same answer as asking the provider directly, and again
    assert out[0] == (await complete(seen[0], 12)).strip()
    assert out == await t.translate(["The cat is blue.", ""], "en", "fr")
