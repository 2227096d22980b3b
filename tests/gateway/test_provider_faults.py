"""Provider ``openai`` against upstreams that misbehave at the wire level, end to end through the proxy:
dropped requests, silent streams, a saturated pool, Retry-After beyond the deadline, TLS trust."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.faults import read_request
from tests.support.proxy import RunningProxy

Handler = Callable[[dict[str, Any], asyncio.StreamWriter], Awaitable[bool]]
"""(request JSON or {} plus "_path", writer) -> keep the connection open for the next request."""


class _Scripted:
    """A raw HTTP/1.1 upstream in a thread of its own, answering with ``handler``; counts requests and
    connections. Optional TLS (``ssl_context``)."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                path, raw = await read_request(reader)
                req = json.loads(raw) if raw else {}
                req["_path"] = path
                self.requests.append(req)
                if not await self.handler(req, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass  # cancelled: the server is stopping
        finally:
            writer.close()

    async def _main(self, sock: socket.socket, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._conn, sock=sock, ssl=self.ssl_context)
        ready.set()
        async with server:
            await self._stop.wait()
            handlers = asyncio.all_tasks() - {asyncio.current_task()}
            for t in handlers:
                t.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await asyncio.sleep(0.05)  # the closed writers' transports finish closing before the loop does

    def __enter__(self) -> _Scripted:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(sock, ready),), daemon=True)
        self._thread.start()
        assert ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


def _json(status: int, body: dict[str, Any], *extra: bytes) -> bytes:
    data = json.dumps(body).encode()
    head = [b"HTTP/1.1 %d X" % status, b"content-type: application/json", b"content-length: %d" % len(data), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + data


def _completion(text: str = "ok") -> bytes:
    return _json(200, {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}]})


def _chunk(text: str) -> bytes:
    event = b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                    "choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _config(*urls: str, limits: dict[str, Any] | None = None, **backend: Any) -> dict[str, Any]:
    backends = {f"up{i + 1}": {"type": "openai", "base_url": u, "models": ["m"], **backend}
                for i, u in enumerate(urls)}
    cfg: dict[str, Any] = {"server": {"grpc_port": None}, "backends": backends}
    if limits:
        cfg["limits"] = limits
    return cfg


def _post(proxy: RunningProxy, content: str = "hello", timeout: float = 20, **kw: Any) -> tuple[httpx.Response, float]:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **kw}
    t0 = time.monotonic()
    with proxy.http(timeout=timeout) as http:
        r = http.post("/v1/chat/completions", json=body)
    return r, time.monotonic() - t0


