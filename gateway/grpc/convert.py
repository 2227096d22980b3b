"""Protobuf ↔ gateway dataclass conversion for the gRPC front end (no I/O, no gRPC context)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway.errors import InvalidRequest
from gateway.stages.table import DECODERS, STAGES, DecoderEntry, Option, StageEntry
from gateway.types import ChatMessage, GatewayRequest, ModelInfo, StageOptions, StageStats, StreamChunk, Usage
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2

__all__ = [
    "PARAM_PATHS",
    "StreamState",
    "chat_request",
    "condense_history_call",
    "condense_history_response",
    "decoder_dict",
    "generate_request",
    "grpc_param",
    "model_list",
    "options_dict",
    "sampling_params",
    "stage_options",
    "stats_json",
]

# Body keys a gRPC client may not set through extra_json: the typed fields and the request's frame.
_RESERVED_BODY_KEYS = frozenset(
    {
        "model", "messages", "prompt", "stream", "stream_options", "promptwire", "max_tokens",
        "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n", "logprobs", "top_logprobs",
        "response_format", "presence_penalty", "frequency_penalty", "user",
    }
)  # fmt: skip

PARAM_PATHS: dict[str, str] = {
    **{k: f"sampling.{k}" for k in _RESERVED_BODY_KEYS - {"model", "messages", "prompt", "stream"}},
    "max_completion_tokens": "sampling.max_tokens",
    "promptwire.decoder": "decoder",
    "promptwire.decoder.name": "decoder",
}
"""OpenAI body / extension-object parameter names → the gRPC request field that carries them."""



def grpc_param(param: str, decoder: str | None = None) -> str:
    """The gRPC field path for a parameter name the core reports (OpenAI / extension-object naming);
    `decoder` is the request's decoder (the oneof field set in DecoderOptions), if any."""
    if param in PARAM_PATHS:
        return PARAM_PATHS[param]
    head, _, rest = param.partition(".")
    if head == "promptwire" and rest:
        name, _, option = rest.partition(".")
        if name in STAGES:
            return f"stages.{name}.options.{option}" if option else f"stages.{name}"
        if name == "decoder" and option:
            return f"decoder.{decoder or '<name>'}.{option}"
    return param


def _optional(msg: Any, names: Sequence[str]) -> dict[str, Any]:
    """The explicitly set (proto3 `optional`) fields among `names`."""
    return {n: getattr(msg, n) for n in names if msg.HasField(n)}


def sampling_params(s: options_pb2.SamplingParams, kind: Literal["chat", "completion"]) -> dict[str, Any]:
    """OpenAI body fields for the sampling parameters (unset fields are left out). Their values are
    checked by the core against the one table of field rules (gateway/core/fields.py), as for HTTP."""
    params = _optional(
        s,
        ("max_tokens", "temperature", "top_p", "seed", "n", "presence_penalty", "frequency_penalty", "user"),
    )
    if s.stop:
        params["stop"] = list(s.stop)
    if s.HasField("top_logprobs") and not s.logprobs:
        # completions carry the count in `logprobs`: without it there is nowhere to put top_logprobs
        raise InvalidRequest("sampling.top_logprobs needs sampling.logprobs = true", param="sampling.top_logprobs")
    if s.HasField("logprobs"):
        if kind == "chat":
            params["logprobs"] = s.logprobs
            if s.HasField("top_logprobs"):
                params["top_logprobs"] = s.top_logprobs
        elif s.logprobs:  # completions take the number of alternatives in `logprobs`
            params["logprobs"] = s.top_logprobs
    fmt = _response_format(s.response_format) if s.HasField("response_format") else None
    if fmt is not None:
        params["response_format"] = fmt
    if s.extra_json:
        params.update(_extra_body(s.extra_json))
    return params


