"""The `compress` stage with a real tiny exported model: options, chat/completion rewriting, stats, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from compressors.llmlingua2.compressor import Compressor
from compressors.llmlingua2.errors import CompressorError
from compressors.llmlingua2.serving import BatcherClosed, CompressorOverloaded
from gateway.config import ConfigError, parse_config
from gateway.config.stages import CompressConfig
from gateway.errors import InvalidRequest, Overloaded, ShuttingDown
from gateway.stages.base import Stage
from gateway.stages.compress import CompressStage, compressor_errors, make_compress_stage
from gateway.tokens import count_tokens
from gateway.types import ChatMessage, GatewayRequest
from tests.compressors.test_serving_model import TEXTS, tiny_exported


async def _run(stage: Any, req: GatewayRequest, options: Any) -> tuple[GatewayRequest, Any]:
    result = await stage.apply(req, options)
    return result.request, result.stats

SYSTEM = (
    "You are the assistant of the city council. The council approved the budget for the new library on "
    "Main Street after a long public hearing, and staff recommend the motion on water and street repairs. "
    "Details are at https://example.com/budget?id=42 and in the field budget_total_2024."
)


@pytest.fixture
async def stage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CompressStage]:
    st = make_compress_stage(CompressConfig(**{"model": str(tiny_exported(tmp_path_factory)), "max_wait_ms": 20, "threads": 1}))
    yield st
    await st.aclose()


def chat(*msgs: tuple[str, str], **stage_options: object) -> GatewayRequest:
    return GatewayRequest(
        request_id="r1", kind="chat", model="m",
        messages=tuple(ChatMessage(role=r, content=c) for r, c in msgs),
    )


async def test_is_a_stage(stage: CompressStage) -> None:
    assert isinstance(stage, Stage)
    assert stage.name == "compress"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"rate": 0}, "promptwire.compress.rate"),
        ({"rate": 1.5}, "promptwire.compress.rate"),
        ({"rate": float("nan")}, "promptwire.compress.rate"),
        ({"rate": "half"}, "promptwire.compress.rate"),
        ({"rate": True}, "promptwire.compress.rate"),
        ({"target_token": 0}, "promptwire.compress.target_token"),
        ({"target_token": 2.5}, "promptwire.compress.target_token"),
        ({"force_tokens": ["x"] * 101}, "promptwire.compress.force_tokens"),
        ({"force_tokens": [""]}, "promptwire.compress.force_tokens"),
        ({"force_tokens": "abc"}, "promptwire.compress.force_tokens"),
        ({"roles": "system"}, "promptwire.compress.roles"),
        ({"roles": [1]}, "promptwire.compress.roles"),
        ({"protections": {"tables": False}}, "promptwire.compress.protections.tables"),
        ({"protections": {"urls": "no"}}, "promptwire.compress.protections.urls"),
        ({"compat": "selective_context"}, "promptwire.compress.compat"),
        ({"drop_consecutive": True}, "promptwire.compress.drop_consecutive"),
        ({"ratio": 0.5}, "promptwire.compress.ratio"),
    ],
)
async def test_bad_options_name_the_parameter(stage: CompressStage, options: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        stage.validate(options)
    assert ei.value.param == param
    assert ei.value.http_status == 400


async def test_validate_normalises(stage: CompressStage) -> None:
    opts = stage.validate({"rate": 1, "protections": {"code": False, "urls": True}, "roles": ["system"]})
    assert opts["rate"] == 1.0 and isinstance(opts["rate"], float)
    assert opts["protections"] == {"code_blocks": False, "urls": True}
    assert opts["roles"] == ("system",)
    assert opts["compat"] == "none" and opts["target_token"] is None
    assert stage.validate({})["rate"] == 0.5


async def test_chat_compresses_system_never_last_user(stage: CompressStage) -> None:
    question = "What did the council decide about the library budget and the street repairs tonight?"
    req = chat(("system", SYSTEM), ("user", question))
    new, st = await _run(stage, req, stage.validate({"rate": 0.4}))
    assert new is not req
    assert new.messages[1] == req.messages[1]  # the question is untouched
    sys_out = new.messages[0].content
    assert isinstance(sys_out, str) and len(sys_out) < len(SYSTEM)
    assert "https://example.com/budget?id=42" in sys_out  # URL protected
    assert "budget_total_2024" in sys_out  # identifier protected
    assert st.stage == "compress" and st.choice == "rate=0.4"
    assert st.tokens_before == count_tokens(req.prompt_text())
    assert st.tokens_after == count_tokens(new.prompt_text()) < st.tokens_before
    assert st.ms > 0
    assert st.extra["mode"] == "none" and st.extra["provider"] == "CPUExecutionProvider"


async def test_roles_and_markers(stage: CompressStage) -> None:
    keep = "<pw:keep>Never drop this sentence about the budget vote.</pw:keep> "
    req = chat(("system", keep + SYSTEM), ("assistant", SYSTEM), ("user", TEXTS[0]), ("user", "And then?"))
    new, _ = await _run(stage, req, stage.validate({"rate": 0.3, "roles": ["system"]}))
    sys_out = new.messages[0].content
    assert isinstance(sys_out, str)
    assert sys_out.startswith("Never drop this sentence about the budget vote. ")
    assert "<pw:keep>" not in sys_out
    assert new.messages[1:] == req.messages[1:]  # assistant and users not in roles
    new2, _ = await _run(stage, req, stage.validate({"rate": 0.3, "roles": ["user"]}))
    assert new2.messages[2].content != TEXTS[0]  # an earlier user message may be compressed
    assert new2.messages[3] == req.messages[3]  # the last user message never is
    # not compressed, only its markers removed
    assert new2.messages[0].content == "Never drop this sentence about the budget vote. " + SYSTEM


async def test_multipart_content_passes_through(stage: CompressStage) -> None:
    parts = [{"type": "text", "text": SYSTEM}]
    req = GatewayRequest(request_id="r", kind="chat", model="m", messages=(
        ChatMessage("system", parts), ChatMessage("system", SYSTEM), ChatMessage("user", "Why?")))
    new, _ = await _run(stage, req, stage.validate({"rate": 0.3}))
    assert new.messages[0] is req.messages[0]
    assert new.messages[1].content != SYSTEM


async def test_completion_prompts(stage: CompressStage) -> None:
    req = GatewayRequest(request_id="r", kind="completion", model="m", prompt=TEXTS[0])
    new, st = await _run(stage, req, stage.validate({"target_token": 12}))
    assert isinstance(new.prompt, str) and new.prompt != TEXTS[0]
    assert st.choice == "target_token=12" and st.tokens_after < st.tokens_before
    lst = GatewayRequest(request_id="r", kind="completion", model="m", prompt=[TEXTS[0], "  "])
    new_l, _ = await _run(stage, lst, stage.validate({"rate": 0.5}))
    assert isinstance(new_l.prompt, list) and new_l.prompt[1] == "  " and new_l.prompt[0] != TEXTS[0]
    ids = GatewayRequest(request_id="r", kind="completion", model="m", prompt=[1, 2, 3])
    same, st_ids = await _run(stage, ids, stage.validate({}))
    assert same is ids and st_ids.tokens_after == st_ids.tokens_before


async def test_nothing_to_compress_returns_same_request(stage: CompressStage) -> None:
    req = chat(("user", TEXTS[0]))
    new, st = await _run(stage, req, stage.validate({"rate": 0.3}))
    assert new is req and st.tokens_saved == 0


async def test_compat_mode_matches_library(stage: CompressStage) -> None:
    comp: Compressor = stage.service.compressor
    req = chat(("system", TEXTS[0]), ("user", "Summarise."))
    new, st = await _run(stage, req, stage.validate({"rate": 0.5, "compat": "llmlingua", "force_tokens": ["\n"]}))
    want = comp.compress_llmlingua(TEXTS[0], rate=0.5, force_tokens=["\n"])["compressed_prompt"]
    assert new.messages[0].content == want
    assert st.extra["mode"] == "llmlingua"


async def test_concurrent_requests_share_batches_and_match_direct(stage: CompressStage) -> None:
    comp: Compressor = stage.service.compressor
    reqs = [chat(("system", t), ("user", "Question?")) for t in TEXTS * 2]
    opts = stage.validate({"rate": 0.5})
    before = stage.service.stats.requests
    outs = await asyncio.gather(*(_run(stage, r, opts) for r in reqs))
    for (new, _), t in zip(outs, TEXTS * 2, strict=True):
        direct = comp.compress_messages([{"role": "system", "content": t}, {"role": "user", "content": "Question?"}],
                                        rate=0.5)
        assert new.messages[0].content == direct.messages[0]["content"]
    assert stage.service.stats.requests - before == len(reqs)  # all through the stage's service (sharing: tests/compressors)


async def test_operator_defaults_merge_under_request(tmp_path_factory: pytest.TempPathFactory) -> None:
    st = make_compress_stage(CompressConfig(**{"model": str(tiny_exported(tmp_path_factory)), "defaults": {"rate": 0.7}}))
    try:
        assert st.validate({})["rate"] == 0.7
        assert st.validate({"rate": 0.2})["rate"] == 0.2
    finally:
        await st.aclose()


def test_factory_config_errors(tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(ConfigError, match=r"stages\.compress\.model: required"):
        parse_config("stages: {compress: {}}")
    with pytest.raises(ConfigError, match=r"stages\.compress\.modle: unknown key 'modle'"):
        parse_config("stages: {compress: {modle: x}}")
    with pytest.raises(ConfigError, match=r"stages\.compress\.defaults\.rate: option 'rate' of stage 'compress' must be <= 1"):
        parse_config("stages: {compress: {model: x, defaults: {rate: 2}}}")
    with pytest.raises(InvalidRequest) as ei:
        make_compress_stage(CompressConfig(**{"model": str(tiny_exported(tmp_path_factory)), "defaults": {"rate": 2}}))
    assert ei.value.param == "stages.compress.defaults.rate"


def test_error_mapping() -> None:
    with pytest.raises(InvalidRequest) as ei, compressor_errors():
        raise CompressorError("force_tokens", "too many")
    assert ei.value.param == "promptwire.compress.force_tokens" and "too many" in ei.value.message
    with pytest.raises(Overloaded) as eo, compressor_errors():
        raise CompressorOverloaded("full", retry_after=0.5)
    assert eo.value.retry_after == 0.5 and eo.value.http_status == 429
    with pytest.raises(ShuttingDown), compressor_errors():
        raise BatcherClosed("closed")
    with pytest.raises(KeyError), compressor_errors():  # programming errors are not request errors
        raise KeyError("x")
