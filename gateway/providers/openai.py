"""Provider ``openai``: an upstream OpenAI-compatible server (vLLM, TGI, OpenAI) over pooled aiohttp."""

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

import aiohttp

from gateway.errors import PromptwireError, RequestTimeout, UpstreamError, UpstreamStatusError
from gateway.types import Completion, GatewayRequest, ModelInfo, StreamChunk

if TYPE_CHECKING:
    from gateway.config import BackendConfig
    from gateway.metrics import Metrics

__all__ = ["OpenAIProvider", "upstream_errors"]

logger = logging.getLogger(__name__)

_READY_CACHE_S = 2.0
_DONE = b"[DONE]"


@contextlib.contextmanager
def upstream_errors(backend: str, url: str) -> Iterator[None]:
    """Turn aiohttp / transport exceptions into gateway errors; the one place they are mapped."""
    try:
        yield
    except PromptwireError:
        raise
    except aiohttp.ClientConnectorError as e:
        raise UpstreamError(f"backend {backend!r}: cannot connect to {url}: {e.os_error.strerror or e}") from e
    except (aiohttp.ServerTimeoutError, TimeoutError) as e:
        raise RequestTimeout(f"backend {backend!r}: upstream timed out ({e or 'read timeout'})") from e
    except aiohttp.ClientPayloadError as e:
        raise UpstreamError(f"backend {backend!r}: upstream broke off the response: {e}") from e
    except (aiohttp.ClientError, OSError) as e:
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


def _retryable(e: BaseException) -> bool:
    """Transport failures worth another attempt: nothing of the response reached anyone yet."""
    if isinstance(e, aiohttp.ServerTimeoutError):
        return False  # the upstream may be busy with it; do not pile on
    return isinstance(e, aiohttp.ClientConnectionError)