def _response_format(rf: options_pb2.ResponseFormat) -> dict[str, Any] | None:
    which = rf.WhichOneof("format")
    if which is None:
        return None
    if which != "json_schema":
        return {"type": which}
    js = rf.json_schema
    if not js.name:
        raise InvalidRequest(
            "response_format.json_schema.name is required", param="sampling.response_format.json_schema.name"
        )
    inner: dict[str, Any] = {"name": js.name}
    if js.HasField("description"):
        inner["description"] = js.description
    if js.schema_json:
        try:
            inner["schema"] = json.loads(js.schema_json)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                f"response_format.json_schema.schema_json is not valid JSON: {exc}",
                param="sampling.response_format.json_schema.schema_json",
            ) from None
    if js.HasField("strict"):
        inner["strict"] = js.strict
    return {"type": "json_schema", "json_schema": inner}


def _extra_body(text: str) -> dict[str, Any]:
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"sampling.extra_json is not valid JSON: {exc}", param="sampling.extra_json"
        ) from None
    if not isinstance(extra, dict):
        raise InvalidRequest("sampling.extra_json must be a JSON object", param="sampling.extra_json")
    for key in extra:
        if key in _RESERVED_BODY_KEYS:
            raise InvalidRequest(
                f"sampling.extra_json may not set {key!r}: use the typed field",
                param=f"sampling.extra_json.{key}",
            )
    return extra


def options_dict(msg: Message, options: Sequence[Option]) -> dict[str, Any]:
    """A stage's or decoder's options message as the option dict HTTP clients send: the fields that are
    set, under their option names (proto field name = option name, or one of ``Option.proto_fields``);
    enums become their lower-case value names, ``TokenIds`` a list, nested messages dicts."""
    alias = {pf: o.name for o in options for pf in o.proto_fields}
    return {alias.get(fd.name, fd.name): _field_value(fd, value) for fd, value in msg.ListFields()}


def _field_value(fd: FieldDescriptor, value: Any) -> Any:
    if fd.is_repeated:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            return [_message_value(v) for v in value]
        return list(value)
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _message_value(value)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        enum = fd.enum_type
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
        known = enum.values_by_number.get(value)
        if known is None:  # proto3 enums are open: a number this build does not know stays a number,
            return value  # and the table's check answers INVALID_ARGUMENT naming the option
        return known.name.removeprefix(prefix).lower()
    return value


def _message_value(msg: Message) -> Any:
    if msg.DESCRIPTOR.name == "TokenIds":
        return list(msg.ids)
    return {fd.name: _field_value(fd, value) for fd, value in msg.ListFields()}


def stage_options(
    stages: options_pb2.StageOverrides, table: Mapping[str, StageEntry] = STAGES
) -> dict[str, StageOptions | Literal[False]]:
    """Per-request stage overrides: name -> options dict, or False for `disabled`; unset stages absent."""
    out: dict[str, StageOptions | Literal[False]] = {}
    fields = stages.DESCRIPTOR.fields_by_name
    for name, entry in table.items():
        if name not in fields or not stages.HasField(name):
            continue
        setting = getattr(stages, name)
        which = setting.WhichOneof("setting")
        if which is None:
            raise InvalidRequest(f"stages.{name} must set either disabled or options", param=f"stages.{name}")
        out[name] = False if which == "disabled" else options_dict(setting.options, entry.options)
    return out


def decoder_dict(
    d: options_pb2.DecoderOptions, table: Mapping[str, DecoderEntry] = DECODERS
) -> dict[str, Any] | None:
    """`{"name": ..., options...}` as the core expects, or None when no decoder is chosen."""
    which = d.WhichOneof("decoder")
    if which is None:
        return None
    entry = table.get(which)
    options = options_dict(getattr(d, which), entry.options if entry is not None else ())
    return {"name": which, **options}


