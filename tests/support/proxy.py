"""A running promptwire HTTP proxy (real uvicorn on 127.0.0.1, port 0) in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
import openai
import uvicorn
import uvloop

from gateway.config import GatewayConfig, validate_config
from gateway.core.gateway import Gateway
from gateway.http.app import create_app
from tests.support.wait import BOUND_S

__all__ = ["RunningProxy", "upstream_config"]


class RunningProxy:
    """``with RunningProxy(config) as p:`` serves ``p.url`` (…/v1) until the block ends."""

    def __init__(self, config: GatewayConfig | Mapping[str, Any]):
        self.config = config if isinstance(config, GatewayConfig) else validate_config(dict(config), "<test config>")
        self.gateway: Gateway | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + "/v1"

    def client(self, api_key: str = "unused", **kw: Any) -> openai.OpenAI:
        """An OpenAI SDK client on this proxy (no SDK retries unless asked). Close it (``with``)."""
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 20)
        return openai.OpenAI(base_url=self.url, api_key=api_key, **kw)

    def http(self, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 20)
        return httpx.Client(base_url=self.base, **kw)

    def run(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the proxy's loop (e.g. to read gateway state safely)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _main(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self.gateway = Gateway(self.config)
        try:
            await self.gateway.start()
            config = uvicorn.Config(create_app(self.gateway), lifespan="off", http="httptools", loop="none",
                                    access_log=False, log_config=None, timeout_graceful_shutdown=1)
            self._server = uvicorn.Server(config)
            await self._server.serve(sockets=[sock])
        finally:
            await self.gateway.aclose()

    def _thread_main(self, sock: socket.socket) -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as `promptwire serve` runs
                runner.run(self._main(sock))
        except BaseException as e:  # reported by start()
            self._error = e

    def start(self) -> RunningProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._thread_main, args=(sock,), daemon=True,
                                        name=f"proxy-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + BOUND_S  # a bound on a hang, not a timer: start is waited for as a state
        while self._server is None or not self._server.started:
            if self._error is not None:
                raise RuntimeError(f"proxy failed to start: {self._error!r}") from self._error
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("proxy did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
            self._server = None

    def __enter__(self) -> RunningProxy:
        return self if self._thread is not None else self.start()  # ``with RunningProxy(c).start()`` too

    def __exit__(self, *exc: object) -> None:
        self.stop()


def upstream_config(*urls: str, **extra: Any) -> dict[str, Any]:
    """A config dict with one openai backend per URL (named up1, up2, ...), plus ``extra`` sections."""
    backends = {f"up{i + 1}": {"type": "openai", "base_url": u} for i, u in enumerate(urls)}
    return {"server": {"grpc_port": None}, "backends": backends, **extra}
