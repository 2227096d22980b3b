"""The trie decoder over the local provider: scoring mode (every label's probability) and generation, HTTP and gRPC."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoders.tiny import build_tiny_causal_lm
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2
from tests.support.grpc_stub import grpc_stub
from tests.support.proxy import RunningProxy

# shared prefixes (bug / bug report / bugs), several tokens, Unicode
LABELS = ["billing", "bug", "bug report", "bugs", "feature request", "other", "Zürich office", "日本語 ok"]
MESSAGES = [{"role": "user", "content": "classify: my invoice is wrong"}]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("trie_llama"), "llama", seed=3)


def _config(model_dir: Path) -> dict[str, Any]:
    return {"backends": {"local": {"type": "local", "model_path": str(model_dir), "models": ["tiny-llama"]}}}


@pytest.fixture(scope="module")
def proxy(llama_dir: Path) -> Iterator[RunningProxy]:
    p = RunningProxy(_config(llama_dir)).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def brute(llama_dir: Path) -> Any:
    """Each label's log-probability after a prompt, straight from transformers: the prompt and label
    tokenised together, one forward pass over the whole sequence, the label tokens' log-probs summed."""
    tok = AutoTokenizer.from_pretrained(llama_dir)
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()

    @torch.no_grad()
    def score(prompt_text: str, special: bool, labels: list[str]) -> dict[str, float]:
        prompt = tok(prompt_text, add_special_tokens=special)["input_ids"]
        out = {}
        for label in labels:
            full = tok(prompt_text + label, add_special_tokens=special)["input_ids"]
            assert full[: len(prompt)] == prompt, "the label merged with the prompt's last token; pick another"
            logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)  # (T, V)
            out[label] = sum(float(logp[k - 1, full[k]]) for k in range(len(prompt), len(full)))
        return out

    def chat(messages: list[dict[str, str]], labels: list[str]) -> dict[str, float]:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return score(text, False, labels)

    def completion(prompt: str, labels: list[str]) -> dict[str, float]:
        return score(prompt, True, labels)

    return chat, completion


def _scoring(labels: list[str] = LABELS, **more: Any) -> dict[str, Any]:
    return {"promptwire": {"decoder": {"name": "trie", "labels": labels, "scoring": True, **more}}}


def _check_scores(scores: dict[str, dict[str, float]], want: dict[str, float], answer: str) -> None:
    assert list(scores) == list(want)  # every label, in the order given
    assert math.isclose(sum(s["prob"] for s in scores.values()), 1.0, rel_tol=1e-9)
    z = math.log(sum(math.exp(v) for v in want.values()))
    for label, s in scores.items():
        assert s["logprob"] == pytest.approx(want[label], abs=1e-4)
        assert s["prob"] == pytest.approx(math.exp(want[label] - z), rel=1e-4)
    assert answer == max(want, key=want.__getitem__)


def test_http_scoring_returns_every_label_probability(proxy: RunningProxy, brute: Any) -> None:
    chat, _ = brute
    with proxy.client() as client:
        resp = client.chat.completions.create(model="tiny-llama", messages=MESSAGES,  # type: ignore[arg-type]
                                              extra_body=_scoring())
    ext = resp.model_extra["promptwire"]  # type: ignore[index]
    answer = resp.choices[0].message.content
    assert answer is not None
    _check_scores(ext["label_scores"], chat(MESSAGES, LABELS), answer)
    assert resp.choices[0].finish_reason == "stop"
    assert ext["decoder"]["labels"] == [answer]
    assert ext["decoder"]["scoring"] is True and ext["decoder"]["scored_tokens"] > 0
    assert resp.usage is not None and resp.usage.completion_tokens >= 1
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_http_scoring_streams_the_label_then_the_scores(proxy: RunningProxy, brute: Any) -> None:
    chat, _ = brute
    with proxy.client() as client:
        whole = client.chat.completions.create(model="tiny-llama", messages=MESSAGES,  # type: ignore[arg-type]
                                               extra_body=_scoring())
        chunks = list(client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}, extra_body=_scoring()))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == [whole.choices[0].message.content]  # one content chunk: the label
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    scores = finals[0].model_extra["promptwire"]["label_scores"]  # type: ignore[index]
    _check_scores(scores, chat(MESSAGES, LABELS), content[0])
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_http_completions_scoring(proxy: RunningProxy, brute: Any) -> None:
    _, completion = brute
    prompt = "Ticket: the app crashes on start. Category:"
    labels = [" bug", " billing", " feature request", " other"]
    with proxy.client() as client:
        resp = client.completions.create(model="tiny-llama", prompt=prompt, extra_body=_scoring(labels))
    _check_scores(resp.model_extra["promptwire"]["label_scores"],  # type: ignore[index]
                  completion(prompt, labels), resp.choices[0].text)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"separator": ", "}, "promptwire.decoder.separator"),
        ({"mode": "any"}, "promptwire.decoder.mode"),
        ({"mode": "odd"}, "promptwire.decoder.mode"),
        ({"labels": []}, "promptwire.decoder.labels"),
        ({"labels": ["a", "a"]}, "promptwire.decoder.labels"),
        ({"scoring": "yes"}, "promptwire.decoder.scoring"),
        ({"top": 3}, "promptwire.decoder.top"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_bad_scoring_requests_are_400_naming_the_parameter(proxy: RunningProxy, extra: dict[str, Any],
                                                           param: str) -> None:
    decoder = {"name": "trie", "labels": LABELS, "scoring": True}
    body: dict[str, Any] = {}
    for k, v in extra.items():
        if k in ("n", "logprobs"):
            body[k] = v
        else:
            decoder[k] = v
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-llama", messages=MESSAGES,  # type: ignore[arg-type]
                                       extra_body={"promptwire": {"decoder": decoder}, **body})
    assert info.value.body["param"] == param  # type: ignore[index]


