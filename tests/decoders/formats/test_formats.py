"""Formats: regex subset and templates vs Python's re, byte automata, and their lift to tokens."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from decoders.formats import (
    FormatError,
    compile_bytes,
    compile_format,
    parse_regex,
    parse_template,
    template_regex,
    token_bytes,
)
from decoders.formats.bytedfa import DEAD, ByteDFA
from decoders.formats.utf8 import utf8_sequences

REGEXES = [
    r"[a-z]+@[a-z]+\.(com|org)",
    r"\d{3}-\d{4}",
    r"(ab|a)*b?",
    r"[^a-c\n]{2,4}x",
    r".*",
    r"(?:yes|no|maybe)",
    r"\w+\s\W",
    r"-?\d+(\.\d+)?",
    r"[α-ω]+|東京",
    r"a{,3}b{2,}",
    r"(?P<x>[0-9]){2}\.",
    r"\x41\u00e9\N{DIGIT ONE}",
    r"[\]\-^]+",
    r"a|",
    r"()",
    r"^abc$",
    r"[\b\t]+",
    r"\.\*\{",
    r"a{",
    r"x{2,3}?y*?",
    r"[^\x00-\x7f]+",
    r"\D\S\W",
    r"[\d\s]{1,3}",
    r"a{,}c",
    r"\0\012",
]

TEMPLATES = [
    "#### {int}",
    "Score: {choice:1|2|3|4|5}",
    "Answer: {int}\nConfidence: {choice:low|medium|high}",
    "{number}",
    "{{x}} = {number}",
    "{choice:low|lower|lowest} {int}",
    "Reason: {text:6}\nAnswer: {choice:yes|no}",
    "Event: {choice:attack|meeting}\nAgent: {text:5}\nPlace: {text:4}\nTime: {int}",
    "{text:3}",
    "",
]

EXTRA_CHARS = "abcxyz0129-. \n@é東αω_\t{}#:"


def _sample_dfa(dfa: ByteDFA, rng: random.Random, max_len: int = 24) -> bytes | None:
    """A random string the byte automaton accepts (None if the walk ran out of length)."""
    state, out = dfa.start, bytearray()
    for _ in range(max_len):
        if dfa.accept[state] and rng.random() < 0.3:
            return bytes(out)
        moves = np.flatnonzero(dfa.trans[state] != DEAD)
        if moves.size == 0:
            break
        b = int(moves[rng.randrange(moves.size)])
        out.append(b)
        state = int(dfa.trans[state, b])
    return bytes(out) if dfa.accept[state] else None


def _random_strings(pattern: str, rng: random.Random, n: int) -> list[str]:
    alphabet = sorted(set(pattern) | set(EXTRA_CHARS))
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(n)]


def _mutate(s: str, rng: random.Random) -> str:
    if s and rng.random() < 0.5:
        i = rng.randrange(len(s))
        return s[:i] + s[i + 1 :]
    i = rng.randint(0, len(s))
    return s[:i] + rng.choice(EXTRA_CHARS) + s[i:]


# -- UTF-8 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lo,hi", [(0, 0x7F), (0x80, 0x7FF), (0x41, 0x10FFFF), (0x7FF, 0x800), (0xE000, 0x1F600)])
def test_utf8_sequences_cover_exactly_the_range(lo: int, hi: int) -> None:
    ranges = ((lo, min(hi, 0xD7FF)), (max(lo, 0xE000), hi)) if lo < 0xD800 < hi else ((lo, hi),)
    seqs = utf8_sequences(tuple(r for r in ranges if r[0] <= r[1]))
    rng = random.Random(lo)
    probes = {lo, hi, lo + 1, hi - 1, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000} | {
        rng.randint(0, 0x10FFFF) for _ in range(400)
    }
    for cp in probes:
        if 0xD800 <= cp <= 0xDFFF or not 0 <= cp <= 0x10FFFF:
            continue
        data = chr(cp).encode("utf-8")
        hit = any(len(s) == len(data) and all(a <= b <= z for (a, z), b in zip(s, data, strict=True)) for s in seqs)
        assert hit == (lo <= cp <= hi), hex(cp)


# -- regexes vs Python's re ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_automaton_matches_python_re(pattern: str) -> None:
    dfa = compile_bytes(parse_regex(pattern), "regex")
    rx = re.compile(pattern, re.ASCII)
    rng = random.Random(pattern)
    samples = [s for s in (_sample_dfa(dfa, rng) for _ in range(150)) if s is not None]
    for data in samples:  # everything the automaton generates is valid UTF-8 that re accepts
        assert rx.fullmatch(data.decode("utf-8")), (pattern, data)
    texts = _random_strings(pattern, rng, 300) + [_mutate(d.decode(), rng) for d in samples]
    for text in texts:
        assert dfa.matches(text.encode("utf-8")) == bool(rx.fullmatch(text)), (pattern, text)


def test_regex_automaton_never_accepts_invalid_utf8() -> None:
    dfa = compile_bytes(parse_regex(r".*"), "regex")
    for data in (b"\xff", b"\xc3", b"\xe6\x9d", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80"):
        assert not dfa.matches(data)
    assert dfa.matches("é東😀".encode())


@pytest.mark.parametrize(
    "pattern",
    [r"(?=a)b", r"(?!a)b", r"(?<=a)b", r"(a)\1", r"(?i)abc", r"\bword", r"a\Z", r"a++", r"[[a]", r"[a--b]",
     r"(?>a)", r"a{1001}", r"a^b", r"a$b", r"(?#c)", r"(?P=x)", r"[[:alpha:]]"],
)
def test_unsupported_regex_constructs_are_rejected(pattern: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_regex(pattern)
    assert info.value.kind == "regex"


@pytest.mark.parametrize("pattern", ["(", ")", "[a", "*a", "a**", "[z-a]", "\\", "x{2}{3}", "\\q", "{1}", "\\x4"])
def test_invalid_regexes_are_rejected_as_python_does(pattern: str) -> None:
    with pytest.raises(re.error):
        re.compile(pattern)
    with pytest.raises(FormatError):
        parse_regex(pattern)


# -- templates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_automaton_matches_its_regex(template: str) -> None:
    dfa = compile_bytes(parse_template(template), "template")
    rx = re.compile(template_regex(template))
    rng = random.Random(template)
    samples = [s for s in (_sample_dfa(dfa, rng, max_len=60) for _ in range(150)) if s is not None]
    assert samples
    texts = [d.decode("utf-8") for d in samples]
    texts += [_mutate(t, rng) for t in texts] + _random_strings(template, rng, 200)
    for text in texts:
        assert dfa.matches(text.encode("utf-8")) == bool(rx.fullmatch(text)), (template, text)


def test_template_examples() -> None:
    dfa = compile_bytes(parse_template("Answer: {int}\nConfidence: {choice:low|medium|high}"), "template")
    assert dfa.matches(b"Answer: -42\nConfidence: medium")
    assert not dfa.matches(b"Answer: 4.2\nConfidence: medium")
    assert not dfa.matches(b"Answer: 42\nConfidence: mediu")
    braces = compile_bytes(parse_template("{{x}} = {number}"), "template")
    assert braces.matches(b"{x} = 3.25") and not braces.matches(b"{x} = 3.")


def test_choice_options_share_prefix_states() -> None:
    shared = compile_bytes(parse_template("{choice:lowest|lower|low}"), "template")
    # dead, start, l, lo, low, lowe, lowes, and one final state shared by 'lower' and 'lowest'
    assert shared.num_states == 8


@pytest.mark.parametrize(
    "template",
    ["{", "}", "a { b", "{foo}", "{choice:}", "{choice:a||b}", "{text:0}", "{text:x}", "{int:3}", "{text:99999}",
     "{choice}"],
)
def test_bad_templates_are_rejected(template: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_template(template)
    assert info.value.kind == "template"


def test_text_slot_must_end_unambiguously() -> None:
    with pytest.raises(FormatError, match="ambiguous"):
        compile_bytes(parse_template("{text:5}. done"), "template")
    compile_bytes(parse_template("{text:5}\ndone"), "template")


# -- lifted to tokens ----------------------------------------------------------------------------------


@pytest.fixture(params=["gpt2", "llama"])
def tokenizer(request: pytest.FixtureRequest, tiny_lm: Callable[[str], tuple[Any, Any]]) -> Any:
    return tiny_lm(request.param)[1]


def _tokenisations(data: bytes, tokenizer: Any, limit: int = 200) -> list[list[int]]:
    """Every way (up to ``limit``) to write ``data`` with the vocabulary's tokens."""
    tb = token_bytes(tokenizer)
    by_bytes: dict[bytes, list[int]] = {}
    for tid, piece in enumerate(tb.pieces):
        if piece:
            by_bytes.setdefault(piece, []).append(tid)
    out: list[list[int]] = []

    def walk(i: int, acc: list[int]) -> None:
        if len(out) >= limit:
            return
        if i == len(data):
            out.append(list(acc))
            return
        for j in range(i + 1, min(len(data), i + 16) + 1):
            for tid in by_bytes.get(data[i:j], []):
                acc.append(tid)
                walk(j, acc)
                acc.pop()

    walk(0, [])
    return out


