"""Protobuf → GatewayRequest fields and OpenAI chunks → protobuf, without a server."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.grpc import convert as conv
from gateway.types import StreamChunk
from protos.promptwire.v1 import common_pb2, gateway_pb2, options_pb2


def _param(fn: object, *args: object) -> str | None:
    with pytest.raises(InvalidRequest) as err:
        fn(*args)  # type: ignore[operator]
    return err.value.param


def test_sampling_sets_only_what_the_client_set() -> None:
    assert conv.sampling_params(options_pb2.SamplingParams(), "chat") == {}
    s = options_pb2.SamplingParams(temperature=0.0, seed=0, logprobs=True, top_logprobs=3, stop=["\n"])
    assert conv.sampling_params(s, "chat") == {
        "temperature": 0.0, "seed": 0, "logprobs": True, "top_logprobs": 3, "stop": ["\n"]
    }  # fmt: skip
    # completions carry the number of alternatives in `logprobs`
    assert conv.sampling_params(s, "completion") == {
        "temperature": 0.0,
        "seed": 0,
        "logprobs": 3,
        "stop": ["\n"],
    }
    off = options_pb2.SamplingParams(logprobs=False)
    assert conv.sampling_params(off, "chat") == {"logprobs": False}
    assert conv.sampling_params(off, "completion") == {}


@pytest.mark.parametrize(
    ("sampling", "param"),
    [
        (options_pb2.SamplingParams(top_logprobs=2), "sampling.top_logprobs"),
        (options_pb2.SamplingParams(extra_json="{"), "sampling.extra_json"),
        (options_pb2.SamplingParams(extra_json="[1]"), "sampling.extra_json"),
        (options_pb2.SamplingParams(extra_json='{"temperature": 1}'), "sampling.extra_json.temperature"),
        (options_pb2.SamplingParams(extra_json='{"stream": false}'), "sampling.extra_json.stream"),
        (
            options_pb2.SamplingParams(
                response_format=options_pb2.ResponseFormat(
                    json_schema=options_pb2.JsonSchemaFormat(name="x", schema_json="{")
                )
            ),
            "sampling.response_format.json_schema.schema_json",
        ),
        (
            options_pb2.SamplingParams(
                response_format=options_pb2.ResponseFormat(json_schema=options_pb2.JsonSchemaFormat())
            ),
            "sampling.response_format.json_schema.name",
        ),
    ],
)
def test_bad_sampling_names_the_field(sampling: options_pb2.SamplingParams, param: str) -> None:
    assert _param(conv.sampling_params, sampling, "chat") == param


def test_response_formats() -> None:
    for which, expected in (("text", {"type": "text"}), ("json_object", {"type": "json_object"})):
        rf = options_pb2.ResponseFormat(**{which: {}})
        assert conv.sampling_params(options_pb2.SamplingParams(response_format=rf), "chat") == {
            "response_format": expected
        }
    js = options_pb2.JsonSchemaFormat(name="n", schema_json='{"maxLength": 5}', strict=True, description="d")
    params = conv.sampling_params(
        options_pb2.SamplingParams(response_format=options_pb2.ResponseFormat(json_schema=js)), "chat"
    )
    schema = params["response_format"]["json_schema"]
    assert schema == {"name": "n", "description": "d", "schema": {"maxLength": 5}, "strict": True}
    assert isinstance(schema["schema"]["maxLength"], int)  # integers survive exactly


def test_stage_overrides() -> None:
    assert conv.stage_options(options_pb2.StageOverrides()) == {}
    protections = options_pb2.Protections(urls=False, numbers=True)
    stages = options_pb2.StageOverrides(
        compress=options_pb2.CompressStage(
            options=options_pb2.CompressStageOptions(
                rate=0.4, target_token=0, roles=["system"], protections=protections, drop_consecutive=False
            )
        ),
        conjugate=options_pb2.ConjugateStage(disabled=options_pb2.Disabled()),
        select_prompt=options_pb2.SelectPromptStage(options=options_pb2.SelectPromptOptions()),
    )
    assert conv.stage_options(stages) == {
        "compress": {
            "rate": 0.4, "target_token": 0, "drop_consecutive": False, "roles": ["system"],
            "protections": {"urls": False, "numbers": True},
        },
        "conjugate": False,
        "select_prompt": {},
    }  # fmt: skip
    empty = options_pb2.StageOverrides(compress=options_pb2.CompressStage())
    assert _param(conv.stage_options, empty) == "stages.compress"


def test_decoders() -> None:
    assert conv.decoder_dict(options_pb2.DecoderOptions()) is None
    trie = options_pb2.TrieDecoder(
        labels=["billing", "bug"], separator=", ", max_labels=2, mode=options_pb2.TRIE_MODE_ANY, scoring=True
    )
    assert conv.decoder_dict(options_pb2.DecoderOptions(trie=trie)) == {
        "name": "trie", "labels": ["billing", "bug"], "separator": ", ", "max_labels": 2, "mode": "any",
        "scoring": True,
    }  # fmt: skip
    plain = options_pb2.DecoderOptions(trie=options_pb2.TrieDecoder(labels=["a"]))
    assert conv.decoder_dict(plain) == {"name": "trie", "labels": ["a"]}
    assert conv.decoder_dict(options_pb2.DecoderOptions(uscd=options_pb2.UscdDecoder())) == {"name": "uscd"}


def test_requests() -> None:
    msg = gateway_pb2.ChatRequest(
        model="m",
        messages=[
            common_pb2.ChatMessage(role="system", content="be brief"),
            common_pb2.ChatMessage(role="tool", content="42", tool_call_id="call_1", name="calc"),
        ],
        request_id="abc\r\nauthorization: Bearer x",  # the servicer validates; conversion takes its id
    )
    req = conv.chat_request(msg, request_id="checked-id", deadline=12.5, received_at=1.0)
    assert req.request_id == "checked-id" and req.deadline == 12.5 and req.stream
    assert [m.to_dict() for m in req.messages] == [
        {"role": "system", "content": "be brief"},
        {"role": "tool", "content": "42", "name": "calc", "tool_call_id": "call_1"},
    ]
    gen = conv.generate_request(
        gateway_pb2.GenerateRequest(model="m", prompt="p"), request_id="g", deadline=None, received_at=0.0
    )
    assert (gen.kind, gen.prompt, gen.request_id) == ("completion", "p", "g")
    assert gen.params == {"stream_options": {"include_usage": True}}
    kw = {"request_id": "r", "deadline": None, "received_at": 0.0}
    assert _param(lambda: conv.generate_request(gateway_pb2.GenerateRequest(prompt="p"), **kw)) == "model"
    assert _param(lambda: conv.chat_request(gateway_pb2.ChatRequest(model="m"), **kw)) == "messages"
    no_role = gateway_pb2.ChatRequest(model="m", messages=[common_pb2.ChatMessage(content="x")])
    assert _param(lambda: conv.chat_request(no_role, **kw)) == "messages[0].role"


@pytest.mark.parametrize(
    ("core", "grpc_field"),
    [
        ("temperature", "sampling.temperature"),
        ("max_completion_tokens", "sampling.max_tokens"),
        ("promptwire.compress.rate", "stages.compress.options.rate"),
        ("promptwire.conjugate", "stages.conjugate"),
        ("promptwire.decoder.name", "decoder"),
        ("promptwire.decoder.labels", "decoder.<name>.labels"),
        ("model", "model"),
        ("messages", "messages"),
    ],
)
def test_core_parameter_names_map_to_grpc_fields(core: str, grpc_field: str) -> None:
    assert conv.grpc_param(core) == grpc_field


def test_decoder_option_names_use_the_chosen_decoder() -> None:
    assert conv.grpc_param("promptwire.decoder.labels", "trie") == "decoder.trie.labels"


def test_stream_state_chat_and_completion() -> None:
    chat = conv.StreamState(kind="chat", request_id="r")
    first = StreamChunk({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    assert [(d.role, d.text) for d in chat.feed(first)] == [("assistant", "")]
    lp = {"content": [{"token": "hi", "logprob": -0.5, "bytes": [104, 105],
                       "top_logprobs": [{"token": "yo", "logprob": -1.0, "bytes": None}]}]}  # fmt: skip
    [d] = chat.feed(StreamChunk({"choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": lp}]}))
    assert (d.text, d.logprobs[0].token, d.logprobs[0].logprob, d.logprobs[0].bytes) == (
        "hi",
        "hi",
        -0.5,
        b"hi",
    )
    assert d.logprobs[0].top_logprobs[0].token == "yo"
    assert chat.feed(StreamChunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})) == []
    assert (
        chat.feed(StreamChunk({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}})) == []
    )
    final = chat.final_fields()
    assert (final["id"], final["model"], final["done"]) == ("c1", "m", True)
    assert [(c.index, c.finish_reason) for c in final["choices"]] == [(0, "length")]
    assert (final["usage"].prompt_tokens, final["usage"].total_tokens) == (2, 3)

    comp = conv.StreamState(kind="completion", request_id="r")
    lp2 = {
        "tokens": ["a", "b"],
        "token_logprobs": [-0.1, None],
        "top_logprobs": [{"a": -0.1, "c": -2.0}, None],
    }
    [d] = comp.feed(
        StreamChunk({"choices": [{"index": 1, "text": "ab", "logprobs": lp2, "finish_reason": "stop"}]})
    )
    assert (d.index, d.text, [t.token for t in d.logprobs]) == (1, "ab", ["a", "b"])
    assert [t.token for t in d.logprobs[0].top_logprobs] == ["a", "c"]
    assert comp.final_fields()["usage"] is None
    assert [(c.index, c.finish_reason) for c in comp.final_fields()["choices"]] == [(1, "stop")]


def test_label_scores_reach_the_last_message() -> None:
    state = conv.StreamState(kind="chat", request_id="r")
    scores = {"billing": {"prob": 0.75, "logprob": -2.0}, "bug": {"prob": 0.25, "logprob": -3.1}}
    state.feed(StreamChunk({"choices": [], "promptwire": {"label_scores": scores}}))
    got = [(s.label, s.probability, s.logprob) for s in state.final_fields()["label_scores"]]
    assert got == [("billing", 0.75, -2.0), ("bug", 0.25, -3.1)]
    state.feed(StreamChunk({"choices": [], "promptwire": {"label_scores": {"a": 0.0}}}))
    assert [(s.label, s.probability) for s in state.final_fields()["label_scores"]] == [("a", 1.0)]


def test_tool_call_refusal_and_function_call_deltas_are_kept() -> None:
    state = conv.StreamState(kind="chat", request_id="r")
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
    [d] = state.feed(StreamChunk({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]}))
    assert d.role == "assistant" and len(d.tool_calls) == 1
    tc = d.tool_calls[0]
    assert (tc.index, tc.id, tc.type, tc.function.name, tc.function.arguments) == (0, "call_1", "function", "lookup", "")
    # later fragments carry only the index and a piece of the arguments; a second call has index 1
    pieces = [{"index": 0, "function": {"arguments": '{"q": '}}, {"index": 1, "id": "call_2", "type": "function",
                                                                   "function": {"name": "other"}}]
    [d] = state.feed(StreamChunk({"choices": [{"index": 0, "delta": {"tool_calls": pieces}}]}))
    assert [(c.index, c.id, c.function.name, c.function.arguments) for c in d.tool_calls] == [
        (0, "", "", '{"q": '), (1, "call_2", "other", "")]
    # arguments a backend sends as an object survive as JSON text
    [d] = state.feed(StreamChunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": {"q": 1}}}]}}]}))
    assert d.tool_calls[0].function.arguments == '{"q":1}'
    [d] = state.feed(StreamChunk({"choices": [{"index": 0, "delta": {"refusal": "I can't help with that."}}]}))
    assert (d.refusal, d.text) == ("I can't help with that.", "")
    [d] = state.feed(StreamChunk({"choices": [{"index": 0, "delta": {"function_call": {"name": "f", "arguments": "{}"}}}]}))
    assert (d.function_call.name, d.function_call.arguments) == ("f", "{}")
    # explicit nulls (OpenAI sends them) are no delta at all
    empty = {"content": None, "refusal": None, "tool_calls": None, "function_call": None}
    assert state.feed(StreamChunk({"choices": [{"index": 0, "delta": empty, "finish_reason": "tool_calls"}]})) == []
    assert [(c.index, c.finish_reason) for c in state.final_fields()["choices"]] == [(0, "tool_calls")]
    # a plain text delta has none of the new fields set
    [d] = state.feed(StreamChunk({"choices": [{"index": 0, "delta": {"content": "hi"}}]}))
    assert not d.tool_calls and not d.refusal and not d.HasField("function_call")


def test_assistant_tool_calls_go_upstream() -> None:
    call = common_pb2.ToolCall(id="call_1", function=common_pb2.FunctionCall(name="f", arguments='{"x": 1}'))
    msg = gateway_pb2.ChatRequest(
        model="m",
        messages=[
            common_pb2.ChatMessage(role="user", content="weather?"),
            common_pb2.ChatMessage(role="assistant", tool_calls=[call]),
            common_pb2.ChatMessage(role="tool", content="sunny", tool_call_id="call_1"),
        ],
    )
    req = conv.chat_request(msg, request_id="r", deadline=None, received_at=1.0)
    sent = req.upstream_body()["messages"]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