def _messages(messages: Sequence[common_pb2.ChatMessage]) -> tuple[ChatMessage, ...]:
    out = []
    for i, m in enumerate(messages):
        if not m.role:
            raise InvalidRequest(f"messages[{i}].role is required", param=f"messages[{i}].role")
        extra = _optional(m, ("name", "tool_call_id"))
        content: str | None = m.content
        if m.tool_calls:
            extra["tool_calls"] = [
                {"id": tc.id, "type": tc.type or "function",
                 "function": {"name": tc.function.name, "arguments": tc.function.arguments}}
                for tc in m.tool_calls
            ]
            content = m.content or None
        out.append(ChatMessage(role=m.role, content=content, extra=extra))
    return tuple(out)


def _request(
    msg: gateway_pb2.GenerateRequest | gateway_pb2.ChatRequest,
    kind: Literal["chat", "completion"],
    request_id: str,
    deadline: float | None,
    received_at: float,
) -> dict[str, Any]:
    if not msg.model:
        raise InvalidRequest("model is required", param="model")
    params = sampling_params(msg.sampling, kind)
    # The RPC streams; ask the backend for the usage chunk so the last message has exact usage.
    params["stream_options"] = {"include_usage": True}
    return {
        "request_id": request_id,  # validated by the servicer (printable ASCII, <= 200)
        "kind": kind,
        "model": msg.model,
        "params": params,
        "stream": True,
        "stage_options": stage_options(msg.stages),
        "decoder": decoder_dict(msg.decoder),
        "deadline": deadline,
        "received_at": received_at,
    }


def generate_request(
    msg: gateway_pb2.GenerateRequest, *, request_id: str, deadline: float | None, received_at: float
) -> GatewayRequest:
    """A completion GatewayRequest from a GenerateRequest (validated)."""
    fields = _request(msg, "completion", request_id, deadline, received_at)
    return GatewayRequest(prompt=msg.prompt, **fields)


def chat_request(
    msg: gateway_pb2.ChatRequest, *, request_id: str, deadline: float | None, received_at: float
) -> GatewayRequest:
    """A chat GatewayRequest from a ChatRequest (validated)."""
    if not msg.messages:
        raise InvalidRequest("messages must not be empty", param="messages")
    fields = _request(msg, "chat", request_id, deadline, received_at)
    return GatewayRequest(messages=_messages(msg.messages), **fields)


def stats_json(stats: Sequence[StageStats]) -> str:
    """The `x-promptwire-stats` value: a compact JSON list of the stages' stats."""
    return json.dumps([s.to_dict() for s in stats], separators=(",", ":"), ensure_ascii=True)


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    # Struct holds JSON values; round-trip through JSON so tuples, numpy scalars etc. are plain.
    out.update(json.loads(json.dumps(dict(values), default=str)))
    return out


def stage_stats(stats: Sequence[StageStats]) -> list[common_pb2.StageStats]:
    return [
        common_pb2.StageStats(
            stage=s.stage,
            tokens_before=max(s.tokens_before, 0),
            tokens_after=max(s.tokens_after, 0),
            ms=s.ms,
            choice=s.choice or "",
            extra=_struct(s.extra) if s.extra else None,
        )
        for s in stats
    ]


def _token_logprobs(lp: Any, kind: str) -> list[gateway_pb2.TokenLogprob]:
    """OpenAI choice `logprobs` (chat: {content: [...]}, completions: parallel lists) → messages."""
    if not isinstance(lp, dict):
        return []
    out = []
    if kind == "chat":
        for item in lp.get("content") or ():
            out.append(
                gateway_pb2.TokenLogprob(
                    token=item.get("token", ""),
                    logprob=float(item.get("logprob", 0.0)),
                    bytes=bytes(item.get("bytes") or b""),
                    top_logprobs=[
                        gateway_pb2.TopLogprob(
                            token=t.get("token", ""),
                            logprob=float(t.get("logprob", 0.0)),
                            bytes=bytes(t.get("bytes") or b""),
                        )
                        for t in item.get("top_logprobs") or ()
                    ],
                )
            )
        return out
    tokens = lp.get("tokens") or []
    values = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or []
    for i, token in enumerate(tokens):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        value = values[i] if i < len(values) else None
        out.append(
            gateway_pb2.TokenLogprob(
                token=token,
                logprob=float(value) if value is not None else 0.0,
                bytes=token.encode(),
                top_logprobs=[
                    gateway_pb2.TopLogprob(token=t, logprob=float(v), bytes=t.encode())
                    for t, v in top.items()
                ],
            )
        )
    return out


