"""The select_prompt stage through real servers: IDP on the local provider, IDP-text on an OpenAI upstream,
HTTP and gRPC, stats, and the errors at start, in `config check` and per request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoders.engine import Engine, EngineConfig, SamplingParams
from decoders.fingerprint import model_fingerprint
from decoders.tiny import build_tiny_causal_lm
from gateway.config import ConfigError, validate_config
from gateway.core.gateway import Gateway
from gateway.stages.select_prompt.attention import choose, idp_scores
from gateway.stages.select_prompt.encoder import ensure_encoder
from gateway.stages.select_prompt.pool import save_pool
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2
from tests.support.grpc_stub import serving_stub
from tests.support.idp import build_tiny_encoder, random_pool
from tests.support.proxy import RunningProxy
from tests.support.upstream import UpstreamServer

NAMES = ["alpha", "beta", "gamma"]
ENTRIES = [
    {"name": "council", "text": "You are the council's clerk.", "description": "the budget vote of the city council"},
    {"name": "code", "text": "You write Python.", "description": "def return class import print"},
]
USER = [{"role": "user", "content": "the model answer is in the cache"}]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("select_prompt")
    llama = build_tiny_causal_lm(root / "llama", "llama", seed=0)
    other = build_tiny_causal_lm(root / "other", "llama", seed=5)
    fp = model_fingerprint(llama)
    enc = build_tiny_encoder(root / "encoder-src")
    return {
        "llama": llama,
        "other": other,
        "pool3": save_pool(root / "pool3.safetensors", random_pool(3, 4, 64, seed=11), NAMES, fp),
        "solo": save_pool(root / "solo.safetensors", random_pool(1, 5, 64, seed=12), ["solo"], fp),
        "foreign": save_pool(root / "foreign.safetensors", random_pool(2, 4, 64), ["a", "b"],
                             model_fingerprint(other)),
        "wide": save_pool(root / "wide.safetensors", random_pool(2, 4, 32), ["a", "b"], fp),
        "encoder": ensure_encoder(enc, cache_dir=root / "cache"),
    }


def config(files: dict[str, Path], upstream: str, **pools: Any) -> dict[str, Any]:
    return {
        "server": {"grpc_port": None},
        "backends": {
            "local": {"type": "local", "model_path": str(files["llama"]), "models": ["tiny-llama"]},
            "up": {"type": "openai", "base_url": upstream, "models": ["test-model"]},
        },
        "stages": {"select_prompt": {"default_pool": "tasks", "pools": pools or {
            "tasks": {"type": "soft", "path": str(files["pool3"]), "backend": "local"},
            "solo": {"type": "soft", "path": str(files["solo"]), "backend": "local", "layers": [0, -1]},
            "helpdesk": {"type": "text", "encoder": str(files["encoder"]), "threshold": 0.5, "entries": ENTRIES},
            "strict": {"type": "text", "encoder": str(files["encoder"]), "threshold": 1.0, "entries": ENTRIES,
                       "fallback": "code"},
        }}},
        "default_stages": [{"name": "select_prompt", "client_options": ["pool"]}],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    up = UpstreamServer().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def proxy(files: dict[str, Path], upstream: UpstreamServer) -> Iterator[RunningProxy]:
    with RunningProxy(config(files, upstream.url)) as p:
        yield p


@pytest.fixture(scope="module")
def reference(files: dict[str, Path]) -> Iterator[Engine]:
    """A second engine on the same checkpoint: what generation with a soft prompt prepended gives."""
    eng = Engine.from_pretrained(str(files["llama"]), EngineConfig(device="cpu", dtype="float32"))
    yield eng
    eng.close()


def post(proxy: RunningProxy, body: dict[str, Any], path: str = "/v1/chat/completions") -> Any:
    with proxy.http() as http:
        return http.post(path, json=body)


def stage_stats(r: Any) -> dict[str, Any]:
    stats = [s for s in json.loads(r.headers["x-promptwire-stats"]) if s["stage"] == "select_prompt"]
    assert len(stats) == 1
    return stats[0]


def test_idp_over_http_chooses_by_attention_and_reports_every_score(proxy: RunningProxy, files: dict[str, Path]) -> None:
    r = post(proxy, {"model": "tiny-llama", "messages": USER, "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    st = stage_stats(r)
    assert st["extra"]["method"] == "idp" and list(st["extra"]["scores"]) == NAMES
    # the same scores computed directly on the checkpoint, from the prompt the local provider generates from
    model = AutoModelForCausalLM.from_pretrained(files["llama"]).eval()
    tok = AutoTokenizer.from_pretrained(files["llama"])
    ids = tok(tok.apply_chat_template(USER, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
    from safetensors.torch import load_file

    scores = idp_scores(model, load_file(str(files["pool3"]))["prompts"], ids["input_ids"])
    i = choose(scores)
    assert (st["choice"], st["extra"]["index"]) == (NAMES[i], i)
    assert st["extra"]["scores"] == pytest.approx(dict(zip(NAMES, scores.tolist(), strict=True)), abs=1e-5)
    assert max(st["extra"]["scores"].values()) == st["extra"]["scores"][st["choice"]]
    assert st["tokens_after"] == st["tokens_before"] + 4  # the n virtual tokens


def test_one_prompt_pool_equals_generating_with_that_prompt_prepended(
    proxy: RunningProxy, files: dict[str, Path], reference: Engine
) -> None:
    from safetensors.torch import load_file

    body = {"model": "tiny-llama", "messages": USER, "max_tokens": 10, "temperature": 0,
            "promptwire": {"select_prompt": {"pool": "solo"}}}
    r = post(proxy, body)
    assert r.status_code == 200, r.text
    assert stage_stats(r)["choice"] == "solo" and stage_stats(r)["extra"]["index"] == 0
    prompt = load_file(str(files["solo"]))["prompts"][0]  # (n, d)
    ids = reference.chat_prompt(USER)
    want = reference.generate(ids, SamplingParams(max_tokens=10, temperature=0), soft_prompt=prompt)
    assert r.json()["choices"][0]["message"]["content"] == want.text
    assert r.json()["usage"]["completion_tokens"] == len(want.token_ids)
    plain = reference.generate(ids, SamplingParams(max_tokens=10, temperature=0))
    assert plain.token_ids != want.token_ids  # the prompt matters: without it the model says something else
    off = post(proxy, {**body, "promptwire": {"select_prompt": False}})
    assert off.json()["choices"][0]["message"]["content"] == plain.text
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        events = [e.removeprefix("data: ") for e in b"".join(s.iter_bytes()).decode().split("\n\n") if e]
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1] if json.loads(e)["choices"])
    assert text == want.text


def test_completions_use_the_prompt_as_tokenised_for_generation(proxy: RunningProxy, reference: Engine,
                                                                files: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    body = {"model": "tiny-llama", "prompt": "def return class", "max_tokens": 6, "temperature": 0,
            "promptwire": {"select_prompt": {"pool": "solo"}}}
    r = post(proxy, body, "/v1/completions")
    assert r.status_code == 200, r.text
    prompt = load_file(str(files["solo"]))["prompts"][0]
    want = reference.generate(reference.encode("def return class"), SamplingParams(max_tokens=6, temperature=0),
                              soft_prompt=prompt)
    assert r.json()["choices"][0]["text"] == want.text
    r = post(proxy, {**body, "prompt": ["one", "two"]}, "/v1/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_idp_text_on_an_upstream_prepends_the_system_instruction(proxy: RunningProxy, upstream: UpstreamServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": ENTRIES[0]["description"]}]
    r = post(proxy, {"model": "test-model", "messages": messages, "promptwire": {"select_prompt": {"pool": "helpdesk"}}})
    assert r.status_code == 200, r.text
    st = stage_stats(r)
    assert (st["choice"], st["extra"]["method"], st["extra"]["index"]) == ("council", "idp-text", 0)
    assert st["extra"]["scores"]["council"] == pytest.approx(1.0, abs=1e-5) and list(st["extra"]["scores"]) == [
        "council", "code"]
    sent = upstream.requests[-1].body["messages"]
    assert sent[0] == {"role": "system", "content": "You are the council's clerk.\n\nBe brief."}
    assert sent[1:] == messages[1:]
    assert st["tokens_after"] > st["tokens_before"]
    # below the threshold: the fallback entry, marked as such; a new system message when there is none
    r = post(proxy, {"model": "test-model", "messages": [{"role": "user", "content": "nothing like it"}],
                     "promptwire": {"select_prompt": {"pool": "strict"}}})
    st = stage_stats(r)
    assert (st["choice"], st["extra"]["index"], st["extra"]["fallback"]) == ("code", 1, True)
    assert upstream.requests[-1].body["messages"][0] == {"role": "system", "content": "You write Python."}


def test_text_pool_below_threshold_without_fallback_leaves_the_request(files: dict[str, Path],
                                                                       upstream: UpstreamServer) -> None:
    pools = {"only": {"type": "text", "encoder": str(files["encoder"]), "threshold": 1.0, "entries": ENTRIES}}
    cfg = config(files, upstream.url, **pools)
    cfg["stages"]["select_prompt"]["default_pool"] = None
    del cfg["backends"]["local"]
    with RunningProxy(cfg) as p:
        r = post(p, {"model": "test-model", "messages": USER})
    st = stage_stats(r)
    assert st["choice"] == "none: below threshold" and st["extra"]["index"] is None
    assert upstream.requests[-1].body["messages"] == USER and st["tokens_after"] == st["tokens_before"]


def test_per_request_errors_name_the_option(proxy: RunningProxy) -> None:
    r = post(proxy, {"model": "tiny-llama", "messages": USER, "promptwire": {"select_prompt": {"pool": "nope"}}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "promptwire.select_prompt.pool" and "helpdesk, solo, strict, tasks" in err["message"]
    r = post(proxy, {"model": "tiny-llama", "messages": USER, "promptwire": {"select_prompt": {"pool": 3}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "promptwire.select_prompt.pool"
    # a soft pool for a model served by an OpenAI upstream: embeddings cannot go there
    r = post(proxy, {"model": "test-model", "messages": USER, "promptwire": {"select_prompt": {"pool": "tasks"}}})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "promptwire.select_prompt.pool" and "type text" in r.json()["error"]["message"]


async def test_grpc_chat_with_a_pool_option_and_stats(files: dict[str, Path], upstream: UpstreamServer,
                                                      reference: Engine) -> None:
    from safetensors.torch import load_file

    gw = Gateway(validate_config(config(files, upstream.url), "<test>"))
    await gw.start()
    try:
        async with serving_stub(gw) as stub:
            req = gateway_pb2.ChatRequest(
                model="tiny-llama", messages=[common_pb2.ChatMessage(role="user", content=USER[0]["content"])],
                sampling=options_pb2.SamplingParams(max_tokens=8, temperature=0),
                stages=options_pb2.StageOverrides(select_prompt=options_pb2.SelectPromptStage(
                    options=options_pb2.SelectPromptOptions(pool="solo"))),
            )
            call = stub.Chat(req)
            messages = [m async for m in call]
            text = "".join(c.text for m in messages for c in m.choices)
            stats = [s for s in messages[-1].stats if s.stage == "select_prompt"]
            assert len(stats) == 1 and stats[0].choice == "solo"
            assert stats[0].extra["method"] == "idp" and stats[0].extra["index"] == 0
            trailer = dict(await call.trailing_metadata())
            assert json.loads(trailer["x-promptwire-stats"])[0]["choice"] == "solo"
            prompt = load_file(str(files["solo"]))["prompts"][0]
            want = await asyncio.to_thread(reference.generate, reference.chat_prompt(USER),
                                           SamplingParams(max_tokens=8, temperature=0), None, soft_prompt=prompt)
            assert text == want.text

            bad = gateway_pb2.ChatRequest(model="tiny-llama", messages=req.messages, stages=options_pb2.StageOverrides(
                select_prompt=options_pb2.SelectPromptStage(options=options_pb2.SelectPromptOptions(pool="nope"))))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                _ = [m async for m in stub.Chat(bad)]
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "(parameter: stages.select_prompt.options.pool)" in (err.value.details() or "")  # gRPC's path
    finally:
        await gw.aclose()


def check(cfg: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, "cfg.yaml")
    return str(err.value)


def test_config_check_names_each_bad_key(files: dict[str, Path], upstream: UpstreamServer, tmp_path: Path) -> None:
    key = "cfg.yaml: stages.select_prompt"
    pools: dict[str, Any] = {
        "on_upstream": {"type": "soft", "path": str(files["pool3"]), "backend": "up"},
        "foreign": {"type": "soft", "path": str(files["foreign"]), "backend": "local"},
        "wide": {"type": "soft", "path": str(files["wide"]), "backend": "local"},
        "deep": {"type": "soft", "path": str(files["pool3"]), "backend": "local", "layers": [0, 7]},
        "missing": {"type": "soft", "path": str(tmp_path / "nope.safetensors"), "backend": "local"},
    }
    cfg = config(files, upstream.url, **pools)
    cfg["stages"]["select_prompt"]["default_pool"] = "ghost"
    want = [
        f"{key}.pools.on_upstream.backend: backend 'up' has type 'openai'; this needs a backend of type 'local'",
        f"{key}.pools.foreign.path: {files['foreign']}: pool was trained for model",
        f"{key}.pools.wide.path: {files['wide']}: prompts have hidden size 32, backend 'local''s model 64",
        f"{key}.pools.deep.layers: layer 7 out of range for backend 'local''s model (2 layers)",
        f"{key}.pools.missing.path: pool file {tmp_path / 'nope.safetensors'} does not exist",
        f"{key}.default_pool: 'ghost' is not a key of stages.select_prompt.pools (pools: deep, foreign, missing, "
        "on_upstream, wide)",
    ]
    lines = check(cfg).splitlines()
    for w in want:
        assert sum(line.startswith(w) for line in lines) == 1, (w, lines)
    assert len(lines) == len(want), lines
    # text pools: their own keys only (the pool's type picks the schema), with the file checks beside them
    pools["text"] = {"type": "text", "entries": ENTRIES, "fallback": "nobody", "encoder": None}
    pools["twice"] = {"type": "text", "entries": [ENTRIES[0], ENTRIES[0]], "path": "x"}
    lines = check(config(files, upstream.url, **pools)).splitlines()
    for w in (f"{key}.pools.text.fallback: 'nobody' is not an entry name (council, code)",
              f"{key}.pools.twice.entries: entry names repeat: council",
              f"{key}.pools.twice.path: unknown key 'path'", *want[1:5]):
        assert any(line.startswith(w) for line in lines), (w, lines)
    assert not any(".pools.text.type" in line or ".pools.text.backend" in line for line in lines), lines
    # the CLI reports the same, exit code 1
    from gateway.cli import main

    path = tmp_path / "cfg.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    assert main(["config", "check", str(path)]) == 1


async def test_start_refuses_a_pool_for_another_model(files: dict[str, Path], upstream: UpstreamServer,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTWIRE_CACHE_DIR", str(tmp_path))
    cfg = config(files, upstream.url, other={"type": "soft", "path": str(files["foreign"]), "backend": "local"})
    cfg["stages"]["select_prompt"]["default_pool"] = None
    cfg["backends"]["local"]["model_path"] = "tiny:llama"  # a stand-in: its files exist once it is built
    gw = Gateway(validate_config(cfg, "cfg.yaml"))
    with pytest.raises(ConfigError, match=r"^stages\.select_prompt\.pools\.other\.path: .*trained for model"):
        await gw.start()
    await gw.aclose()
