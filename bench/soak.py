"""Soak: ≥ 10,000 mixed requests at a fixed concurrency through one gateway process; does it leak?

    .venv/bin/python bench/soak.py                       # 10,000 requests, concurrency 16
    .venv/bin/python bench/soak.py --requests 50000 --json soak.json

The gateway runs in a child process of its own (``promptwire`` code, uvicorn, the compress stage on a tiny
locally built LLMLingua-2 classifier) with one extra route, ``/_soak/stats``, reporting its RSS, open
descriptors, live asyncio tasks and in-flight requests. Its backends are the test suite's fake upstream
(answers) and the fault-injecting upstream (a model named ``fault-<mode>`` picks the fault). The mix:
whole and streamed answers with the compress stage on, clients that cancel mid-stream, and every fast
fault mode. Each request has an expected outcome; anything else is an unexpected error, and a request
that outlives its time limit + 1 s is hung.

Reported: RSS at start, after warm-up and at the end; descriptors and tasks at idle after warm-up and at
the end; hung and unexpected counts; throughput. Targets: RSS growth after warm-up < 10%, descriptors
(less the idle keep-alive connections the upstream pool keeps) and tasks back to their idle baseline,
zero hung, zero unexpected (the exit status says whether all held).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from tqdm import tqdm  # noqa: E402

REQUEST_S = 3.0  # limits.request_timeout_s of the soak gateway
HANG_S = REQUEST_S + 1.0  # a request not over by then is hung
PROMPT = ("Please summarise the following meeting notes for the team. The quarterly review covered revenue, "
          "hiring plans, the office move and the new security policy; action items were assigned. ") * 3


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix: its share, body and the outcome expected."""

    name: str
    weight: int
    model: str
    stream: bool
    expect: tuple[int, ...]
    """Accepted statuses (for streams: 200 plus, when ``stream_error``, an error event)."""
    stream_error: bool = False
    cancel: bool = False
    """Streams only: the client leaves after the first chunk."""


KINDS = (
    Kind("whole", 30, "soak", False, (200,)),
    Kind("stream", 25, "soak", True, (200,)),
    Kind("cancel", 10, "fault-hold", True, (200,), cancel=True),
    Kind("500", 5, "fault-500", False, (502,)),
    Kind("503_stream", 4, "fault-503", True, (502,)),
    Kind("429", 4, "fault-429", False, (429,)),
    Kind("reset_first_byte", 4, "fault-reset_before_first_byte", False, (502,)),
    Kind("reset_mid_stream", 4, "fault-reset_mid_stream", True, (200,), stream_error=True),
    Kind("truncated_sse", 4, "fault-truncated_sse", True, (200,), stream_error=True),
    Kind("invalid_json", 4, "fault-invalid_json", True, (200,), stream_error=True),
    Kind("oversized", 3, "fault-oversized", False, (502,)),
    Kind("slow_headers", 3, "fault-slow_headers", False, (504,)),
)


def _config(good: str, faulty: str, model_dir: str) -> dict[str, Any]:
    fault_models = sorted({k.model for k in KINDS if k.model.startswith("fault-")})
    return {
        "server": {"grpc_port": None},
        "limits": {"request_timeout_s": REQUEST_S, "max_in_flight": 4096},
        "backends": {
            "good": {"type": "openai", "base_url": good, "models": ["soak"]},
            "faulty": {"type": "openai", "base_url": faulty, "models": fault_models, "max_response_bytes": 65536,
                       "timeouts": {"connect_s": 1, "read_s": 1.0, "total_s": 5},
                       "retries": {"max_attempts": 2, "backoff_s": 0.001, "max_backoff_s": 0.002}},
        },
        "stages": {"compress": {"model": model_dir}},
        "models": [{"match": "soak", "stages": [{"name": "compress", "options": {"rate": 0.5}}]}],
    }


# ----- the gateway child process ----------------------------------------------------------------------


