"""The stage/decoder table is the one source of names and options: the proto, the config sections and
the OpenAPI document follow it, and it stays torch-free."""

from __future__ import annotations

import subprocess
import sys

from gateway.config.stages import DecodersConfig, StagesConfig
from gateway.http.models import openapi_document
from gateway.stages.table import DECODERS, STAGES
from protos.promptwire.v1 import options_pb2


def _proto_option_names(message: str, aliases: dict[str, str]) -> set[str]:
    fields = getattr(options_pb2, message).DESCRIPTOR.fields_by_name
    return {aliases.get(name, name) for name in fields}


def test_proto_option_messages_match_the_table() -> None:
    overrides = options_pb2.StageOverrides.DESCRIPTOR.fields_by_name
    assert set(overrides) == set(STAGES), "StageOverrides needs one field per stage"
    for name, entry in STAGES.items():
        aliases = {pf: o.name for o in entry.options for pf in o.proto_fields}
        assert _proto_option_names(entry.proto_message, aliases) == {o.name for o in entry.options}, name
        assert overrides[name].message_type.fields_by_name["options"].message_type.name == entry.proto_message
    decoders = options_pb2.DecoderOptions.DESCRIPTOR.fields_by_name
    assert set(decoders) == set(DECODERS), "DecoderOptions needs one field per decoder"
    for name, entry in DECODERS.items():
        aliases = {pf: o.name for o in entry.options for pf in o.proto_fields}
        assert _proto_option_names(entry.proto_message, aliases) == {o.name for o in entry.options}, name
        assert decoders[name].message_type.name == entry.proto_message


def test_config_sections_match_the_table() -> None:
    assert set(StagesConfig.model_fields) == set(STAGES)
    for name, entry in STAGES.items():
        assert entry.config in StagesConfig.model_fields[name].annotation.__args__, name  # type: ignore[union-attr]
    configured = {name for name, e in DECODERS.items() if e.config.model_fields}
    assert set(DecodersConfig.model_fields) == configured


def test_openapi_describes_every_option() -> None:
    ext = openapi_document("0")["components"]["schemas"]["PromptwireExtension"]["properties"]
    for name, entry in STAGES.items():
        props = ext[name]["oneOf"][0]["properties"]
        assert set(props) == {o.name for o in entry.options}
    variants = {v["properties"]["name"]["const"]: v for v in ext["decoder"]["oneOf"]}
    assert set(variants) == set(DECODERS)
    assert variants["trie"]["properties"]["mode"]["enum"] == ["canonical", "any"]


def test_the_table_imports_without_torch() -> None:
    code = ("import sys; import gateway.stages.table, gateway.config, gateway.http.models; "
            "bad = [m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
