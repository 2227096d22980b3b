"""The upstream HTTP/1.1 client (gateway/providers/http1.py) against h11 on generated responses: chunked
edge cases, wrong and duplicate lengths, duplicate headers, a second response behind the first, the
bytes split anywhere. Where h11 reads a whole response, ours reads the same status and body or fails
cleanly; whatever h11 says, ours never hands out a mix of two responses (the bytes behind the first
response never answer the next request)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
import hypothesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gateway.providers.http1 import ConnectError, HTTP1Pool, ProtocolError, ReadTimeout, StaleConnection
from tests.fuzz.profile import SCALE, examples
from tests.support.faults import read_request

QUICK = 200
SECOND = b"SECOND-RESPONSE-BODY"  # the body of the response that follows the scripted one
FRESH = b"FRESH-ANSWER"  # what a later request on the same connection gets
READ_S = 0.3  # our read timeout: an incomplete response ends in ReadTimeout (a clean error)
CLEAN = (ProtocolError, ReadTimeout, ConnectError, StaleConnection)
"""The errors the provider maps (StaleConnection: it sends again, once, on a new connection)."""


@dataclass(frozen=True)
class Script:
    raw: bytes
    """The bytes the upstream sends for the first request."""
    cuts: tuple[int, ...]
    """Where the bytes are split into separate writes."""
    eof: bool
    """The upstream closes the connection after them."""


def _chunked(body: bytes, sizes: list[int], ext: bool, upper: bool, zeros: int, trailer: bool) -> bytes:
    out, i = [], 0
    for n in sizes:
        piece = body[i:i + n]
        i += len(piece)
        if not piece:
            break
        size = (b"%X" if upper else b"%x") % len(piece)
        out.append(b"0" * zeros + size + (b";name=val" if ext else b"") + b"\r\n" + piece + b"\r\n")
    if i < len(body):
        rest = body[i:]
        out.append(b"%x\r\n%s\r\n" % (len(rest), rest))
    out.append(b"0\r\n" + (b"x-trailer: 1\r\n" if trailer else b"") + b"\r\n")
    return b"".join(out)


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    status = draw(st.sampled_from([200, 200, 200, 404, 500, 429]))
    body = draw(st.binary(max_size=300).filter(lambda b: SECOND not in b and FRESH not in b))
    headers = [b"content-type: application/json"]
    if draw(st.booleans()):
        headers += [b"x-dup: a", b"x-dup: b"]  # duplicate ordinary headers
    framing = draw(st.sampled_from(["length", "length", "short", "long", "dup_same", "dup_diff", "chunked",
                                    "chunked", "chunked_bad", "both", "close"]))
    if framing == "length":
        headers.append(b"content-length: %d" % len(body))
        payload = body
    elif framing in ("short", "long"):
        delta = draw(st.integers(1, 20))
        n = max(0, len(body) - delta) if framing == "short" else len(body) + delta
        headers.append(b"content-length: %d" % n)
        payload = body
    elif framing in ("dup_same", "dup_diff"):
        other = len(body) if framing == "dup_same" else len(body) + draw(st.integers(1, 5))
        headers += [b"content-length: %d" % len(body), b"content-length: %d" % other]
        payload = body
    elif framing in ("chunked", "chunked_bad", "both"):
        headers.append(b"transfer-encoding: chunked")
        if framing == "both":
            headers.append(b"content-length: %d" % draw(st.integers(0, 400)))
        sizes = draw(st.lists(st.integers(1, 64), max_size=8))
        payload = _chunked(body, sizes, draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2)),
                           draw(st.booleans()))
        if framing == "chunked_bad":
            where = draw(st.integers(0, max(0, len(payload) - 1)))
            payload = payload[:where] + draw(st.sampled_from([b"zz\r\n", b"\r\n", b"-1\r\n", b"ffffffffffffffffff\r\n"])) \
                + payload[where:]
    else:  # close-delimited
        headers.append(b"connection: close")
        payload = body
    head = b"HTTP/1.1 %d X\r\n" % status + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    raw = head + payload
    if framing != "close" and draw(st.booleans()):  # (a close-delimited body runs to the end: no "behind")
        raw += b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(SECOND), SECOND)
    cuts = tuple(sorted(set(draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=5)))))
    eof = framing == "close" or draw(st.booleans())
    return Script(raw, cuts, eof)


def h11_reads(script: Script) -> tuple[str, int, bytes]:
    """("ok", status, body) when h11 reads a whole first response; ("error" | "incomplete", 0, b"")."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/v1/chat/completions",
                          headers=[("host", "127.0.0.1"), ("content-length", "2")]))
    conn.send(h11.Data(data=b"{}"))
    conn.send(h11.EndOfMessage())
    conn.receive_data(script.raw)
    if script.eof:
        conn.receive_data(b"")
    status, body = 0, b""
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
                return "incomplete", 0, b""
            if isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                return "ok", status, body
    except h11.RemoteProtocolError:
        return "error", 0, b""