def serve_gateway(config_path: str, port_file: str) -> None:
    """The child: the gateway with /_soak/stats, on a free port written to ``port_file``; its log (WARNING
    and up, JSON lines) goes to ``port_file``.log."""
    import gc
    import logging

    from gateway.observe.logs import JsonFormatter

    handler = logging.FileHandler(port_file + ".log")
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)

    import psutil
    import uvicorn
    import uvloop
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from gateway.config import load_config
    from gateway.core.gateway import Gateway
    from gateway.http.app import create_app

    proc = psutil.Process()

    async def main() -> None:
        gateway = Gateway(load_config(config_path, env={}))
        await gateway.start()

        async def stats(request: Request) -> JSONResponse:
            gc.collect()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            pooled = sum(p._pool_.open_connections for p in gateway.router.providers.values()
                         if getattr(p, "_pool_", None) is not None)
            return JSONResponse({"rss": proc.memory_info().rss, "fds": proc.num_fds(), "tasks": len(tasks),
                                 "in_flight": gateway.in_flight, "pooled": pooled})

        app = create_app(gateway, extra_routes=[Route("/_soak/stats", stats)])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, lifespan="off", http="httptools", loop="none", access_log=False,
                                log_config=None, timeout_keep_alive=75)
        server = uvicorn.Server(config)
        Path(port_file).write_text(str(sock.getsockname()[1]))
        try:
            await server.serve(sockets=[sock])
        finally:
            await gateway.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def _start_gateway(config: dict[str, Any], work: Path) -> tuple[subprocess.Popen[bytes], str]:
    cfg = work / "soak.json"
    cfg.write_text(json.dumps(config))
    port_file = work / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTWIRE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, __file__, "--serve-gateway", str(cfg), str(port_file)], env=env)
    deadline = time.monotonic() + 120
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the soak gateway did not start")
        time.sleep(0.1)
    base = f"http://127.0.0.1:{port_file.read_text()}"
    while True:  # ready once /healthz answers
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)


# ----- the load ---------------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.by_kind: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.hung = 0
        self.examples: list[str] = []

    def bad(self, kind: Kind, what: str) -> None:
        self.unexpected[kind.name] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind.name}: {what}")


async def _one(client: httpx.AsyncClient, kind: Kind, tally: Tally) -> None:
    body = {"model": kind.model, "messages": [{"role": "user", "content": PROMPT}], "stream": kind.stream}
    tally.by_kind[kind.name] += 1
    try:
        async with asyncio.timeout(HANG_S):
            if not kind.stream:
                r = await client.post("/v1/chat/completions", json=body)
                if r.status_code not in kind.expect:
                    tally.bad(kind, f"status {r.status_code}: {r.text[:200]}")
                return
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code not in kind.expect:
                    tally.bad(kind, f"status {r.status_code}")
                    return
                if r.status_code != 200:
                    return
                error = done = False
                async for line in r.aiter_lines():
                    if kind.cancel and line.startswith("data: {"):
                        return  # leave after the first chunk: the connection is closed on the way out
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith('data: {"error"'):
                        error = True
                if kind.stream_error and not (error and not done):
                    tally.bad(kind, f"expected an error event (error={error}, done={done})")
                elif not kind.stream_error and not done:
                    tally.bad(kind, "stream ended without [DONE]")
    except TimeoutError:
        tally.hung += 1
        if len(tally.examples) < 10:
            tally.examples.append(f"{kind.name}: hung")
    except httpx.HTTPError as e:
        tally.bad(kind, f"{type(e).__name__}: {e}")


async def _run(base: str, n: int, concurrency: int, seed: int, tally: Tally, desc: str) -> float:
    rng = random.Random(seed)
    kinds = rng.choices(KINDS, weights=[k.weight for k in KINDS], k=n)
    queue: asyncio.Queue[Kind] = asyncio.Queue()
    for k in kinds:
        queue.put_nowait(k)
    bar = tqdm(total=n, desc=desc, unit="req", leave=False)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            await _one(client, queue.get_nowait(), tally)
            bar.update()

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=HANG_S + 5, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    bar.close()
    return time.perf_counter() - t0


def _stats(base: str) -> dict[str, Any]:
    """The gateway's numbers once it is idle (no request in flight)."""
    for _ in range(100):
        s: dict[str, Any] = httpx.get(base + "/_soak/stats", timeout=10).json()
        if s["in_flight"] == 0:
            return s
        time.sleep(0.1)
    return s