class OpenAIProvider:
    """One upstream base URL; retries connect errors, 429 and 5xx before the first byte goes out."""

    decoders: frozenset[str] = frozenset()

    def __init__(self, name: str, config: BackendConfig, metrics: Metrics | None = None) -> None:
        assert config.base_url is not None  # checked by config validation
        self.name = name
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._metrics = metrics
        self._headers: dict[str, str] = {"content-type": "application/json", **config.headers}
        key = os.environ.get(config.api_key_env) if config.api_key_env else config.api_key
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        t = config.timeouts
        self._timeout = aiohttp.ClientTimeout(total=None, connect=t.connect_s, sock_read=t.read_s)
        self._session: aiohttp.ClientSession | None = None
        self._ready_at = 0.0
        self._ready = False

    def _client(self) -> aiohttp.ClientSession:
        # created lazily: aiohttp binds a session to the running loop
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.config.max_connections, keepalive_timeout=60, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=True,
                json_serialize=json.dumps, raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----- sending with retries --------------------------------------------------------------------

    async def _post(self, path: str, req: GatewayRequest) -> aiohttp.ClientResponse:
        """POST with retries; returns a 200 response whose body is not read yet."""
        url = self.base_url + path
        body = json.dumps(req.upstream_body(), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {**self._headers, "x-request-id": req.request_id}
        if req.stream:
            headers["accept-encoding"] = "identity"  # compressed SSE would be buffered
        r = self.config.retries
        session = self._client()
        attempt = 0
        while True:
            attempt += 1
            with upstream_errors(self.name, url):
                try:
                    resp = await session.post(url, data=body, headers=headers, timeout=self._read_timeout(req))
                except aiohttp.ClientError as e:
                    if not _retryable(e) or attempt >= r.max_attempts:
                        raise
                    delay = self._backoff(attempt)
                    self._note_retry("connect")
                    logger.info("request %s: backend %s: %s; retry %d in %.3fs", req.request_id, self.name,
                                type(e).__name__, attempt, delay)
                    await asyncio.sleep(delay)
                    continue
                if resp.status == 200:
                    return resp
                err = await self._status_error(resp)
            status = err.upstream_status
            if (status == 429 or status >= 500) and attempt < r.max_attempts:
                delay = self._backoff(attempt)
                if err.retry_after is not None:
                    if err.retry_after > r.max_retry_after_s:
                        raise err
                    delay = max(delay, err.retry_after)
                self._note_retry(str(status))
                logger.info("request %s: backend %s answered %d; retry %d in %.3fs", req.request_id,
                            self.name, status, attempt, delay)
                await asyncio.sleep(delay)
                continue
            raise err

    def _read_timeout(self, req: GatewayRequest) -> aiohttp.ClientTimeout:
        """The session's timeouts, with the read timeout cut to the request's deadline when nearer, so a
        silent upstream cannot hold a request past it."""
        if req.deadline is None:
            return self._timeout
        left = req.deadline - time.monotonic()
        if left >= self.config.timeouts.read_s:
            return self._timeout
        return aiohttp.ClientTimeout(total=None, connect=self.config.timeouts.connect_s, sock_read=max(0.001, left))

    def _backoff(self, attempt: int) -> float:
        r = self.config.retries
        base: float = min(r.max_backoff_s, r.backoff_s * 2.0 ** (attempt - 1))
        return base * random.uniform(0.5, 1.5)  # jitter: spread retries of many clients

    def _note_retry(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.upstream_retries, self.name, reason).inc()

    async def _status_error(self, resp: aiohttp.ClientResponse) -> UpstreamStatusError:
        try:
            raw = await resp.read()
        finally:
            resp.release()
        body: dict[str, Any] | None = None
        message = f"backend {self.name!r} answered HTTP {resp.status}"
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            body = parsed
            err = parsed.get("error")
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                message = f"{message}: {err['message']}"
            elif isinstance(err, str):
                message = f"{message}: {err}"
        return UpstreamStatusError(
            resp.status, message, body=body, retry_after=_retry_after(resp.headers.get("retry-after"))
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
        _, own = self._limits(req)
        try:
            async with asyncio.timeout(own):
                resp = await self._post(self._path(req), req)
                with upstream_errors(self.name, url):
                    try:
                        raw = await resp.read()
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
                resp = await self._post(self._path(req), req)
        except TimeoutError:
            raise RequestTimeout(f"backend {self.name!r} did not answer in time") from None
        done = False
        try:
            with upstream_errors(self.name, url):
                content = resp.content
                while True:
                    line = await content.readline()
                    if not line:
                        break
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
                    yield StreamChunk(raw=payload)
            if not done:
                raise UpstreamError(f"backend {self.name!r} ended the stream without [DONE]")
        finally:
            if done:
                resp.release()  # back to the pool
            else:
                resp.close()  # drop the connection: the upstream sees the client leave at once

    def _raise_stream_error(self, payload: bytes) -> None:
        data = json.loads(payload)
        if not isinstance(data, dict) or "choices" in data:
            return
        err = data.get("error")
        if err is None and data.get("object") != "error":
            return
        msg = err.get("message") if isinstance(err, dict) else (err or data.get("message"))
        raise UpstreamError(f"backend {self.name!r} failed mid-stream: {msg}")

    async def list_models(self) -> list[ModelInfo]:
        if self.config.models is not None:
            return [ModelInfo(m, owned_by=self.name, provider=self.name) for m in self.config.models]
        url = self.base_url + "/models"
        with upstream_errors(self.name, url):
            async with asyncio.timeout(self.config.timeouts.connect_s + 5):
                async with self._client().get(url, headers=self._headers) as resp:
                    if resp.status != 200:
                        raise await self._status_error(resp)
                    body = await resp.json(content_type=None)
        out = []
        for m in body.get("data") or ():
            if isinstance(m, dict) and isinstance(m.get("id"), str):
                out.append(ModelInfo(m["id"], owned_by=str(m.get("owned_by") or self.name),
                                     created=int(m.get("created") or 0), provider=self.name))
        return out

    async def ready(self) -> bool:
        """Upstream answers GET /models (result cached for a couple of seconds)."""
        now = time.monotonic()
        if now - self._ready_at < _READY_CACHE_S:
            return self._ready
        url = self.base_url + "/models"
        try:
            async with asyncio.timeout(2.0):
                async with self._client().get(url, headers=self._headers) as resp:
                    await resp.read()
                    ok = resp.status < 500
        except (aiohttp.ClientError, OSError, TimeoutError):
            ok = False
        self._ready, self._ready_at = ok, time.monotonic()
        return ok
