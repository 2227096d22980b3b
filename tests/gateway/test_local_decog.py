"""Deco-G through the gateway: config-named HMMs, HTTP whole and streamed, gRPC typed fields, clear 400s,
start-up checks against the backend's tokenizer, and the distill CLI."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from transformers import AutoTokenizer

from decoders.decog.hmm import HMM, tokenizer_fingerprint
from decoders.formats import template_regex
from decoders.tiny import build_tiny_causal_lm
from gateway.cli import main as cli_main
from gateway.config import validate_config
from gateway.core.gateway import Gateway
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2
from tests.support.grpc_stub import grpc_stub
from tests.support.proxy import RunningProxy

TEMPLATE = "Answer: {int}\nConfidence: {choice:low|medium|high}"
MESSAGES = [{"role": "user", "content": "What is 12 times 3? Say how sure you are."}]
STATS = {"mass_kept", "mass_kept_min", "dfa_states", "table_build_ms", "table_cached", "table_bytes",
         "hidden_states", "prune_top_k", "steps"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("decog_gpt2"), "gpt2", seed=0)


def _random_hmm(model_dir: Path, out: Path, hidden: int = 16) -> Path:
    tok = AutoTokenizer.from_pretrained(model_dir)
    HMM.random(hidden, len(tok), tok.eos_token_id, tokenizer_fingerprint(tok)).save(out)
    return out


@pytest.fixture(scope="module")
def hmm_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Compliance and plumbing need no trained HMM; the CLI test below distils a real one.
    return _random_hmm(model_dir, tmp_path_factory.mktemp("hmm") / "tasks")


def _config(model_dir: Path, hmms: dict[str, str]) -> dict[str, Any]:
    return {"backends": {"local": {"type": "local", "model_path": str(model_dir), "models": ["tiny"]}},
            "decoders": {"decog": {"hmms": hmms}}}


@pytest.fixture(scope="module")
def proxy(model_dir: Path, hmm_dir: Path) -> Iterator[RunningProxy]:
    p = RunningProxy(_config(model_dir, {"tasks": str(hmm_dir)})).start()
    yield p
    p.stop()


def _create(client: openai.OpenAI, decoder: dict[str, Any], **kw: Any) -> Any:
    kw.setdefault("max_tokens", 40)
    return client.chat.completions.create(model="tiny", messages=MESSAGES,  # type: ignore[arg-type]
                                          extra_body={"promptwire": {"decoder": {"name": "decog", **decoder}}}, **kw)


def test_http_whole_and_streamed_outputs_match_the_format(proxy: RunningProxy) -> None:
    decoder = {"format": {"template": TEMPLATE}, "hmm": "tasks"}
    with proxy.client() as client:
        whole = _create(client, decoder, temperature=0)
        again = _create(client, decoder, temperature=0.9, seed=4, n=3)
        chunks = list(_create(client, decoder, temperature=0, stream=True))
    assert re.fullmatch(template_regex(TEMPLATE), whole.choices[0].message.content)
    assert all(re.fullmatch(template_regex(TEMPLATE), c.message.content) for c in again.choices)
    stats = whole.model_extra["promptwire"]["decoder"]
    assert STATS <= set(stats) and stats["hidden_states"] == 16 and stats["mass_kept"] == 1.0
    several = again.model_extra["promptwire"]["decoder"]
    assert isinstance(several, list) and len(several) == 3 and all(s["table_cached"] for s in several)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    last = [c for c in chunks if c.model_extra.get("promptwire")]
    assert len(last) == 1 and last[0].model_extra["promptwire"]["decoder"]["table_cached"] is True


def test_regex_and_pruning_over_completions(proxy: RunningProxy) -> None:
    with proxy.client() as client:
        resp = client.completions.create(
            model="tiny", prompt="The Berlin Wall fell on", max_tokens=20, temperature=1, seed=1, n=2,
            extra_body={"promptwire": {"decoder": {"name": "decog", "format": {"regex": r"\d{4}-\d{2}-\d{2}"},
                                                   "hmm": "tasks", "prune_top_k": 4}}})
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", c.text) for c in resp.choices), [c.text for c in resp.choices]
    stats = resp.model_extra["promptwire"]["decoder"]
    assert all(s["prune_top_k"] == 4 and 0 < s["mass_kept"] < 1 for s in stats)


@pytest.mark.parametrize(
    ("decoder", "max_tokens", "param", "words"),
    [
        ({"format": {"template": TEMPLATE}, "hmm": "nope"}, 40, "promptwire.decoder.hmm", "tasks"),
        ({"format": {"template": TEMPLATE}}, 40, "promptwire.decoder.hmm", ""),
        ({"format": {"regex": "(?=a)b"}, "hmm": "tasks"}, 40, "promptwire.decoder.format.regex", "lookaround"),
        ({"format": {"template": "{bogus}"}, "hmm": "tasks"}, 40, "promptwire.decoder.format.template", "bogus"),
        ({"format": {"template": TEMPLATE}, "hmm": "tasks"}, 5, "promptwire.decoder.format.template",
         "max_tokens=5"),
        ({"format": {"template": "a", "regex": "a"}, "hmm": "tasks"}, 40, "promptwire.decoder.format", ""),
        ({"format": {"json": "{}"}, "hmm": "tasks"}, 40, "promptwire.decoder.format.json", "template, regex"),
        ({"format": {"template": TEMPLATE}, "hmm": "tasks", "prune_top_k": 0}, 40,
         "promptwire.decoder.prune_top_k", ""),
    ],
)
def test_bad_options_are_400_naming_the_option(proxy: RunningProxy, decoder: dict[str, Any], max_tokens: int,
                                               param: str, words: str) -> None:
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        _create(client, decoder, max_tokens=max_tokens)
    body: Any = info.value.body
    assert body["param"] == param and words in body["message"], body


def test_openai_backend_is_a_clear_400_naming_local(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy({"server": {"grpc_port": None},
                        "backends": {"up": {"type": "openai", "base_url": up.url}}})
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="test-model", messages=MESSAGES,  # type: ignore[arg-type]
            extra_body={"promptwire": {"decoder": {"name": "decog", "format": {"template": "{int}"}, "hmm": "x"}}})
    body: Any = info.value.body
    assert body["param"] == "promptwire.decoder.name" and "'local'" in body["message"]
    assert not [r for r in up.requests if r.path.endswith("/chat/completions")]


@pytest.fixture
async def stub(model_dir: Path, hmm_dir: Path) -> AsyncIterator[Any]:
    async with grpc_stub(_config(model_dir, {"tasks": str(hmm_dir)})) as s:
        yield s


async def test_grpc_typed_fields_and_decoder_stats(stub: Any) -> None:
    def request(fmt: options_pb2.DecogFormat, **kw: Any) -> gateway_pb2.ChatRequest:
        return gateway_pb2.ChatRequest(
            model="tiny", messages=[common_pb2.ChatMessage(role="user", content=MESSAGES[0]["content"])],
            sampling=options_pb2.SamplingParams(max_tokens=40, temperature=1, seed=2, n=2),
            decoder=options_pb2.DecoderOptions(decog=options_pb2.DecogDecoder(format=fmt, **kw)))

    messages = [m async for m in stub.Chat(request(options_pb2.DecogFormat(template=TEMPLATE), hmm="tasks",
                                                   prune_top_k=8))]
    last = messages[-1]
    assert last.done and len(last.decoder_stats) == 2
    stats = dict(last.decoder_stats[0])
    assert stats["prune_top_k"] == 8 and int(stats["dfa_states"]) > 1
    texts: dict[int, str] = {}
    for m in messages:
        for c in m.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert len(texts) == 2 and all(re.fullmatch(template_regex(TEMPLATE), t) for t in texts.values()), texts
    for fmt, kw, where in [(options_pb2.DecogFormat(template=TEMPLATE), {"hmm": "nope"}, "decoder.decog.hmm"),
                           (options_pb2.DecogFormat(regex="(a"), {"hmm": "tasks"}, "decoder.decog.format.regex"),
                           (options_pb2.DecogFormat(), {"hmm": "tasks"}, "decoder.decog.format")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [m async for m in stub.Chat(request(fmt, **kw))]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert where in (err.value.details() or ""), err.value.details()


async def test_start_checks_hmms_against_the_backend_tokenizer(model_dir: Path, hmm_dir: Path,
                                                               tmp_path: Path) -> None:
    other_model = build_tiny_causal_lm(tmp_path / "llama", "llama", seed=0)
    foreign = _random_hmm(other_model, tmp_path / "foreign")
    bad = Gateway(validate_config(_config(model_dir, {"foreign": str(foreign)}), "<test>"))
    with pytest.raises(ValueError, match=r"decoders\.decog .*different tokenizer"):
        await bad.start()
    await bad.aclose()
    missing = Gateway(validate_config(_config(model_dir, {"gone": str(tmp_path / "nothing")}), "<test>"))
    with pytest.raises(ValueError, match=r"'gone'.*no HMM file"):
        await missing.start()
    await missing.aclose()
    # One matching HMM is enough; a request naming the foreign one is a 400.
    mixed = _config(model_dir, {"tasks": str(hmm_dir), "foreign": str(foreign)})
    with RunningProxy(mixed) as p, p.client() as client, pytest.raises(openai.BadRequestError) as info:
        _create(client, {"format": {"template": "{int}"}, "hmm": "foreign"})
    body: Any = info.value.body
    assert body["param"] == "promptwire.decoder.hmm" and "different tokenizer" in body["message"]


def test_distill_cli_writes_a_loadable_hmm(model_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Rate it from 1 to 5.", "Give a number."]))
    out = tmp_path / "out"
    rc = cli_main(["decog", "distill", "--model", str(model_dir), "--prompts", str(prompts), "--hidden", "8",
                   "--out", str(out), "--samples", "16", "--length", "8", "--epochs", "2", "--seed", "3"])
    assert rc == 0, capsys.readouterr().err
    tok = AutoTokenizer.from_pretrained(model_dir)
    hmm = HMM.load(out, fingerprint=tokenizer_fingerprint(tok))
    assert hmm.hidden_states == 8 and hmm.meta["samples"] == "16"
    report = json.loads((out / "distill.json").read_text())
    assert len(report["epochs"]) == 2 and report["epochs"][-1]["heldout_ll"] < 0
    assert "held-out log-likelihood" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--hidden", "0"], "--hidden"), (["--samples", "0"], "--samples"), (["--epochs", "-1"], "--epochs"),
     (["--prompts", "/no/such/file"], "--prompts")],
)
def test_distill_cli_rejects_bad_flags(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       args: list[str], words: str) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a task\n")
    base = {"--model": str(model_dir), "--prompts": str(prompts), "--hidden": "4", "--out": str(tmp_path / "o")}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    rc = cli_main(["decog", "distill", *[x for kv in base.items() for x in kv]])
    assert rc == 2 and words in capsys.readouterr().err