def _text(value: Any) -> str:
    """A string field of a backend's chunk: absent → "", a non-string (a backend sending arguments as an
    object) → its JSON, so nothing is lost."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _function(f: Mapping[str, Any]) -> gateway_pb2.FunctionCallDelta:
    return gateway_pb2.FunctionCallDelta(name=_text(f.get("name")), arguments=_text(f.get("arguments")))


def _tool_calls(calls: Any) -> list[gateway_pb2.ToolCallDelta]:
    """OpenAI ``delta.tool_calls`` fragments → messages (fields a fragment lacks stay empty)."""
    out = []
    for i, c in enumerate(calls if isinstance(calls, list) else ()):
        if not isinstance(c, dict):
            continue
        f = c.get("function")
        out.append(
            gateway_pb2.ToolCallDelta(
                index=int(c["index"]) if isinstance(c.get("index"), int) else i,
                id=_text(c.get("id")),
                type=_text(c.get("type")),
                function=_function(f) if isinstance(f, dict) else None,
            )
        )
    return out


@dataclass(slots=True)
class StreamState:
    """Turns OpenAI stream chunks into gRPC messages; remembers finish reasons and usage for the end."""

    kind: Literal["chat", "completion"]
    request_id: str
    response_id: str = ""
    model: str = ""
    finish_reasons: dict[int, str] = field(default_factory=dict)
    usage: Usage | None = None
    label_scores: list[gateway_pb2.LabelScore] = field(default_factory=list)
    decoder_stats: list[Mapping[str, Any]] = field(default_factory=list)

    def feed(self, chunk: StreamChunk) -> list[gateway_pb2.ChoiceDelta]:
        """The deltas of one chunk (empty when it only carries usage or finish reasons)."""
        data = chunk.data
        self.response_id = self.response_id or str(data.get("id") or "")
        self.model = self.model or str(data.get("model") or "")
        usage = chunk.usage
        if usage is not None:
            self.usage = usage
        self._scores(data)
        self._decoder_stats(data)
        deltas = []
        for ch in data.get("choices") or ():
            index = int(ch.get("index") or 0)
            if ch.get("finish_reason"):
                self.finish_reasons[index] = str(ch["finish_reason"])
            logprobs = _token_logprobs(ch.get("logprobs"), self.kind)
            if self.kind != "chat":
                text = ch.get("text") or ""
                if text or logprobs:
                    deltas.append(gateway_pb2.ChoiceDelta(index=index, text=text, logprobs=logprobs))
                continue
            delta = ch.get("delta") or {}
            text = delta.get("content") or ""
            role = delta.get("role") or ""
            refusal = _text(delta.get("refusal"))
            calls = delta.get("tool_calls")
            tool_calls = _tool_calls(calls) if calls else []
            fcall = delta.get("function_call")
            function_call = _function(fcall) if isinstance(fcall, dict) else None
            if refusal or tool_calls or function_call is not None:
                deltas.append(
                    gateway_pb2.ChoiceDelta(
                        index=index,
                        text=text,
                        role=role,
                        logprobs=logprobs,
                        refusal=refusal,
                        tool_calls=tool_calls,
                        function_call=function_call,
                    )
                )
            elif text or role or logprobs:  # the common case: fewer fields to set
                deltas.append(gateway_pb2.ChoiceDelta(index=index, text=text, role=role, logprobs=logprobs))
        return deltas

    def _scores(self, data: Mapping[str, Any]) -> None:
        """Trie scoring mode: ``chunk["promptwire"]["label_scores"]`` = {label: {"prob", "logprob"}}
        (decoders.trie.score.LabelScores.as_dict), or {label: logprob}."""
        ext = data.get("promptwire")
        scores = ext.get("label_scores") if isinstance(ext, dict) else None
        if not isinstance(scores, dict):
            return
        out = []
        for label, value in scores.items():
            if isinstance(value, Mapping):
                logprob = float(value.get("logprob", -math.inf))
                prob = float(value["prob"]) if "prob" in value else math.exp(logprob)
            else:
                logprob = float(value)
                prob = math.exp(logprob)
            out.append(gateway_pb2.LabelScore(label=str(label), probability=prob, logprob=logprob))
        self.label_scores = out

    def _decoder_stats(self, data: Mapping[str, Any]) -> None:
        """``chunk["promptwire"]["decoder"]``: one choice's stats (an object) or every choice's (a list)."""
        ext = data.get("promptwire")
        stats = ext.get("decoder") if isinstance(ext, dict) else None
        if isinstance(stats, dict):
            self.decoder_stats = [stats]
        elif isinstance(stats, list):
            self.decoder_stats = [s for s in stats if isinstance(s, dict)]

    def final_fields(self) -> dict[str, Any]:
        """Fields of the last message: finish reasons of every choice, usage, label scores, decoder stats."""
        usage = self.usage
        return {
            "id": self.response_id,
            "model": self.model,
            "request_id": self.request_id,
            "done": True,
            "choices": [
                gateway_pb2.ChoiceDelta(index=i, finish_reason=r)
                for i, r in sorted(self.finish_reasons.items())
            ],
            "usage": common_pb2.Usage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
                aux_prompt_tokens=usage.aux_prompt_tokens,
            )
            if usage is not None
            else None,
            "label_scores": self.label_scores,
            "decoder_stats": [_struct(s) for s in self.decoder_stats],
        }


def model_list(models: Sequence[ModelInfo]) -> gateway_pb2.ListModelsResponse:
    return gateway_pb2.ListModelsResponse(
        models=[
            gateway_pb2.Model(id=m.id, owned_by=m.owned_by, created=m.created, provider=m.provider)
            for m in models
        ]
    )


def condense_history_call(req: gateway_pb2.CondenseHistoryRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """CondenseHistory's messages (as OpenAI message dicts) and its options (set fields only)."""
    messages = [m.to_dict() for m in _messages(req.messages)]
    return messages, options_dict(req.options, STAGES["condense_history"].options)