def _model_dir(work: Path) -> str:
    """A tiny LLMLingua-2-style classifier, built and exported once (cached under $PROMPTWIRE_CACHE_DIR)."""
    from compressors.llmlingua2.export import export, is_exported
    from compressors.llmlingua2.tiny import build_tiny_bert

    root = Path(os.environ.get("PROMPTWIRE_CACHE_DIR") or Path.home() / ".cache" / "promptwire") / "soak"
    out = root / "tiny-bert-onnx"
    if not is_exported(out):
        ckpt = build_tiny_bert(root / "tiny-bert")
        export(ckpt, out)
    return str(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=1_000, help="requests before the baseline is taken")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--serve-gateway", nargs=2, metavar=("CONFIG", "PORT_FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_gateway:
        serve_gateway(*args.serve_gateway)
        return 0

    from tests.support.faults import FaultServer
    from tests.support.upstream import UpstreamServer

    with tempfile.TemporaryDirectory(prefix="promptwire-soak-") as tmp, UpstreamServer() as good, \
            FaultServer(slow_s=5.0) as faulty:
        good.knobs.models = ["soak"]
        work = Path(tmp)
        proc, base = _start_gateway(_config(good.url, faulty.url, _model_dir(work)), work)
        try:
            start = _stats(base)
            tally = Tally()
            t_warm = asyncio.run(_run(base, args.warmup, args.concurrency, args.seed, tally, "warm-up"))
            warm = _stats(base)
            t_main = asyncio.run(_run(base, args.requests, args.concurrency, args.seed + 1, tally, "soak"))
            end = _stats(base)
        finally:
            proc.terminate()
            proc.wait(30)
        # an error the gateway logged (an unexpected exception: a 500) counts as unexpected too
        log = work / "port.log"
        errors = [ln for ln in log.read_text().splitlines() if '"level": "error"' in ln] if log.exists() else []
        for ln in errors:
            tally.unexpected["gateway_error_log"] += 1
            if len(tally.examples) < 10:
                tally.examples.append(f"gateway error: {ln[:300]}")
    total = args.warmup + args.requests
    growth = (end["rss"] - warm["rss"]) / warm["rss"]
    report = {
        "requests": total, "concurrency": args.concurrency, "seconds": round(t_warm + t_main, 1),
        "req_per_s": round(args.requests / t_main, 1),
        "rss_mib": {"start": round(start["rss"] / 2**20, 1), "after_warmup": round(warm["rss"] / 2**20, 1),
                    "end": round(end["rss"] / 2**20, 1)},
        "rss_growth_after_warmup_pct": round(100 * growth, 2),
        "fds": {"after_warmup": warm["fds"], "end": end["fds"]},
        "pooled_upstream_connections": {"after_warmup": warm["pooled"], "end": end["pooled"]},
        "tasks": {"after_warmup": warm["tasks"], "end": end["tasks"]},
        "hung": tally.hung, "unexpected": sum(tally.unexpected.values()), "unexpected_by_kind": dict(tally.unexpected),
        "mix": dict(tally.by_kind), "examples": tally.examples, "load_average": os.getloadavg(),
    }
    checks = {
        "rss growth after warm-up < 10%": growth < 0.10,
        # idle keep-alive connections to the upstreams are the pool's to keep (bounded by max_connections)
        "descriptors back to baseline": end["fds"] - end["pooled"] <= warm["fds"] - warm["pooled"],
        "tasks back to baseline": end["tasks"] <= warm["tasks"],
        "zero hung": tally.hung == 0,
        "zero unexpected": not tally.unexpected,
    }
    report["targets"] = checks
    print(f"soak: {total} requests ({args.warmup} warm-up) at concurrency {args.concurrency} in "
          f"{report['seconds']} s ({report['req_per_s']} req/s after warm-up); load average "
          f"{' '.join(f'{x:.2f}' for x in report['load_average'])}")
    print(f"  RSS MiB: start {report['rss_mib']['start']}, after warm-up {report['rss_mib']['after_warmup']}, "
          f"end {report['rss_mib']['end']} ({report['rss_growth_after_warmup_pct']:+.2f}%)")
    print(f"  open descriptors: {warm['fds']} -> {end['fds']} (of which idle pooled upstream connections: "
          f"{warm['pooled']} -> {end['pooled']}); live asyncio tasks: {warm['tasks']} -> {end['tasks']}")
    print(f"  hung: {tally.hung}; unexpected: {report['unexpected']} {dict(tally.unexpected) or ''}")
    print(f"  mix: {dict(sorted(tally.by_kind.items()))}")
    for e in tally.examples:
        print(f"  e.g. {e}")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
