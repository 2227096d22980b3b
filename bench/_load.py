"""Closed-loop HTTP/1.1 keep-alive load generator (httptools + uvloop) that runs a plan of phases."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
from _servers import cpu_seconds
from _upstream import run_loop

__all__ = ["Phase", "PhaseResult", "Target", "main", "run_phase"]

# The first SSE event that carries generated text (proxies may send a role-only event first).
_FIRST_TOKEN = re.compile(rb'"content"\s*:\s*"[^"]')
_REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    """Where one benchmarked server listens."""

    name: str
    port: int
    path: str = "/v1/chat/completions"
    model: str = "bench-model"
    api_key: str = "sk-bench"
    pids: tuple[int, ...] = ()  # server processes whose CPU time each phase records
    extra_body: dict[str, Any] | None = None  # merged into every request body (e.g. a promptwire extension)


@dataclass(frozen=True)
class Phase:
    """One closed-loop run: `concurrency` connections, each sending requests back to back."""

    target: str
    stream: bool
    concurrency: int
    requests: int  # stop after this many requests in all ...
    max_s: float  # ... or after this many seconds, whichever comes first
    round: int = 0
    warmup: bool = False  # run, but leave out of the results


@dataclass
class PhaseResult:
    phase: Phase
    latency_ms: list[float] = field(default_factory=list)  # whole response (streaming: until [DONE])
    ttft_ms: list[float] = field(default_factory=list)  # streaming only: first generated token
    errors: int = 0
    error_sample: str = ""
    elapsed_s: float = 0.0
    cpu_s: float = 0.0  # CPU seconds the target's processes used during the phase

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.phase.target,
            "stream": self.phase.stream,
            "concurrency": self.phase.concurrency,
            "round": self.phase.round,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "errors": self.errors,
            "error_sample": self.error_sample,
            "elapsed_s": self.elapsed_s,
            "cpu_s": self.cpu_s,
        }


def build_request(target: Target, stream: bool) -> bytes:
    """A chat request of realistic size (a system prompt and a ~600-character user turn)."""
    body = {
        "model": target.model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {
                "role": "user",
                "content": "Summarise the following meeting notes. " + "Lorem ipsum dolor sit amet. " * 20,
            },
        ],
        "max_tokens": 64,
        "temperature": 0.0,
        "stream": stream,
    }
    body.update(target.extra_body or {})
    data = json.dumps(body).encode()
    head = (
        f"POST {target.path} HTTP/1.1\r\nhost: 127.0.0.1:{target.port}\r\n"
        f"content-type: application/json\r\naccept: */*\r\nauthorization: Bearer {target.api_key}\r\n"
        f"content-length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


class ClientConnection(asyncio.Protocol):
    """One keep-alive connection; `send` resolves to (status, first-token time, end time)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, float, float]] | None = None
        self.now = 0.0
        self.first_at = 0.0
        self.buf = b""
        self.watch_first = False
        self.keep_alive = True
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.now = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)
            if self.transport is not None:
                self.transport.close()

    def on_body(self, body: bytes) -> None:
        if self.watch_first:
            self.buf += body
            if _FIRST_TOKEN.search(self.buf):
                self.first_at = self.now
                self.watch_first = False
                self.buf = b""
        elif len(self.buf) < 600:  # keep the start of the body for error messages
            self.buf += body[:600]

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), self.first_at, self.now))

    def send(self, request: bytes, stream: bool) -> asyncio.Future[tuple[int, float, float]]:
        assert self.transport is not None
        self.waiter = self.loop.create_future()
        self.first_at = 0.0
        self.buf = b""
        self.watch_first = stream
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _connect(port: int) -> ClientConnection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(ClientConnection, "127.0.0.1", port)
    return proto


async def run_phase(target: Target, phase: Phase) -> PhaseResult:
    """Open `concurrency` connections, then let every one send requests back to back."""
    result = PhaseResult(phase)
    request = build_request(target, phase.stream)
    loop = asyncio.get_running_loop()
    conns = [await _connect(target.port) for _ in range(phase.concurrency)]
    remaining = [phase.requests]
    start = asyncio.Event()
    deadline = [0.0]

    async def worker(conn: ClientConnection) -> None:
        await start.wait()
        while remaining[0] > 0 and time.perf_counter() < deadline[0]:
            remaining[0] -= 1
            if conn.closed or not conn.keep_alive:
                conn.close()
                conn = await _connect(target.port)
            t0 = time.perf_counter()
            fut = conn.send(request, phase.stream)
            timer = loop.call_later(_REQUEST_TIMEOUT_S, _expire, fut)
            try:
                status, first, end = await fut
            except (ConnectionError, TimeoutError, httptools.HttpParserError) as exc:
                result.errors += 1
                result.error_sample = result.error_sample or repr(exc)
                conn.close()
                conn = await _connect(target.port)
                continue
            finally:
                timer.cancel()
            if status != 200:
                result.errors += 1
                result.error_sample = result.error_sample or f"HTTP {status}: {conn.buf[:300]!r}"
                continue
            result.latency_ms.append((end - t0) * 1000.0)
            if phase.stream:
                if first == 0.0:
                    result.errors += 1
                    result.error_sample = result.error_sample or "stream without a content delta"
                else:
                    result.ttft_ms.append((first - t0) * 1000.0)
        conn.close()

    tasks = [asyncio.create_task(worker(c)) for c in conns]
    cpu0 = cpu_seconds(list(target.pids))
    t_start = time.perf_counter()
    deadline[0] = t_start + phase.max_s
    start.set()
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - t_start
    result.cpu_s = cpu_seconds(list(target.pids)) - cpu0
    return result


def _expire(fut: asyncio.Future[tuple[int, float, float]]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError(f"no response within {_REQUEST_TIMEOUT_S} s"))


async def _run_plan(plan: dict[str, Any], out_path: str) -> None:
    targets = {t["name"]: Target(**{**t, "pids": tuple(t.get("pids", ()))}) for t in plan["targets"]}
    results: list[dict[str, Any]] = []
    for i, p in enumerate(plan["phases"]):
        phase = Phase(**p)
        res = await run_phase(targets[phase.target], phase)
        if not phase.warmup:
            results.append(res.to_json())
        print(
            f"[load] {i + 1}/{len(plan['phases'])} r{phase.round} {phase.target:<10} "
            f"{'stream' if phase.stream else 'plain':<6} c={phase.concurrency:<4} "
            f"n={len(res.latency_ms):<5} err={res.errors} {len(res.latency_ms) / max(res.elapsed_s, 1e-9):7.0f} req/s"
            + (f"  first error: {res.error_sample}" if res.errors else ""),
            file=sys.stderr,
            flush=True,
        )
        await asyncio.sleep(plan.get("pause_s", 0.2))  # let the servers settle between phases
    with open(out_path, "w") as f:
        json.dump({"results": results}, f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--plan", required=True, help="JSON file: targets and phases")
    ap.add_argument("--out", required=True, help="JSON file to write the latencies to")
    args = ap.parse_args(argv)
    with open(args.plan) as f:
        plan = json.load(f)
    run_loop(_run_plan(plan, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