def _sample_tokens(dfa: Any, rng: random.Random, max_len: int = 40) -> list[int] | None:
    state, ids = 0, []
    for _ in range(max_len):
        if dfa.accept[state] and (rng.random() < 0.25 or dfa.terminal(state)):
            return ids
        edges = dfa.edges(state)
        if not edges:
            break
        set_id, dst = edges[rng.randrange(len(edges))]
        tokens = dfa.sets[set_id]
        ids.append(int(tokens[rng.randrange(len(tokens))]))
        state = dst
    return ids if dfa.accept[state] else None


@pytest.mark.parametrize("kind,source", [("template", t) for t in TEMPLATES[:6]] + [("regex", r) for r in REGEXES[:8]])
def test_token_automaton_accepts_every_tokenisation_and_only_matches(kind: str, source: str, tokenizer: Any) -> None:
    dfa = compile_format(kind, source, tokenizer)
    bdfa = compile_bytes(parse_template(source) if kind == "template" else parse_regex(source), kind)
    tb = token_bytes(tokenizer)
    rng = random.Random(source)
    spelled: list[bytes] = []
    for _ in range(60):  # token walks spell strings of the language
        ids = _sample_tokens(dfa, rng)
        if ids is None:
            continue
        data = b"".join(tb.pieces[i] or b"" for i in ids)
        assert bdfa.matches(data), (source, data)
        assert dfa.accepts(ids)
        spelled.append(data)
    assert spelled
    for data in spelled[:15]:  # ... and every other way of writing them is accepted too
        for ids in _tokenisations(data, tokenizer):
            assert dfa.accepts(ids), (source, data, ids)
    for _ in range(300):  # random token sequences: accepted exactly when their text matches
        ids = [rng.randrange(tb.vocab_size) for _ in range(rng.randint(0, 4))]
        pieces = [tb.pieces[i] for i in ids]
        expected = all(p for p in pieces) and bdfa.matches(b"".join(p or b"" for p in pieces))
        assert dfa.accepts(ids) == expected, (source, ids)


