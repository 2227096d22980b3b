"""Trie labels decoder: validity under sampling, multi-label rules, canonical vs any, in-context tokenisation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoders.processor import DecoderContext
from decoders.tiny import build_tiny_causal_lm
from decoders.trie import build
from decoders.trie.index import label_index
from decoders.trie.labels import LabelSpec, TrieLabelError, normalize_labels
from decoders.trie.processor import TrieProcessor
from decoders.trie.vocab import vocab_bytes

LABELS = ["Positive", "Negative", "Neutral", "Pos", "日本語", "naïve café", "模型 提示", "😀 emoji", "model",
          "token label", "a", "ab", "abc"]
FAMILIES = ["llama", "gpt2", "qwen2"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            path = build_tiny_causal_lm(tmp_path_factory.mktemp(f"trie_{family}"), family, seed=1)
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            cache[family] = (tok, model)
        return cache[family]

    return get


def chat_prompt(tok, text: str = "classify: café") -> list[int]:
    out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def ctx_for(tok, model, prompt: list[int], max_new_tokens: int = 48) -> DecoderContext:
    return DecoderContext(tok, model.config.vocab_size, frozenset({tok.eos_token_id}), tuple(prompt), max_new_tokens)


@torch.no_grad()
def sample_batch(model, prompt: list[int], procs: list[TrieProcessor], seeds: list[int], max_new: int,
                 eos: int) -> list[tuple[list[int], bool]]:
    """Temperature-1 sampling of len(procs) rows on one prompt, masks applied as the engine does.

    Returns per row (generated ids without EOS, ended_with_eos)."""
    b = len(procs)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    out = model(input_ids=torch.tensor([prompt] * b), use_cache=True)
    cache = out.cache
    logits = out.logits[:, -1].float()  # (B, V)
    rows: list[list[int]] = [[] for _ in range(b)]
    ended = [False] * b
    for _ in range(max_new):
        mask = torch.full_like(logits, float("-inf"))  # (B, V)
        for r, p in enumerate(procs):
            mask[r, p.allowed_token_ids()] = 0.0
            if p.eos_allowed():
                mask[r, eos] = 0.0
        probs = torch.softmax(logits + mask, -1)  # (B, V)
        nxt = []
        for r, p in enumerate(procs):
            if ended[r] or p.finished():
                nxt.append(eos)
                continue
            t = int(torch.multinomial(probs[r], 1, generator=gens[r]))
            p.advance(t)
            if t == eos:
                ended[r] = True
            else:
                rows[r].append(t)
            nxt.append(t)
        if all(ended[r] or procs[r].finished() for r in range(b)):
            break
        out = model(input_ids=torch.tensor(nxt)[:, None], cache=cache, use_cache=True)
        logits = out.logits[:, -1].float()  # (B, V)
    return [(rows[r], ended[r]) for r in range(b)]


def continuation(tok, prompt: list[int], gen: list[int]) -> str:
    # The text the tokenizer itself gives the generated ids after this prompt (independent of our byte table).
    before = tok.decode(prompt)
    after = tok.decode(prompt + gen)
    assert after.startswith(before)
    return after[len(before):]


def check_valid(text: str, labels: list[str], sep: str | None, max_labels: int) -> bool:
    parts = text.split(sep) if sep else [text]
    return all(p in labels for p in parts) and len(set(parts)) == len(parts) and len(parts) <= max_labels


def run_many(lm, family: str, n: int, mode: str, sep: str | None, max_labels: int, labels: list[str],
             batch: int = 50, max_new: int = 48) -> tuple[int, list[str]]:
    tok, model = lm(family)
    prompt = chat_prompt(tok)
    ctx = ctx_for(tok, model, prompt, max_new)
    options = {"labels": labels, "mode": mode, "separator": sep, "max_labels": max_labels}
    valid, texts = 0, []
    for start in range(0, n, batch):
        procs = [build(options, ctx) for _ in range(batch)]
        seeds = list(range(start, start + batch))
        for (gen, ended), p in zip(sample_batch(model, prompt, procs, seeds, max_new, tok.eos_token_id), procs,
                                   strict=True):
            text = continuation(tok, prompt, gen)
            ok = ended and check_valid(text, labels, sep, max_labels)
            ok = ok and p.stats()["labels"] == (text.split(sep) if sep else [text])
            valid += ok
            texts.append(text)
    return valid, texts


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["canonical", "any"])
def test_single_label_always_valid(lm, family: str, mode: str) -> None:
    valid, texts = run_many(lm, family, 100, mode, None, 1, LABELS)
    assert valid == 100, [t for t in texts if t not in LABELS][:5]
    assert len(set(texts)) >= 3  # sampling really varies, so the check is not vacuous


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["canonical", "any"])
def test_multi_label_no_repeats_and_max_count(lm, family: str, mode: str) -> None:
    valid, texts = run_many(lm, family, 50, mode, ", ", 3, LABELS)
    assert valid == 50, texts[:5]
    counts = {len(t.split(", ")) for t in texts}
    assert max(counts) > 1  # several labels were produced at least sometimes


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["canonical", "any"])
@pytest.mark.parametrize("sep", [None, "; "])
def test_thousand_generations_all_valid(lm, family: str, mode: str, sep: str | None) -> None:
    labels = LABELS + [f"class {i} {w}" for i, w in enumerate(["café", "模型", "über", "niño"] * 50)]
    valid, texts = run_many(lm, family, 1000, mode, sep, 4 if sep else 1, labels, batch=100)
    assert valid == 1000, [t for t in texts if not check_valid(t, labels, sep, 4)][:5]


def test_labels_tokenised_in_context_llama(lm) -> None:
    tok, _ = lm("llama")
    vocab = vocab_bytes(tok)
    alone = tok.convert_ids_to_tokens(tok("model", add_special_tokens=False)["input_ids"])
    assert alone[0].startswith("▁")  # the trap: SentencePiece adds a space when a label stands alone
    prompt = chat_prompt(tok)
    index = label_index(LabelSpec(("model", "token"), "canonical", ", ", 2), tok, prompt)
    got = [tid for tid, _ in _path(index, 0, 0)]
    assert vocab.spell(got) == b"model"  # in context, after "[/INST]": no space
    assert not tok.convert_ids_to_tokens(got[0]).startswith("▁")
    # after the separator: the tokenizer's own in-context split, where "▁" belongs to the label's first token
    anchor = len(tok("x", add_special_tokens=False)["input_ids"])
    want = tok("x, model", add_special_tokens=False)["input_ids"][anchor:]
    got = [tid for tid, _ in _path(index, index.sep_root, 0)]
    assert got == want and vocab.spell(got) == b", model"
    assert any(t.startswith("▁") for t in tok.convert_ids_to_tokens(got))


def test_labels_tokenised_in_context_gpt2(lm) -> None:
    tok, _ = lm("gpt2")
    vocab = vocab_bytes(tok)
    ptec = tok(", ", add_special_tokens=False)["input_ids"] + tok("prompt", add_special_tokens=False)["input_ids"]
    anchor = len(tok("x", add_special_tokens=False)["input_ids"])
    want = tok("x, prompt", add_special_tokens=False)["input_ids"][anchor:]
    assert ptec != want  # labels tokenised alone after a separator are not what the model sees
    index = label_index(LabelSpec(("prompt", "token"), "canonical", ", ", 2), tok, chat_prompt(tok))
    got = [tid for tid, _ in _path(index, index.sep_root, 0)]
    assert got == want and vocab.spell(got) == b", prompt"
    assert "Ġprompt" in tok.convert_ids_to_tokens(got)


def _path(index, root: int, label: int) -> list[tuple[int, int]]:
    # (token, node) pairs along ``label``'s path from ``root``
    out, node = [], root
    nodes = set(index.paths[label])
    while index.label_at[node] != label:
        tid, node = next((t, c) for t, c in index.children[node].items() if c in nodes)
        out.append((tid, node))
    return out


def test_canonical_only_allows_the_canonical_tokens_any_allows_more(lm) -> None:
    tok, model = lm("gpt2")
    vocab = vocab_bytes(tok)
    prompt = chat_prompt(tok)
    ctx = ctx_for(tok, model, prompt)
    labels = ["Positive", "Negative"]
    can = build({"labels": labels}, ctx)
    anyp = build({"labels": labels, "mode": "any"}, ctx)
    index = label_index(LabelSpec(tuple(labels)), tok, prompt)
    canonical = [tid for tid, _ in _path(index, 0, 0)]
    assert set(can.allowed_token_ids().tolist()) == set(index.children[0])
    any_ids = set(anyp.allowed_token_ids().tolist())
    assert set(index.children[0]) <= any_ids
    assert all(any(lab.encode().startswith(vocab.spell([t])) for lab in labels) for t in any_ids)
    # "Positive" one character per token: not the canonical split, accepted by "any" only
    spelled = [tok.convert_tokens_to_ids(c) for c in "Positive"]
    assert spelled != canonical
    for t in spelled:
        assert t in anyp.allowed_token_ids().tolist() and not anyp.eos_allowed()
        anyp.advance(t)
    assert anyp.eos_allowed() and anyp.stats()["labels"] == ["Positive"]
    k = next(i for i, (a, b) in enumerate(zip(spelled, canonical, strict=False)) if a != b)
    for t in spelled[:k]:
        can.advance(t)
    assert spelled[k] not in can.allowed_token_ids().tolist()
    assert canonical[k] in can.allowed_token_ids().tolist()


def test_eos_only_where_a_label_ends(lm) -> None:
    tok, model = lm("qwen2")
    p = build({"labels": ["ab", "abc", "xyz"], "mode": "any"}, ctx_for(tok, model, chat_prompt(tok)))
    steps = []
    for ch in "abc":
        steps.append(p.eos_allowed())
        p.advance(tok.convert_tokens_to_ids(ch))
    steps.append(p.eos_allowed())
    assert steps == [False, False, True, True]
    assert p.allowed_token_ids().numel() == 0  # nothing follows "abc"


def test_multi_label_budget_and_exclusion(lm) -> None:
    tok, model = lm("gpt2")
    ctx = ctx_for(tok, model, chat_prompt(tok), max_new_tokens=48)
    p = build({"labels": ["a", "b"], "mode": "any", "separator": ",", "max_labels": 2}, ctx)
    a, b, comma = (tok.convert_tokens_to_ids(c) for c in "ab,")
    p.advance(a)
    assert p.eos_allowed() and comma in p.allowed_token_ids().tolist()
    p.advance(comma)
    assert p.allowed_token_ids().tolist() == [b] and not p.eos_allowed()  # "a" cannot repeat
    p.advance(b)
    assert p.allowed_token_ids().numel() == 0 and p.eos_allowed()  # max_labels reached
    assert p.stats()["labels"] == ["a", "b"]


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"labels": []}, "promptwire.decoder.labels"),
        ({"labels": "abc"}, "promptwire.decoder.labels"),
        ({"labels": ["a", "a"]}, "promptwire.decoder.labels"),
        ({"labels": ["a", ""]}, "promptwire.decoder.labels"),
        ({"labels": ["a", 3]}, "promptwire.decoder.labels"),
        ({}, "promptwire.decoder.labels"),
        ({"labels": ["a" * 400]}, "promptwire.decoder.labels"),  # longer than max_tokens allows
        ({"labels": ["a", "b"], "separator": ""}, "promptwire.decoder.separator"),
        ({"labels": ["a,b", "c"], "separator": ","}, "promptwire.decoder.separator"),
        ({"labels": ["a", "b"], "separator": 3}, "promptwire.decoder.separator"),
        ({"labels": ["a", "b"], "max_labels": 2}, "promptwire.decoder.separator"),
        ({"labels": ["a", "b"], "separator": ",", "max_labels": 0}, "promptwire.decoder.max_labels"),
        ({"labels": ["a", "b"], "separator": ",", "max_labels": True}, "promptwire.decoder.max_labels"),
        ({"labels": ["a", "b"], "separator": ",", "max_labels": "2"}, "promptwire.decoder.max_labels"),
        ({"labels": ["a"], "mode": "fuzzy"}, "promptwire.decoder.mode"),
        ({"labels": ["a"], "temperature_boost": 1}, "promptwire.decoder.temperature_boost"),
    ],
)
def test_bad_options_raise_value_error_with_param(lm, options: dict, param: str) -> None:
    tok, model = lm("gpt2")
    with pytest.raises(TrieLabelError) as err:
        build(options, ctx_for(tok, model, chat_prompt(tok), max_new_tokens=16))
    assert isinstance(err.value, ValueError) and err.value.param == param


def test_normalize_labels_keeps_labels_verbatim() -> None:
    assert normalize_labels(("b", " a", "é")) == ["b", " a", "é"]
    with pytest.raises(TrieLabelError):
        normalize_labels(["x", "x"])


def test_index_is_cached_and_shared_state_is_per_request(lm) -> None:
    tok, model = lm("llama")
    ctx = ctx_for(tok, model, chat_prompt(tok))
    p1 = build({"labels": LABELS, "separator": ", ", "max_labels": 3}, ctx)
    p2 = build({"labels": LABELS, "separator": ", ", "max_labels": 3}, ctx)
    assert p1.index is p2.index
    first = int(p1.allowed_token_ids()[0])
    before = p2.allowed_token_ids().tolist()
    p1.advance(first)
    assert p2.allowed_token_ids().tolist() == before and p2.node == 0