async def ours_reads(script: Script) -> tuple[tuple[str, int, bytes], tuple[str, int, bytes]]:
    """Our client's reading of the first response, and of a second request sent right after it."""
    served = 0
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await read_request(reader)
            served += 1
            if served == 1:  # the scripted answer, in pieces
                last = 0
                for cut in (*script.cuts, len(script.raw)):
                    writer.write(script.raw[last:cut])
                    await writer.drain()
                    last = cut
                if script.eof:
                    return
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(FRESH), FRESH))
                await writer.drain()
            while True:  # later requests on this connection get the fresh answer
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(FRESH), FRESH))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = HTTP1Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", max_connections=1)
    try:
        return await _read(pool), await _read(pool)
    finally:
        pool.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.close()
        await server.wait_closed()


async def _read(pool: HTTP1Pool) -> tuple[str, int, bytes]:
    try:
        resp = await pool.request(b"POST", "/chat/completions", [], b"{}", READ_S)
        try:
            return "ok", resp.status, await resp.read()
        finally:
            resp.release()
    except CLEAN as e:
        return "error:" + type(e).__name__, 0, b""


@settings(max_examples=examples(QUICK), deadline=None, database=None, derandomize=SCALE == 1,
          suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
@hypothesis.given(script=scripts())
def test_same_body_as_h11_or_a_clean_error_and_never_a_mix(script: Script) -> None:
    ref = h11_reads(script)
    first, second = asyncio.run(ours_reads(script))
    if ref[0] == "ok" and first[0] == "ok":
        assert first == ref, (script, ref, first)
    assert SECOND not in first[2], (script, first)  # the response behind never becomes this one's body
    # the next request gets a whole answer of its own: the fresh one, or the scripted one again on a new
    # connection; never the bytes that followed the first response
    assert SECOND not in second[2], (script, second)
    if second[0] == "ok":
        assert second[2] == FRESH or (ref[0] == "ok" and second[2] == ref[2]) or first[0] != "ok", (script, second)


def test_the_differential_covers_each_kind_of_response() -> None:
    """The generator reaches every framing, and h11 and ours agree on well-framed responses."""
    agreed: dict[str, int] = {}

    @settings(max_examples=60, deadline=None, database=None, derandomize=True, phases=[hypothesis.Phase.generate],
              suppress_health_check=list(HealthCheck))
    @hypothesis.given(script=scripts())
    def run(script: Script) -> None:
        ref = h11_reads(script)
        agreed[ref[0]] = agreed.get(ref[0], 0) + 1

    run()
    assert set(agreed) >= {"ok", "error", "incomplete"}, agreed


def _raw(*parts: bytes) -> Any:
    return Script(b"".join(parts), (), True)


def test_known_cases() -> None:
    ok = _raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
    assert h11_reads(ok) == ("ok", 200, b"hi")
    assert asyncio.run(ours_reads(ok))[0] == ("ok", 200, b"hi")
    two = _raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n", SECOND)
    first, second = asyncio.run(ours_reads(Script(two.raw, (), False)))
    assert first == ("ok", 200, b"hi") and SECOND not in second[2]
