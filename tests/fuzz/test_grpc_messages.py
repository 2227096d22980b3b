"""Hypothesis-made protobuf messages (huge strings, bad enum numbers, missing and extreme fields, unset
oneofs) and random bytes sent to every method of promptwire.v1.Gateway (and grpc.health.v1.Health):
the gateway answers each with a proper status, never INTERNAL or UNKNOWN."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import hypothesis
import pytest
import pytest_asyncio
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gateway.config import GatewayConfig
from gateway.core.gateway import Gateway
from protos.promptwire.v1 import gateway_pb2
from tests.fuzz.profile import SCALE, examples
from tests.support.grpc_stub import serving_channel
from tests.support.upstream import UpstreamServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

BAD = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
QUICK = 100
"""Cases per method in the quick profile."""
_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["test-model", "user", "assistant", "system", "tool", "wizard", "", "compress", "trie"]),
    st.integers(1, 300_000).map(lambda n: "x" * n),  # huge strings
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20).map(lambda s: s + "\r\n\x00"),
)


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return _TEXT
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.one_of(st.floats(width=32), st.floats(-3, 3), st.sampled_from([0.0, 1.0, 2.5, float("nan")]))
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 40)  # proto3 enums are open: unknown numbers reach the server
    low, high = _INTS[t]
    return st.one_of(st.integers(low, high), st.integers(0, 8), st.just(high), st.just(low))


def message(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Field name -> value for a message of type ``desc``; any field may be missing."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 4 or fd.message_type.full_name.startswith("google.protobuf"):
                continue
            sub = st.deferred(lambda fd=fd: message(fd.message_type, depth + 1))
            value = st.lists(sub, max_size=3) if fd.is_repeated else sub
        else:
            value = st.lists(_scalar(fd), max_size=6) if fd.is_repeated else _scalar(fd)
        fields[fd.name] = value
    return st.fixed_dictionaries({}, optional=fields)


def build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    _fill(msg, values)
    return msg


def _fill(msg: Message, values: dict[str, Any]) -> None:
    for name, value in values.items():
        fd = msg.DESCRIPTOR.fields_by_name[name]
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.is_repeated:
                for v in value:
                    _fill(getattr(msg, name).add(), v)
            else:
                sub = getattr(msg, name)
                sub.SetInParent()
                _fill(sub, value)
        elif fd.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def channel(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[grpc.aio.Channel]:
    from tests.compressors.test_serving_model import tiny_exported

    model = tiny_exported(tmp_path_factory)
    with UpstreamServer() as up:
        gw = Gateway(GatewayConfig.model_validate({
            "limits": {"request_timeout_s": 10},
            "backends": {"up": {"type": "openai", "base_url": up.url}},
            "stages": {"compress": {"model": str(model)}},
            "default_stages": [{"name": "compress", "enabled": False, "client_options": ["*"]}],
        }))
        await gw.start()
        try:
            async with serving_channel(gw) as ch:
                yield ch
        finally:
            await gw.aclose()


def _methods() -> list[tuple[str, Any, Any, bool]]:
    """(path, request class, method descriptor, server streaming) of every method fuzzed."""
    out = []
    for service in (gateway_pb2.DESCRIPTOR.services_by_name["Gateway"], health_pb2.DESCRIPTOR.services_by_name["Health"]):
        for m in service.methods:
            cls = m.input_type._concrete_class
            out.append((f"/{service.full_name}/{m.name}", cls, m, m.server_streaming))
    return out


METHODS = _methods()


async def _call(channel: grpc.aio.Channel, path: str, streaming: bool, payload: bytes) -> grpc.StatusCode:
    ident = (lambda b: b)  # noqa: E731 - raw bytes both ways
    if streaming:
        call = channel.unary_stream(path, request_serializer=ident, response_deserializer=ident)(payload, timeout=15)
        try:
            async for _ in call:
                if path.endswith("/Watch"):  # health Watch streams until cancelled: its first answer is enough
                    call.cancel()
                    return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as e:
            return e.code()
        except asyncio.CancelledError:
            return grpc.StatusCode.OK
        return grpc.StatusCode.OK
    try:
        await channel.unary_unary(path, request_serializer=ident, response_deserializer=ident)(payload, timeout=15)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("path", "cls", "method", "streaming"), METHODS, ids=[m[0].rsplit("/", 1)[1] for m in METHODS])
async def test_generated_messages_never_internal(channel: grpc.aio.Channel, path: str, cls: Any, method: Any,
                                                 streaming: bool) -> None:
    seen: dict[grpc.StatusCode, int] = {}

    @settings(max_examples=examples(QUICK), deadline=None, database=None, derandomize=SCALE == 1,
              suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
    @hypothesis.given(values=message(method.input_type), junk=st.one_of(st.none(), st.binary(max_size=200)))
    def run(values: dict[str, Any], junk: bytes | None) -> None:
        # a well-formed message, or random bytes (mostly not a valid encoding of the request)
        payload = junk if junk is not None else build(cls, values).SerializeToString()
        code = asyncio.run_coroutine_threadsafe(_call(channel, path, streaming, payload), loop).result(60)
        seen[code] = seen.get(code, 0) + 1
        assert code not in BAD, (path, code, values if junk is None else junk)

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(run)
    assert sum(seen.values()) >= examples(QUICK) // 2, seen


async def test_an_unknown_enum_number_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    """Found by the long profile: an enum number this build does not know (proto3 enums are open) was a
    KeyError, i.e. INTERNAL; it is the option's INVALID_ARGUMENT now."""
    from protos.promptwire.v1 import common_pb2, gateway_pb2_grpc

    stub = gateway_pb2_grpc.GatewayStub(channel)  # type: ignore[no-untyped-call]
    req = gateway_pb2.ChatRequest(model="test-model", messages=[common_pb2.ChatMessage(role="user", content="x")])
    req.decoder.trie.labels.append("a")
    req.decoder.trie.mode = 25  # type: ignore[assignment]
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stub.Chat(req, timeout=15):
            pass
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
    assert dict(ei.value.trailing_metadata() or ())["x-promptwire-error-param"] == "decoder.trie.mode"
