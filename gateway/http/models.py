"""Pydantic v2 models of the OpenAI HTTP surface: request validation and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from gateway.stages.table import DecoderEntry, StageEntry
    from gateway.types import RequestKind

__all__ = [
    "ChatCompletionRequest",
    "ChatMessageModel",
    "CompletionRequest",
    "DecoderOptions",
    "ErrorResponse",
    "ModelList",
    "PromptwireExtension",
    "openapi_document",
]


class _Open(BaseModel):
    """Unknown fields are kept and passed upstream verbatim (newer OpenAI parameters, vendor extras).
    Known fields are strict, as OpenAI is: "0.5" is not a temperature, "false" is not a boolean."""

    model_config = ConfigDict(extra="allow", strict=True)


class ContentPart(_Open):
    """One part of a multi-part message content (text, image_url, input_audio, ...)."""

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_part_has_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a part of type 'text' needs a string 'text'")
        return self


class ChatMessageModel(_Open):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class DecoderOptions(_Open):
    """``{"name": <decoder>, ...its options}``; names and options: gateway/stages/table.py (checked by the core)."""

    name: str


class PromptwireExtension(_Open):
    """The ``promptwire`` body object: per-request stage options (an object, or false to turn a stage
    off; keys are the table's stage names) and the decoder. The core checks every name and option
    against the table, the same way for HTTP and gRPC; the OpenAPI document describes them from it."""

    decoder: DecoderOptions | None = None


class _Sampling(_Open):
    """Types only: values are checked by the core against gateway/core/fields.py (the same for gRPC);
    the OpenAPI document shows that table's bounds."""

    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    promptwire: PromptwireExtension | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageModel] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


class ModelObject(_Open):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "promptwire"


class ModelList(_Open):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ErrorBody(_Open):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Open):
    error: ErrorBody


class ChatCompletion(_Open):
    """OpenAI's chat.completion object, as the upstream produced it."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class TextCompletion(_Open):
    """OpenAI's text_completion object, as the upstream produced it."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


def _schema_refs(models: list[type[BaseModel]]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for m in models:
        s = m.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in s.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[m.__name__] = s
    _field_bounds(schemas)
    return schemas


def _field_bounds(schemas: dict[str, Any]) -> None:
    """The bounds of gateway/core/fields.py (the values the core checks) in the request schemas."""
    from gateway.core.fields import MAX_STOP, ROLES, field_schema

    kinds: tuple[tuple[str, RequestKind], ...] = (("ChatCompletionRequest", "chat"), ("CompletionRequest", "completion"))
    for model, kind in kinds:
        props = schemas[model]["properties"]
        for name, bounds in field_schema(kind).items():
            props[name].update(bounds)
        props["stop"]["maxItems"] = MAX_STOP
    schemas["ChatMessageModel"]["properties"]["role"]["enum"] = list(ROLES)


def _extension_schema(stages: Mapping[str, StageEntry], decoders: Mapping[str, DecoderEntry]) -> dict[str, Any]:
    """The ``promptwire`` object's JSON Schema, from the table (stage and decoder options)."""

    def options(entry: StageEntry | DecoderEntry) -> dict[str, Any]:
        return {"type": "object", "description": entry.doc, "additionalProperties": False,
                "properties": {o.name: o.json_schema() for o in entry.options}}

    stage_props = {name: {"oneOf": [options(e), {"const": False}], "description": e.doc}
                   for name, e in stages.items()}
    variants = []
    for name, e in decoders.items():
        d = options(e)
        d["properties"] = {"name": {"const": name}, **d["properties"]}
        d["required"] = ["name"]
        variants.append(d)
    return {
        "type": "object",
        "description": "promptwire per-request options (what OpenAI SDKs send through extra_body). A stage "
                       "takes an options object, or false to turn it off; unknown names are a 400.",
        "additionalProperties": False,
        "properties": {**stage_props, "decoder": {"oneOf": variants}},
    }


def openapi_document(version: str, stages: Mapping[str, StageEntry] | None = None,
                     decoders: Mapping[str, DecoderEntry] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API, generated from these models and the stage table."""
    from gateway.stages.table import DECODERS, STAGES

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    errors = {
        str(code): {"description": desc, "content": {"application/json": {"schema": ref("ErrorResponse")}}}
        for code, desc in [
            (400, "invalid request / option not allowed / prompt too large"), (401, "missing or invalid API key"),
            (403, "key not allowed this model or stage"), (404, "unknown model (from the upstream)"),
            (413, "body too large"), (429, "too many requests in flight (Retry-After)"),
            (502, "upstream failed"), (503, "no backend / shutting down"), (504, "request timed out"),
        ]
    }
    stats_headers = {
        "x-promptwire-stats": {"description": "JSON list of per-stage stats", "schema": {"type": "string"}},
        "x-promptwire-overhead-ms": {"description": "gateway time outside the upstream call",
                                      "schema": {"type": "string"}},
        "x-request-id": {"description": "the request id (client's or generated)", "schema": {"type": "string"}},
    }

    def gen(req: str, resp: str, summary: str) -> dict[str, Any]:
        return {"post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(req)}}},
            "responses": {
                "200": {"description": "the response, or with stream=true an SSE stream of chunks "
                                       "(`data: {...}` events, then `data: [DONE]`)",
                        "headers": stats_headers,
                        "content": {"application/json": {"schema": ref(resp)},
                                    "text/event-stream": {"schema": {"type": "string"}}}},
                **errors,
            },
        }}

    plain = {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}
    condense = (STAGES if stages is None else stages).get("condense_history") or STAGES["condense_history"]
    return {
        "openapi": "3.1.0",
        "info": {"title": "promptwire gateway", "version": version,
                 "description": "OpenAI-compatible proxy with prompt stages; see docs/gateway.md"},
        "paths": {
            "/v1/chat/completions": gen("ChatCompletionRequest", "ChatCompletion", "Chat completion"),
            "/v1/completions": gen("CompletionRequest", "TextCompletion", "Text completion"),
            "/v1/models": {"get": {"summary": "Models served", "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": ref("ModelList")}}}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": plain}},
            "/readyz": {"get": {"summary": "Readiness (503 when not ready or shutting down)", "responses": plain}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": plain}},
            "/v1/compress": {"post": {
                "summary": "Compress a prompt with the configured compressor, without generating "
                           "(request and response fields: docs/compress-serving.md)",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {**plain, **{c: errors[c] for c in ("400", "401", "403", "413", "429", "503")}},
            }},
            "/v1/condense_history": {"post": {
                "summary": "Condense an agent's chat history into a diff history, without generating "
                           "(request and response fields: docs/condense-history.md)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["messages"],
                    "properties": {"messages": {"type": "array", "items": {"type": "object"}},
                                   **{o.name: o.json_schema() for o in condense.options}},
                    "additionalProperties": False}}}},
                "responses": {**plain, **{c: errors[c] for c in ("400", "401", "403", "413", "429")}},
            }},
        },
        "components": {"schemas": {**_schema_refs([
            ChatCompletionRequest, CompletionRequest, ChatCompletion, TextCompletion, ModelList, ErrorResponse,
        ]), "PromptwireExtension": _extension_schema(STAGES if stages is None else stages,
                                                     DECODERS if decoders is None else decoders)}},
    }
