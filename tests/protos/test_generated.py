"""The committed generated protobuf modules match the .proto sources and import from the repo root."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from protos import generate as gen


def test_regeneration_matches_committed_files(tmp_path: Path) -> None:
    gen.generate(tmp_path)
    assert gen._differences(tmp_path, gen.ROOT) == []


def test_difference_is_detected(tmp_path: Path) -> None:
    """The check above can fail: a changed .proto gives a differing module."""
    fresh = tmp_path / "fresh"
    gen.generate(fresh)
    committed = tmp_path / "committed"
    shutil.copytree(gen.ROOT / "promptwire", committed / "promptwire")
    target = committed / "promptwire" / "v1" / "common_pb2.py"
    target.write_text(target.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    (committed / "promptwire" / "v1" / "gone_pb2.py").write_text("", encoding="utf-8")
    (committed / "promptwire" / "v1" / "options_pb2.pyi").unlink()
    assert gen._differences(fresh, committed) == [
        "missing: options_pb2.pyi",
        "stale (no .proto produces it): gone_pb2.py",
        "differs: common_pb2.py",
    ]


@pytest.mark.parametrize("name", ["common", "options", "compress", "gateway"])
def test_modules_import_from_package_protos(name: str) -> None:
    module = importlib.import_module(f"protos.promptwire.v1.{name}_pb2")
    assert module.DESCRIPTOR.package == "promptwire.v1"
    assert module.DESCRIPTOR.name == f"promptwire/v1/{name}.proto"


def test_service_shape() -> None:
    from protos.promptwire.v1 import gateway_pb2, gateway_pb2_grpc

    service = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
    assert service.full_name == "promptwire.v1.Gateway"
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Generate", "Chat", "ListModels", "Compress", "CondenseHistory"}
    assert methods["Generate"].server_streaming and methods["Chat"].server_streaming
    assert not methods["ListModels"].server_streaming
    assert hasattr(gateway_pb2_grpc, "add_GatewayServicer_to_server")


def test_stage_setting_is_disabled_or_options() -> None:
    from protos.promptwire.v1 import gateway_pb2, options_pb2

    req = gateway_pb2.ChatRequest(
        model="m",
        stages=options_pb2.StageOverrides(
            compress=options_pb2.CompressStage(options=options_pb2.CompressStageOptions(rate=0.5)),
            conjugate=options_pb2.ConjugateStage(disabled=options_pb2.Disabled()),
        ),
        decoder=options_pb2.DecoderOptions(trie=options_pb2.TrieDecoder(labels=["a", "b"], separator=",")),
    )
    back = gateway_pb2.ChatRequest.FromString(req.SerializeToString())
    assert back.stages.compress.WhichOneof("setting") == "options"
    assert back.stages.compress.options.rate == 0.5
    assert not back.stages.compress.options.HasField("target_token")
    assert back.stages.conjugate.WhichOneof("setting") == "disabled"
    assert not back.stages.HasField("select_prompt")
    assert back.decoder.WhichOneof("decoder") == "trie"
    assert list(back.decoder.trie.labels) == ["a", "b"]