def test_an_upstream_dropping_a_post_does_not_get_it_once_per_idle_connection(make_proxy: Any) -> None:
    """The upstream works on one request and then drops the connection: that is sent again at most once
    (in case the drop was a stale keep-alive connection), not once per idle pooled connection."""
    warm = 8
    arrived = 0
    all_in: asyncio.Event | None = None

    async def handler(req: dict[str, Any], w: asyncio.StreamWriter) -> bool:
        nonlocal arrived, all_in
        if req["messages"][0]["content"] == "poison":
            w.transport.abort()
            return False
        # a barrier: no warm-up request is answered before all eight are in, so each holds a connection
        # of its own whatever the machine's load (a timer here once let one finish early: 7 connections)
        all_in = all_in or asyncio.Event()
        arrived += 1
        if arrived == warm:
            all_in.set()
        await all_in.wait()
        w.write(_completion())
        await w.drain()
        return True

    with _Scripted(handler) as up:
        proxy = make_proxy(_config(up.url()))
        threads = [threading.Thread(target=_post, args=(proxy,)) for _ in range(warm)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert up.connections == warm  # eight idle pooled connections now
        r, _ = _post(proxy, "poison")
    assert r.status_code == 502
    assert sum(1 for q in up.requests if q["messages"][0]["content"] == "poison") <= 2


def test_backend_total_s_ends_a_stream_whose_upstream_goes_silent(make_proxy: Any) -> None:
    async def handler(req: dict[str, Any], w: asyncio.StreamWriter) -> bool:
        w.write(SSE_HEAD + _chunk("a"))
        await w.drain()
        await asyncio.Event().wait()  # silent from here on (until the test's server stops)
        return False

    with _Scripted(handler) as up:
        proxy = make_proxy(_config(up.url(), timeouts={"total_s": 1, "read_s": 30}))
        r, took = _post(proxy, stream=True)
    assert took < 2.5, f"total_s is 1 but the stream lasted {took:.2f} s"
    assert r.status_code == 200 and "error" in r.text and "[DONE]" not in r.text


def test_readyz_stays_ready_while_every_connection_is_in_use(make_proxy: Any, monkeypatch: Any) -> None:
    """The only connection is busy with a stream and no recent answer vouches for the upstream: the
    readiness probe opens a connection of its own. Had it queued behind the stream (held until the probe
    is done), its 2 s limit would end it and /readyz would say 503."""
    from gateway.providers import openai as prov

    streaming = threading.Event()
    release = threading.Event()

    async def handler(req: dict[str, Any], w: asyncio.StreamWriter) -> bool:
        if req["_path"].endswith("/models"):
            w.write(_json(200, {"object": "list", "data": [{"id": "m", "object": "model"}]}))
            await w.drain()
            return True
        w.write(SSE_HEAD + _chunk("t0"))
        await w.drain()
        streaming.set()
        await asyncio.to_thread(release.wait, 30)
        w.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        await w.drain()
        return True

    with _Scripted(handler) as up:
        proxy = make_proxy(_config(up.url(), max_connections=1))
        with proxy.http() as http:
            assert http.get("/readyz").status_code == 200
        stream = threading.Thread(target=_post, args=(proxy,), kwargs={"stream": True})
        stream.start()
        try:
            assert streaming.wait(30)
            monkeypatch.setattr(prov, "_READY_CACHE_S", 0.0)  # no cached answer: the probe must go out now
            with proxy.http() as http:
                code = http.get("/readyz").status_code
        finally:
            release.set()
            stream.join()
    assert code == 200


@pytest.mark.parametrize("where", ["limits.request_timeout_s", "timeouts.total_s"])
def test_a_retry_after_longer_than_the_time_left_goes_to_the_client_at_once(make_proxy: Any, where: str) -> None:
    async def handler(req: dict[str, Any], w: asyncio.StreamWriter) -> bool:
        w.write(_json(429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, b"retry-after: 8"))
        await w.drain()
        return True

    with _Scripted(handler) as up:
        if where == "timeouts.total_s":
            cfg = _config(up.url(), timeouts={"total_s": 3})
        else:
            cfg = _config(up.url(), limits={"request_timeout_s": 3})
        proxy = make_proxy(cfg)
        r, took = _post(proxy)
    # not waited for: a wait would have run into the 3 s limit (504), not answered the upstream's 429
    assert r.status_code == 429 and took < 3.0, (r.status_code, took)
    assert r.headers["retry-after"] == "8"
    assert len(up.requests) == 1


def test_failover_is_not_counted_for_the_last_backend(make_proxy: Any) -> None:
    async def handler(req: dict[str, Any], w: asyncio.StreamWriter) -> bool:
        w.write(_json(503, {"error": {"message": "down", "type": "server_error"}}))
        await w.drain()
        return True

    with _Scripted(handler) as a, _Scripted(handler) as b:
        cfg = _config(a.url(), b.url(), retries={"max_attempts": 1})
        cfg["models"] = [{"match": "m", "backends": ["up1", "up2"]}]
        proxy = make_proxy(cfg)
        r, _ = _post(proxy)
        with proxy.http() as http:
            text = http.get("/metrics").text
    assert r.status_code == 502
    assert 'promptwire_upstream_retries_total{backend="up1",reason="failover"} 1.0' in text
    assert 'backend="up2",reason="failover"' not in text


# ----- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A certificate for 127.0.0.1 that no system store trusts: (cert.pem, key.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=promptwire test CA", "-addext", "subjectAltName=IP:127.0.0.1", "-addext",
                    "basicConstraints=critical,CA:TRUE", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    yield cert, key


def _tls_server(self_signed: tuple[Path, Path]) -> _Scripted:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*self_signed)

    async def handler(req: dict[str, Any], w: asyncio.StreamWriter) -> bool:
        w.write(_completion("over tls"))
        await w.drain()
        return True

    return _Scripted(handler, ctx)


def test_an_untrusted_certificate_is_not_retried_and_says_why(make_proxy: Any, self_signed: tuple[Path, Path]) -> None:
    with _tls_server(self_signed) as up:
        proxy = make_proxy(_config(up.url("https"), retries={"max_attempts": 3, "backoff_s": 0.01}))
        r, _ = _post(proxy)
        with proxy.http() as http:
            text = http.get("/metrics").text
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert "certificate verification failed" in message and "not retried" in message, message
    assert 'reason="connect"' not in text  # no retry was counted (or made)


@pytest.mark.parametrize("setting", ["tls_ca_file", "tls_verify"])
def test_a_private_ca_or_no_verification_reaches_the_upstream(
    make_proxy: Any, self_signed: tuple[Path, Path], setting: str
) -> None:
    with _tls_server(self_signed) as up:
        extra: dict[str, Any] = {"tls_ca_file": str(self_signed[0])} if setting == "tls_ca_file" else {
            "tls_verify": False}
        proxy = make_proxy(_config(up.url("https"), **extra))
        r, _ = _post(proxy)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "over tls"
