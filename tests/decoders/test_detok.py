"""Incremental detokenisation and stop-string hold-back."""

from __future__ import annotations

from decoders.detok import TextStream


def stream_all(tok, prompt: list[int], ids: list[int], stop=()) -> tuple[list[str], TextStream]:
    ts = TextStream(tok, prompt, stop)
    deltas = [ts.push(i) for i in ids]
    deltas.append(ts.flush())
    return deltas, ts


def test_byte_level_text_round_trips(tiny_lm) -> None:
    _, tok = tiny_lm("qwen2")
    text = "naïve 日本語 façade 😀🚀 ελληνικά"
    ids = tok(text)["input_ids"]
    deltas, ts = stream_all(tok, tok("x")["input_ids"], ids)
    assert "".join(deltas) == text == ts.text
    assert all("\ufffd" not in d for d in deltas)


def test_sentencepiece_spaces_survive_incremental_decoding(tiny_lm) -> None:
    _, tok = tiny_lm("llama")
    text = "the model said café and 東京 twice"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    deltas, _ = stream_all(tok, tok("prompt")["input_ids"], ids)
    assert "".join(deltas) == " " + text  # a continuation keeps its leading space
    assert any(d.startswith(" ") for d in deltas[1:])  # "▁" pieces decode to spaces mid-stream too


def test_stop_string_split_across_tokens_is_held_back(tiny_lm) -> None:
    _, tok = tiny_lm("gpt2")
    text = "alpha beta STOP gamma"
    ids = [tok.convert_tokens_to_ids(c if c != " " else "Ġ") for c in text]  # one char per token
    deltas, ts = stream_all(tok, [], ids, stop=("STOP",))
    assert ts.stopped == "STOP"
    assert "".join(deltas) == "alpha beta "
    # "S", "T", "O" were held back as a possible stop prefix, never streamed
    assert all("S" not in d for d in deltas)


def test_held_back_prefix_is_released_when_it_does_not_complete(tiny_lm) -> None:
    _, tok = tiny_lm("gpt2")
    text = "a STOq end"
    ids = [tok.convert_tokens_to_ids(c if c != " " else "Ġ") for c in text]
    deltas, ts = stream_all(tok, [], ids, stop=("STOP",))
    assert ts.stopped is None
    assert "".join(deltas) == text
    assert deltas[ids.index(tok.convert_tokens_to_ids("q"))] == "STOq"


def test_flush_releases_incomplete_bytes(tiny_lm) -> None:
    _, tok = tiny_lm("llama")
    ids = [tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "é".encode()[:1]]
    deltas, _ = stream_all(tok, [], ids)
    assert deltas == ["", "\ufffd"]