def test_text_slot_counts_tokens(tokenizer: Any) -> None:
    dfa = compile_format("template", "Note: {text:3}\nEnd", tokenizer)
    tb = token_bytes(tokenizer)
    one = {p: i for i, p in enumerate(tb.pieces) if p}
    head = [one[bytes([b])] for b in b"Note: "]
    tail = [one[bytes([b])] for b in b"\nEnd"]
    for k in range(6):
        assert dfa.accepts(head + [one[b"a"]] * k + tail) == (k <= 3), k
    # A token that spans the literal and the slot counts toward the slot.
    spanning = next((i for p, i in one.items() if len(p) > 1 and p.startswith(b" ") and p[1:].isalpha()), None)
    if spanning is not None:
        ids = [one[bytes([b])] for b in b"Note:"] + [spanning] + [one[b"a"]] * 2 + tail
        assert dfa.accepts(ids)
        assert not dfa.accepts([one[bytes([b])] for b in b"Note:"] + [spanning] + [one[b"a"]] * 3 + tail)


def test_min_tokens_and_budget_filtering(tokenizer: Any) -> None:
    dfa = compile_format("template", "Score: {choice:1|2|3|4|5}", tokenizer)
    tb = token_bytes(tokenizer)
    fewest = min(len(t) for opt in "12345" for t in [min(_tokenisations(f"Score: {opt}".encode(), tokenizer), key=len)])
    assert dfa.min_tokens == fewest
    assert dfa.allowed(0, remaining=fewest).size > 0
    assert dfa.allowed(0, remaining=fewest - 1).size == 0
    every = dfa.allowed(0)
    assert set(dfa.allowed(0, remaining=fewest).tolist()) <= set(every.tolist())
    for i in every.tolist():  # first tokens are prefixes of some allowed output
        assert any(f"Score: {o}".encode().startswith(tb.pieces[i] or b"?") for o in "12345"), tb.pieces[i]


def test_terminal_and_eos_free_end(tokenizer: Any) -> None:
    dfa = compile_format("template", "Score: {choice:1|2}", tokenizer)
    state = dfa.run(_tokenisations(b"Score: 2", tokenizer)[0])
    assert state >= 0 and dfa.terminal(state)
    ints = compile_format("template", "#### {int}", tokenizer)
    state = ints.run(_tokenisations(b"#### 7", tokenizer)[0])
    assert ints.accept[state] and not ints.terminal(state)


def test_unwritable_template_is_rejected() -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {**{c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz:")}, "[UNK]": 27}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    compile_format("template", "abc:{choice:x|y}", tok)
    with pytest.raises(FormatError, match="choice option 'Z'"):
        compile_format("template", "abc:{choice:x|Z}", tok)
    with pytest.raises(FormatError, match="literal text"):
        compile_format("template", "abc {int}", tok)
    with pytest.raises(FormatError, match="no output"):
        compile_format("regex", r"[A-Z]+", tok)
