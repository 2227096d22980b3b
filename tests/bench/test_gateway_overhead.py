"""The gateway-overhead benchmark's harness: fixed-latency upstream, load generator, added-latency maths."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # bench/ is a folder of scripts, not a package

import _load  # noqa: E402
import _upstream  # noqa: E402
import gateway_overhead  # noqa: E402

LATENCY_MS = 15.0


async def _start_upstream() -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _upstream.UpstreamProtocol(LATENCY_MS / 1000.0, 0.002), "127.0.0.1", 0
    )


async def test_upstream_speaks_openai_wire_format() -> None:
    server = await _start_upstream()
    port = server.sockets[0].getsockname()[1]
    try:
        body = json.dumps({"model": "m", "messages": [], "stream": True}).encode()

        def fetch(data: bytes) -> tuple[str, bytes]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=data)
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.headers["content-type"], resp.read()

        ctype, raw = await asyncio.to_thread(fetch, body)
        assert ctype == "text/event-stream"
        events = [e for e in raw.decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == "".join(_upstream.STREAM_PIECES)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

        ctype, raw = await asyncio.to_thread(fetch, json.dumps({"model": "m", "messages": []}).encode())
        assert ctype == "application/json"
        assert json.loads(raw)["choices"][0]["message"]["content"] == _upstream.CONTENT
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("stream", [False, True])
async def test_load_phase_measures_the_upstream_latency(stream: bool) -> None:
    server = await _start_upstream()
    port = server.sockets[0].getsockname()[1]
    try:
        phase = _load.Phase("direct", stream, concurrency=4, requests=24, max_s=10.0)
        res = await _load.run_phase(_load.Target("direct", port), phase)
    finally:
        server.close()
        await server.wait_closed()
    assert res.errors == 0, res.error_sample
    assert len(res.latency_ms) == 24
    assert min(res.latency_ms) >= LATENCY_MS - 0.5  # the upstream never answers early
    if stream:
        assert len(res.ttft_ms) == 24
        # the first token arrives with the first chunk, the rest of the stream 5 x 2 ms later (a starved
        # client may read several chunks at once, hence <=)
        assert all(
            LATENCY_MS - 0.5 <= t <= total for t, total in zip(res.ttft_ms, res.latency_ms, strict=True)
        )
    else:
        assert res.ttft_ms == []


def _result(target: str, rnd: int, latencies: list[float], stream: bool = False) -> dict[str, Any]:
    return {
        "target": target,
        "stream": stream,
        "concurrency": 32,
        "round": rnd,
        "latency_ms": latencies,
        "ttft_ms": latencies if stream else [],
        "errors": 0,
        "error_sample": "",
        "elapsed_s": 1.0,
        "cpu_s": 0.5,
    }


def test_added_latency_is_the_difference_of_percentiles_and_median_of_rounds() -> None:
    direct = [20.0 + i / 100 for i in range(100)]  # p50 20.495
    results = []
    for rnd, extra in enumerate((1.0, 3.0, 2.0)):
        results.append(_result("direct", rnd, direct))
        results.append(_result("promptwire", rnd, [x + extra for x in direct]))
        results.append(_result("litellm", rnd, [x + 10 * extra for x in direct]))
    summary = gateway_overhead.analyse(results, ["direct", "promptwire", "litellm"])
    pw = next(r for r in summary["rows"] if r["target"] == "promptwire")
    lt = next(r for r in summary["rows"] if r["target"] == "litellm")
    assert pw["add50"] == pytest.approx(2.0)  # median of 1, 3, 2
    assert (pw["add50_min"], pw["add50_max"]) == (pytest.approx(1.0), pytest.approx(3.0))
    assert pw["add99"] == pytest.approx(2.0)
    assert lt["add50"] == pytest.approx(20.0)
    assert summary["ratio"]["plain@32"] == pytest.approx(0.1)
    assert pw["rps"] == pytest.approx(100.0)
    assert pw["cpu_ms"] == pytest.approx(5.0)
    assert "MISSED" in " ".join(gateway_overhead.verdicts(summary))  # 2 ms added misses the 1 ms target


def test_plan_alternates_targets_and_rotates_who_goes_first() -> None:
    plan = gateway_overhead.make_plan(["direct", "promptwire", "litellm"], [1, 32], rounds=2, quick=True)
    measured = [p for p in plan if not p.get("warmup")]
    assert len(measured) == 2 * 2 * 2 * 3  # rounds x modes x concurrencies x targets
    groups = [measured[i : i + 3] for i in range(0, len(measured), 3)]
    for g in groups:
        assert sorted(p["target"] for p in g) == ["direct", "litellm", "promptwire"]
        assert len({(p["stream"], p["concurrency"], p["round"]) for p in g}) == 1
    assert len({g[0]["target"] for g in groups}) == 3  # every target goes first sometimes
