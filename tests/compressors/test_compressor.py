"""Default mode, structure protections, messages, errors and the torch-free runtime path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compressors.llmlingua2.compressor import Compressor
from compressors.llmlingua2.errors import CompressorError
from compressors.llmlingua2.structure import Protections

DOC = (
    "# Council meeting\n\nGood evening everyone. The council will now vote on item 12, the water budget.\n"
    "Please say aye.   Die Sitzung ist heute Abend.\n\n"
    "```python\ndef get_user(user_id):\n    return db[user_id]\n```\n"
    'See https://example.com/a?b=1 and call getUserName() with {"a": [1, 2]} v2 sha256 and 3,400,000.\n'
)


@pytest.fixture(scope="module", params=["bert", "xlmr"])
def comp(request: pytest.FixtureRequest, tiny_exports: dict[str, Path]) -> Compressor:
    return Compressor(tiny_exports[request.param])


def test_empty_and_whitespace(comp: Compressor) -> None:
    r = comp.compress("", rate=0.5)
    assert (r.text, r.origin_tokens, r.compressed_tokens) == ("", 0, 0)
    assert comp.compress(" \n\t ", rate=0.5).text == " \n\t "


def test_rate_is_respected_and_words_are_original(comp: Compressor) -> None:
    text = ("The council will now vote on the water budget and the library report. " * 30).strip()
    r = comp.compress(text, rate=0.4, protections=Protections(numbers=False, identifiers=False))
    assert 0.2 * r.origin_tokens <= r.compressed_tokens <= 0.45 * r.origin_tokens
    originals = set(text.replace(".", " .").split()) | set(text.split())
    for w in r.text.split():
        assert w in originals or w.rstrip(".") in originals


def test_protections_and_newlines(comp: Compressor) -> None:
    r = comp.compress(DOC, rate=0.3)
    for kept in (
        "```python\ndef get_user(user_id):\n    return db[user_id]\n```",
        "https://example.com/a?b=1",
        '{"a": [1, 2]}',
        "getUserName",
        "v2",
        "sha256",
        "3,400,000",
    ):
        assert kept in r.text
    assert "\n" in r.text.split("```")[0] or r.text.startswith("```")
    off = comp.compress(DOC, rate=0.2, protections=Protections(False, False, False, False, False))
    assert off.compressed_tokens < r.compressed_tokens


def test_markers(comp: Compressor) -> None:
    text = (
        "intro words here <pw:keep>keep every single word of this</pw:keep> and the remaining tail words go"
    )
    r = comp.compress(text, rate=0.2)
    assert "keep every single word of this" in r.text and "<pw:" not in r.text
    only = "fixed part stays exactly <pw:compress>this long part may be shortened by the model a lot</pw:compress>!"
    r2 = comp.compress(only, rate=0.2)
    assert r2.text.startswith("fixed part stays exactly ") and r2.text.endswith("!")
    assert len(r2.text) < len(only) - len("<pw:compress></pw:compress>")


def test_messages_never_touch_last_user(comp: Compressor) -> None:
    msgs = [
        {
            "role": "system",
            "content": "You are a helpful assistant who answers questions about the council meeting. " * 3,
        },
        {
            "role": "user",
            "content": "Earlier context: the council will now vote on the water budget tonight. " * 3,
        },
        {"role": "assistant", "content": "Noted, thank you for the context about the meeting."},
        {"role": "user", "content": "What was the budget of the water item discussed tonight?"},
    ]
    r = comp.compress_messages(msgs, rate=0.3)
    assert r.messages[3] == msgs[3] and r.messages[2] == msgs[2]
    assert len(r.messages[0]["content"]) < len(msgs[0]["content"])
    assert len(r.messages[1]["content"]) < len(msgs[1]["content"])
    assert r.compressed_tokens < r.origin_tokens


def test_long_input_chunks_without_gluing(comp: Compressor) -> None:
    text = " ".join(f"word{i % 7}x alpha beta gamma delta." for i in range(600))  # > 1 window
    r = comp.compress(text, rate=0.5, protections=Protections(identifiers=False))
    words = {t.strip(".") for t in text.split()} | {""}
    assert len(r.text.split()) > 100
    for w in r.text.split():
        assert w.strip(".") in words  # never two words glued together


def test_keep_probs_batch_entry(comp: Compressor) -> None:
    ids = comp.classifier.tokenizer.encode("Good evening everyone.").ids
    single = comp.keep_probs([ids])[0]
    batched = comp.keep_probs([ids, ids[:2], ids + ids])
    assert single.shape == (len(ids),) and np.allclose(batched[0], single, atol=1e-5)
    assert ((single > 0) & (single < 1)).all()
    assert comp.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"rate": 0.0}, "rate"),
        ({"rate": 1.5}, "rate"),
        ({"target_token": 0}, "target_token"),
        ({"target_token": -5}, "target_token"),
        ({"force_tokens": [f"t{i}" for i in range(101)]}, "force_tokens"),
    ],
)
def test_bad_options(comp: Compressor, kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(CompressorError) as ei:
        comp.compress("hello world", **kwargs)  # type: ignore[arg-type]
    assert ei.value.param == param and isinstance(ei.value, ValueError)


def test_bad_inputs(comp: Compressor) -> None:
    with pytest.raises(CompressorError) as ei:
        comp.compress(b"abc \xff\xfe")
    assert ei.value.param == "context" and "UTF-8" in str(ei.value)
    with pytest.raises(CompressorError) as ei:
        comp.compress_llmlingua(["ok", 3])  # type: ignore[list-item]
    assert ei.value.param == "context[1]"
    with pytest.raises(CompressorError):
        comp.compress_messages([{"role": "system", "content": {"x": 1}}])
    assert comp.compress("héllo wörld".encode()).origin_tokens > 0


def test_runtime_path_imports_no_torch(tiny_exports: dict[str, Path]) -> None:
    code = (
        "import sys\n"
        "from compressors.llmlingua2.compressor import Compressor\n"
        f"c = Compressor({str(tiny_exports['xlmr'])!r})\n"
        "r = c.compress('The council will now vote on the water budget tonight.', rate=0.5)\n"
        "c.compress_llmlingua('The council will now vote.', rate=0.5)\n"
        "assert r.text\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().replace("'", '"')) == []


@pytest.mark.slow
def test_ten_megabyte_document(tiny_exports: dict[str, Path]) -> None:
    c = Compressor(tiny_exports["bert"])
    unit = "The council will now vote on item 12, the water budget. Die Sitzung ist heute Abend.\n"
    text = unit * (10_000_000 // len(unit))
    r = c.compress(text, rate=0.5)
    assert 0 < r.compressed_tokens < r.origin_tokens
    assert r.text.count("\n") > 1000
