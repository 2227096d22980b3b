"""`translate` end to end: a tiny Marian pair and `self` on a tiny local model; the audit survives a kill."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from decoders.tiny import build_tiny_causal_lm
from gateway.stages.conjugate.translate import INSTRUCTION, Seq2SeqTranslator
from tests.gateway.test_conjugate_stage import QUESTION, SYSTEM, audit_lines, conj_config, generations
from tests.gateway.test_serve_process import Served
from tests.support.proxy import RunningProxy
from tests.support.tiny_seq2seq import build_tiny_seq2seq
from tests.support.upstream import UpstreamServer

REPLY = "Le chat est bleu. Il a 42 pattes !"


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("marian")
    build_tiny_seq2seq(root / "opus-mt-en-fr", "marian", seed=1)
    build_tiny_seq2seq(root / "opus-mt-fr-en", "marian", seed=2)
    return str(root / "opus-mt-{src}-{tgt}")


async def test_translate_sends_exactly_the_translation_and_returns_its_back_translation(
    make_upstream: Callable[..., UpstreamServer], make_proxy: Callable[..., RunningProxy], tmp_path: Path,
    marian: str,
) -> None:
    up = make_upstream(reply=REPLY)
    audit = tmp_path / "a.jsonl"
    config = conj_config(up, audit, {"anonymous": ["translate:fr"]}, translator=marian, languages=["fr"])
    proxy = make_proxy(config)
    body = {"model": "test-model",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
            "promptwire": {"conjugate": {"transform": "translate", "language": "fra"}}}
    async with httpx.AsyncClient(base_url=proxy.base, timeout=60) as http:
        r = await http.post("/v1/chat/completions", json=body)
        de = await http.post("/v1/chat/completions", json={**body, "promptwire": {
            "conjugate": {"transform": "translate", "language": "de"}}})
    assert r.status_code == 200, r.text
    # the same checkpoints, loaded on their own, give the texts both ends must see
    ref = Seq2SeqTranslator(marian, languages=["fr"])
    try:
        system_fr, question_fr = await ref.translate([SYSTEM, QUESTION], "en", "fr")
        [answer_en] = await ref.translate([REPLY], "fr", "en")
    finally:
        await ref.aclose()
    [sent] = generations(up)
    assert sent["messages"] == [{"role": "system", "content": system_fr}, {"role": "user", "content": question_fr}]
    assert system_fr != SYSTEM and question_fr != QUESTION
    assert r.json()["choices"][0]["message"]["content"] == answer_en
    [line] = audit_lines(audit)
    assert (line["transform"], line["language"], line["translator"]) == ("translate", "fr", marian)
    assert line["transformed"]["messages"] == sent["messages"]
    assert line["raw_output"] == [{"index": 0, "text": REPLY}] and line["output"] == [{"index": 0, "text": answer_en}]
    assert de.status_code == 400 and de.json()["error"]["param"] == "promptwire.conjugate.language"


async def test_self_translation_on_the_tiny_local_model(
    make_upstream: Callable[..., UpstreamServer], make_proxy: Callable[..., RunningProxy], tmp_path: Path
) -> None:
    up = make_upstream(reply=REPLY)
    audit = tmp_path / "a.jsonl"
    tiny = build_tiny_causal_lm(tmp_path / "qwen", "qwen2", seed=5)
    config = conj_config(up, audit, {"anonymous": ["translate:*"]}, translator="self",
                         translator_backend="local", self_max_tokens=10)
    config["backends"]["local"] = {"type": "local", "model_path": str(tiny), "models": ["tiny"]}
    proxy = make_proxy(config)
    body = {"model": "test-model", "messages": [{"role": "user", "content": QUESTION}],
            "promptwire": {"conjugate": {"transform": "translate", "language": "fr"}}}
    async with httpx.AsyncClient(base_url=proxy.base, timeout=60) as http:
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text

        async def direct(text: str, source: str, target: str) -> str:
            """The local model asked through the gateway itself, greedily, under the same instruction."""
            msgs = [{"role": "system", "content": INSTRUCTION.format(source=source, target=target)},
                    {"role": "user", "content": text}]
            d = await http.post("/v1/chat/completions",
                                json={"model": "tiny", "messages": msgs, "max_tokens": 10, "temperature": 0})
            return str(d.json()["choices"][0]["message"]["content"]).strip()

        question_fr = await direct(QUESTION, "English", "French")
        answer_en = await direct(REPLY, "French", "English")
    [sent] = [b for b in generations(up) if b["model"] == "test-model"]
    assert sent["messages"] == [{"role": "user", "content": question_fr}]
    assert r.json()["choices"][0]["message"]["content"] == answer_en
    [line] = audit_lines(audit)
    assert line["translator"] == "self:local" and line["transformed"]["messages"] == sent["messages"]


def test_the_audit_line_is_on_disk_when_the_response_arrives(make_upstream: Callable[..., UpstreamServer],
                                                             tmp_path: Path) -> None:
    """promptwire serve as a process: the client reads the answer, the process is SIGKILLed at once,
    and the audit line is there."""
    up = make_upstream(reply="7h3 3nd")
    audit = tmp_path / "audit.jsonl"
    config = conj_config(up, audit, {"anonymous": ["leet"]})
    config["server"] = {"grpc_port": None}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    served = Served(["--config", str(path)])
    try:
        body: dict[str, Any] = {"model": "test-model", "messages": [{"role": "user", "content": "the test"}],
                                "promptwire": {"conjugate": {"transform": "leet"}}}
        with httpx.Client(base_url=served.base, timeout=30) as http:
            r = http.post("/v1/chat/completions", json=body, headers={"x-request-id": "kill-me-1"})
            served.proc.send_signal(signal.SIGKILL)  # right after the response: nothing gets to flush
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "The end"
    finally:
        served.kill()
    assert served.proc.returncode == -signal.SIGKILL
    [line] = [json.loads(x) for x in audit.read_text().splitlines()]
    assert line["request_id"] == "kill-me-1" and line["output"] == [{"index": 0, "text": "The end"}]