def test_http_generation_yields_only_labels(proxy: RunningProxy) -> None:
    with proxy.client() as client:
        for seed in range(6):  # random weights, sampled: still always a label
            resp = client.chat.completions.create(
                model="tiny-llama", messages=MESSAGES, temperature=1.0, seed=seed,  # type: ignore[arg-type]
                max_tokens=24, extra_body={"promptwire": {"decoder": {"name": "trie", "labels": LABELS,
                                                                      "scoring": False}}})
            assert resp.choices[0].message.content in LABELS
            assert resp.choices[0].finish_reason == "stop"
            resp = client.chat.completions.create(
                model="tiny-llama", messages=MESSAGES, temperature=1.0, seed=seed,  # type: ignore[arg-type]
                max_tokens=40, extra_body={"promptwire": {"decoder": {"name": "trie", "labels": LABELS,
                                                                      "separator": "; ", "max_labels": 3}}})
            parts = (resp.choices[0].message.content or "").split("; ")
            assert 1 <= len(parts) <= 3 and all(p in LABELS for p in parts) and len(set(parts)) == len(parts)


# ---- gRPC ---------------------------------------------------------------------------------------------


@pytest.fixture
async def stub(llama_dir: Path) -> AsyncIterator[Any]:
    async with grpc_stub(_config(llama_dir)) as s:
        yield s


def _grpc_request(trie: options_pb2.TrieDecoder, seed: int = 0) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(
        model="tiny-llama",
        messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES],
        sampling=options_pb2.SamplingParams(max_tokens=24, temperature=1.0, seed=seed),
        decoder=options_pb2.DecoderOptions(trie=trie),
    )


async def test_grpc_scoring_fills_label_scores(stub: Any, brute: Any) -> None:
    chat, _ = brute
    messages = [m async for m in stub.Chat(_grpc_request(options_pb2.TrieDecoder(labels=LABELS, scoring=True)))]
    text = "".join(c.text for m in messages[:-1] for c in m.choices)
    last = messages[-1]
    assert last.done and last.choices[0].finish_reason == "stop"
    scores = {s.label: {"prob": s.probability, "logprob": s.logprob} for s in last.label_scores}
    _check_scores(scores, chat(MESSAGES, LABELS), text)
    assert last.usage.completion_tokens >= 1

    # generation mode on the same server: sampled, always a label
    for seed in range(3):
        messages = [m async for m in stub.Chat(_grpc_request(options_pb2.TrieDecoder(labels=LABELS), seed))]
        assert "".join(c.text for m in messages[:-1] for c in m.choices) in LABELS
        assert not messages[-1].label_scores


async def test_grpc_scoring_with_a_separator_is_invalid_argument(stub: Any) -> None:
    trie = options_pb2.TrieDecoder(labels=LABELS, scoring=True, separator=", ")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [m async for m in stub.Chat(_grpc_request(trie))]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "decoder.trie.separator" in (err.value.details() or "")


def test_scoring_takes_one_prompt(proxy: RunningProxy) -> None:
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny-llama", prompt=["a", "b"], extra_body=_scoring())
    assert info.value.body["param"] == "prompt"  # type: ignore[index]


def test_scoring_beside_concurrent_generation(proxy: RunningProxy, brute: Any) -> None:
    """Scoring runs between the decode steps of other requests on the engine thread: both stay right."""
    from concurrent.futures import ThreadPoolExecutor

    chat, _ = brute
    want = chat(MESSAGES, LABELS)

    def score(_: int) -> Any:
        with proxy.client() as client:
            return client.chat.completions.create(model="tiny-llama", messages=MESSAGES,  # type: ignore[arg-type]
                                                  extra_body=_scoring())

    def generate(seed: int) -> str | None:
        with proxy.client() as client:
            resp = client.chat.completions.create(
                model="tiny-llama", messages=[{"role": "user", "content": f"write {seed}"}],
                temperature=1.0, seed=seed, max_tokens=32)
            return resp.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        gens = [pool.submit(generate, s) for s in range(4)]
        scores = [pool.submit(score, i) for i in range(4)]
        for f in scores:
            resp = f.result()
            _check_scores(resp.model_extra["promptwire"]["label_scores"], want, resp.choices[0].message.content)
        assert all(isinstance(f.result(), str) for f in gens)