def _chat_message(d: Mapping[str, Any]) -> common_pb2.ChatMessage:
    content = d.get("content")
    if isinstance(content, list):  # not from gRPC (its content is text), but keep the text if given
        content = "\n".join(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    out = common_pb2.ChatMessage(role=d["role"], content=content if isinstance(content, str) else "")
    for name in ("name", "tool_call_id"):
        if isinstance(d.get(name), str):
            setattr(out, name, d[name])
    for call in d.get("tool_calls") or ():
        fn = call.get("function") or {}
        out.tool_calls.append(common_pb2.ToolCall(
            id=call.get("id", ""), type=call.get("type", "function"),
            function=common_pb2.FunctionCall(name=fn.get("name", ""), arguments=fn.get("arguments", ""))))
    return out


def condense_history_response(outcome: Any, request_id: str) -> gateway_pb2.CondenseHistoryResponse:
    """A ``gateway.stages.condense_history.CondenseOutcome`` as the RPC's response."""
    return gateway_pb2.CondenseHistoryResponse(
        messages=[_chat_message(m) for m in outcome.messages],
        stats=stage_stats([outcome.stats])[0],
        observations=[gateway_pb2.CondensedObservation(index=o.index, group=o.group, kind=o.kind)
                      for o in outcome.observations],
        request_id=request_id,
    )
