"""Provider ``openai``: an upstream OpenAI-compatible server (vLLM, TGI, OpenAI) over pooled keep-alive
HTTP/1.1 connections."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from gateway.errors import InvalidRequest, PromptwireError, RequestTimeout, UpstreamError, UpstreamStatusError
from gateway.observe.tracing import inject
from gateway.providers.choice import apply_choice
from gateway.providers.http1 import (
    CertificateError,
    ConnectError,
    HTTP1Pool,
    ProtocolError,
    ReadTimeout,
    Response,
    ResponseTooLarge,
    StaleConnection,
)
from gateway.types import Completion, GatewayRequest, ModelInfo, StreamChunk

if TYPE_CHECKING:
    from gateway.config.schema import OpenAIBackendConfig
    from gateway.observe.metrics import Metrics

__all__ = ["OpenAIProvider", "upstream_errors"]

logger = logging.getLogger(__name__)

_READY_CACHE_S = 2.0
_DONE = b"[DONE]"


@contextlib.contextmanager
def upstream_errors(backend: str, url: str) -> Iterator[None]:
    """Turn transport exceptions into gateway errors; the one place they are mapped."""
    try:
        yield
    except PromptwireError:
        raise
    except ConnectError as e:
        # the URL goes to the operator's log, not to clients (internal host names and ports)
        logger.warning("backend %s: cannot connect to %s: %s", backend, url, e)
        raise UpstreamError(f"backend {backend!r}: cannot connect to the upstream: {e}") from e
    except (ReadTimeout, TimeoutError) as e:
        raise RequestTimeout(f"backend {backend!r}: upstream timed out ({e or 'read timeout'})") from e
    except ResponseTooLarge as e:
        raise UpstreamError(f"backend {backend!r}: {e}") from e
    except (ProtocolError, StaleConnection) as e:
        raise UpstreamError(f"backend {backend!r}: upstream broke off the response: {e}") from e
    except OSError as e:
        raise UpstreamError(f"backend {backend!r}: upstream connection failed: {type(e).__name__}: {e}") from e
    except ValueError as e:  # JSON from the upstream that does not parse
        raise UpstreamError(f"backend {backend!r}: upstream sent malformed data: {e}") from e


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIProvider:
    """One upstream base URL; retries connect errors, 429 and 5xx before the first byte goes out."""

    decoders: frozenset[str] = frozenset({"trie"})
    """Trie labels map to the upstream's structured-output choice (``structured_choice`` in config);
    apply_choice answers the clear error when the upstream cannot do it."""

    def __init__(self, name: str, config: OpenAIBackendConfig, metrics: Metrics | None = None) -> None:
        self.name = name
        self.config = config
        self.base_url = config.base_url.split("?", 1)[0].rstrip("/")  # for log lines; the pool keeps the query
        self._metrics = metrics
        headers: dict[str, str] = {"content-type": "application/json", "accept-encoding": "identity",
                                   **{k.lower(): v for k, v in config.headers.items()}}
        key = os.environ.get(config.api_key_env) if config.api_key_env else config.api_key
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self._pool_: HTTP1Pool | None = None
        self._ready_at = 0.0
        self._ready = False
        self._ok_at = -_READY_CACHE_S  # when a request last got a 200: the upstream is up, no probe needed
        if metrics is not None:  # read when /metrics is rendered
            metrics.upstream_connections.labels(name).set_function(
                lambda: self._pool_.open_connections if self._pool_ is not None else 0)
            metrics.upstream_waiting.labels(name).set_function(
                lambda: self._pool_.waiting if self._pool_ is not None else 0)

    def _pool(self) -> HTTP1Pool:
        # created lazily: the pool belongs to the running loop
        if self._pool_ is None:
            c = self.config
            self._pool_ = HTTP1Pool(c.base_url, max_connections=c.max_connections,
                                    connect_timeout=c.timeouts.connect_s, tls_ca_file=c.tls_ca_file,
                                    tls_verify=c.tls_verify)
        return self._pool_

    async def aclose(self) -> None:
        if self._pool_ is not None:
            self._pool_.close()
            self._pool_ = None

    # ----- sending with retries --------------------------------------------------------------------

    async def _post(self, path: str, req: GatewayRequest, deadline: float) -> Response:
        """POST with retries; returns a 200 response whose body is not read yet. ``deadline`` (monotonic:
        the request's or the backend's total_s, whichever comes first) cuts every wait for bytes, and no
        retry is waited for past it: the upstream's error goes to the client at once instead."""
        url = self.base_url + path
        if req.soft_prompt is not None:  # embeddings cannot travel over the OpenAI API
            raise InvalidRequest(
                f"backend {self.name!r} (type openai) cannot take a soft prompt: IDP pools (type soft) need the "
                "model's own backend (type local); use a pool of type text for upstreams",
                param="promptwire.select_prompt.pool",
            )
        payload = req.upstream_body()
        if req.decoder is not None:
            payload = apply_choice(payload, req.decoder, self.config.structured_choice, model=req.model,
                                   backend=self.name)
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        rid = req.request_id if req.request_id.isprintable() else "invalid"  # never CR/LF into the head
        headers = [*self._headers, (b"x-request-id", rid.encode("latin-1", "replace"))]
        inject(headers)  # W3C trace context of the current upstream span (no-op with tracing off)
        r = self.config.retries
        read_s = self.config.timeouts.read_s
        pool = self._pool()
        attempt = 0
        fresh = False  # after a stale connection: new connections only for this request
        while True:
            attempt += 1
            with upstream_errors(self.name, url):
                try:
                    resp = await pool.request(b"POST", path, headers, body, read_s, deadline, fresh=fresh)
                except StaleConnection:
                    # the upstream had closed that idle connection before our request reached it: resend,
                    # once, not counted as an attempt, on a new connection. A new connection is never
                    # stale, so if the upstream drops the request again that is a failure (no resend).
                    if fresh:  # pragma: no cover - cannot happen (see above); never loop
                        raise
                    fresh = True
                    attempt -= 1
                    continue
                except CertificateError:
                    raise  # a certificate that did not verify will not verify on the next try
                except ConnectError as e:
                    if attempt >= r.max_attempts:
                        raise
                    delay = self._backoff(attempt)
                    if delay >= deadline - time.monotonic():
                        raise
                    self._note_retry("connect")
                    logger.info("request %s: backend %s: %s; retry %d in %.3fs", req.request_id, self.name, e,
                                attempt, delay, extra={"request_id": req.request_id})
                    await asyncio.sleep(delay)
                    continue
                if resp.status == 200:
                    self._ok_at = time.monotonic()
                    return resp
                err = await self._status_error(resp)
            status = err.upstream_status
            if (status == 429 or status >= 500) and attempt < r.max_attempts:
                delay = self._backoff(attempt)
                if err.retry_after is not None:
                    if err.retry_after > r.max_retry_after_s:
                        raise err
                    delay = max(delay, err.retry_after)
                if delay >= deadline - time.monotonic():
                    raise err  # the wait would outlast the request: the upstream's answer now, not a 504 later
                self._note_retry(str(status))
                logger.info("request %s: backend %s answered %d; retry %d in %.3fs", req.request_id,
                            self.name, status, attempt, delay, extra={"request_id": req.request_id})
                await asyncio.sleep(delay)
                continue
            raise err

    def _backoff(self, attempt: int) -> float:
        r = self.config.retries
        base: float = min(r.max_backoff_s, r.backoff_s * 2.0 ** (attempt - 1))
        return base * random.uniform(0.5, 1.5)  # jitter: spread retries of many clients

    def _note_retry(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.upstream_retries, self.name, reason).inc()

    async def _status_error(self, resp: Response) -> UpstreamStatusError:
        try:
            raw = await resp.read()
        finally:
            resp.release()
        body: dict[str, Any] | None = None
        message = f"backend {self.name!r} answered HTTP {resp.status}"
        detail = None  # the upstream's words: to the client, not to the logs (they may quote the prompt)
        try:
            parsed = json.loads(raw.decode()) if raw else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            body = parsed
            err = parsed.get("error")
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                detail = err["message"]
            elif isinstance(err, str):
                detail = err
        return UpstreamStatusError(
            resp.status, message, body=body, retry_after=_retry_after(resp.header(b"retry-after")), detail=detail
        )

    # ----- Provider protocol -----------------------------------------------------------------------

    def _path(self, req: GatewayRequest) -> str:
        return "/chat/completions" if req.kind == "chat" else "/completions"

    def _limits(self, req: GatewayRequest) -> tuple[float, float | None]:
        """(absolute monotonic deadline, seconds for a timer of our own or None when the caller's
        deadline comes first and its timer covers us)."""
        total = self.config.timeouts.total_s
        now = time.monotonic()
        if req.deadline is not None and req.deadline - now <= total:
            return req.deadline, None
        return now + total, total

    async def generate(self, req: GatewayRequest) -> Completion:
        url = self.base_url + self._path(req)
        deadline, own = self._limits(req)
        try:
            async with asyncio.timeout(own):
                resp = await self._post(self._path(req), req, deadline)
                with upstream_errors(self.name, url):
                    try:
                        raw = await resp.read(self.config.max_response_bytes)
                    finally:
                        resp.release()
                    body = json.loads(raw.decode())
        except TimeoutError:
            raise RequestTimeout(
                f"backend {self.name!r} did not answer within {self.config.timeouts.total_s:g} s"
            ) from None
        if not isinstance(body, dict):
            raise UpstreamError(f"backend {self.name!r} answered a non-object JSON body")
        return Completion(body, raw)

    async def generate_stream(self, req: GatewayRequest) -> AsyncIterator[StreamChunk]:
        url = self.base_url + self._path(req)
        deadline, own = self._limits(req)
        try:
            async with asyncio.timeout(own):
                resp = await self._post(self._path(req), req, deadline)
        except TimeoutError:
            raise RequestTimeout(f"backend {self.name!r} did not answer in time") from None
        done = False
        try:
            with upstream_errors(self.name, url):
                # an event cut off by the end of the body is never complete (tail=False): dropped, not relayed
                async for line in resp.lines(self.config.max_response_bytes, tail=False):
                    if time.monotonic() > deadline:
                        raise RequestTimeout(f"backend {self.name!r}: the stream ran past its time limit")
                    if not line.startswith(b"data:"):
                        continue  # blank separators, comments, event:/id:/retry: fields
                    payload = line[5:].strip()
                    if payload == _DONE:
                        done = True
                        break
                    if b'"error"' in payload[:48]:  # OpenAI/vLLM error objects lead with it; chunks never do
                        self._raise_stream_error(payload)
                    # parsed here (a few µs) so that a malformed chunk ends the stream with an error instead
                    # of reaching the client; the raw bytes are still what is relayed
                    data = json.loads(payload.decode())  # str: no encoding sniffing
                    if not isinstance(data, dict):
                        raise UpstreamError(f"backend {self.name!r} sent a stream chunk that is not a JSON object")
                    yield StreamChunk(data, raw=payload)
            if not done:
                raise UpstreamError(f"backend {self.name!r} ended the stream without [DONE]")
        finally:
            if done:
                resp.release_at_end()  # back to the pool once the terminating chunk is in
            else:
                resp.close()  # drop the connection: the upstream sees the client leave at once

    def _raise_stream_error(self, payload: bytes) -> None:
        data = json.loads(payload.decode())
        if not isinstance(data, dict) or "choices" in data:
            return
        err = data.get("error")
        if err is None and data.get("object") != "error":
            return
        msg = err.get("message") if isinstance(err, dict) else (err or data.get("message"))
        raise UpstreamError(f"backend {self.name!r} failed mid-stream", detail=str(msg) if msg else None)

    async def _get_models(self, timeout: float, spare: bool = False) -> tuple[int, bytes]:
        pool = self._pool()
        try:
            resp = await pool.request(b"GET", "/models", self._headers, b"", timeout, spare=spare)
        except StaleConnection:  # the upstream dropped an idle connection as we used it: a GET may go again
            resp = await pool.request(b"GET", "/models", self._headers, b"", timeout, spare=spare, fresh=True)
        try:
            raw = await resp.read()
        finally:
            resp.release()
        return resp.status, raw

    async def list_models(self) -> list[ModelInfo]:
        if self.config.models is not None:
            return [ModelInfo(m, owned_by=self.name, provider=self.name) for m in self.config.models]
        url = self.base_url + "/models"
        with upstream_errors(self.name, url):
            async with asyncio.timeout(self.config.timeouts.connect_s + 5):
                status, raw = await self._get_models(5.0)
            if status != 200:
                raise UpstreamStatusError(status, f"backend {self.name!r}: GET /models answered HTTP {status}")
            body = json.loads(raw.decode())
        out = []
        for m in body.get("data") or () if isinstance(body, dict) else ():
            if isinstance(m, dict) and isinstance(m.get("id"), str):
                out.append(ModelInfo(m["id"], owned_by=str(m.get("owned_by") or self.name),
                                     created=int(m.get("created") or 0), provider=self.name))
        return out

    async def ready(self) -> bool:
        """A request got a 200 in the last couple of seconds, or the upstream answers GET /models (result
        cached as long). The probe never waits behind max_connections: a busy pool is not a dead upstream,
        so when every connection is in use it opens one of its own."""
        now = time.monotonic()
        if now - self._ok_at < _READY_CACHE_S:
            return True
        if now - self._ready_at < _READY_CACHE_S:
            return self._ready
        try:
            async with asyncio.timeout(2.0):
                status, _ = await self._get_models(2.0, spare=True)
            ok = status < 500
        except (OSError, TimeoutError, ValueError):
            ok = False
        self._ready, self._ready_at = ok, time.monotonic()
        return ok
