"""The ``promptwire`` command line: serve, config check, compress, compressor export, models make-tiny."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Generator, Sequence
from typing import Any
from urllib.parse import urlsplit

from gateway.config import ConfigError, GatewayConfig, load_raw, validate_config

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def _upstream_url(url: str) -> str:
    """Accept ``http://host:port`` as well as ``http://host:port/v1``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--upstream {url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
    if parts.path in ("", "/"):
        return url.rstrip("/") + "/v1"
    return url.rstrip("/")


def _serve_config(args: argparse.Namespace) -> GatewayConfig:
    raw, source = load_raw(args.config)
    if args.config is None and (args.upstream or args.model):
        # The embedded default's stand-in model gives way to the backends named on the command line.
        raw["backends"] = {}
        raw.pop("default_backend", None)
    server = raw.setdefault("server", {})
    if not isinstance(server, dict):
        raise ConfigError(f"{source}: server: must be a mapping")
    if args.host is not None:
        server["host"] = args.host
    if args.http_port is not None:
        server["http_port"] = args.http_port
    if args.no_grpc:
        server["grpc_port"] = None
    elif args.grpc_port is not None:
        server["grpc_port"] = args.grpc_port
    if args.log_level is not None:
        server["log_level"] = args.log_level
    if args.upstream:
        backends = raw.get("backends") or {}
        if not isinstance(backends, dict):
            raise ConfigError(f"{source}: backends: must be a mapping")
        first = None
        for i, url in enumerate(args.upstream):
            name = "upstream" if i == 0 else f"upstream{i + 1}"
            backends[name] = {"type": "openai", "base_url": _upstream_url(url)}
            first = first or name
        raw["backends"] = backends
        raw.setdefault("default_backend", first)
    if args.model:
        from gateway.providers import PROVIDERS

        if "local" not in PROVIDERS:
            raise ConfigError(
                "--model needs the local provider, which this build of promptwire does not include yet; "
                "serve an OpenAI-compatible upstream instead with --upstream http://HOST:PORT/v1"
            )
        backends = raw.setdefault("backends", {})
        for i, path in enumerate(args.model):
            backends[f"local{i + 1}" if i else "local"] = {"type": "local", "model_path": path}
    return validate_config(raw, source if not (args.upstream or args.model) else f"{source} + command line")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if os.environ.get(_WORKER_ENV):
        # One of several worker processes: the kernel spreads connections over all of them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def _runner() -> Generator[asyncio.Runner, None, None]:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        runner = asyncio.Runner()
    with runner:
        yield runner


async def _serve(config: GatewayConfig) -> int:
    import uvicorn

    from gateway.http_app import create_app
    from gateway.service import Gateway

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield  # SIGTERM/SIGINT are ours: readiness first, drain, then stop uvicorn

    gateway = Gateway(config)
    try:
        await gateway.start()
        # Everything loaded so far lives as long as the process: keep it out of the collector's
        # generations, or each full collection walks it and stalls every request in flight.
        gc.collect()
        gc.freeze()
    except Exception as e:  # a backend or stage that cannot be built: say why and exit
        logger.error("cannot start: %s", getattr(e, "message", None) or e, extra={"event": "start_failed"})
        await gateway.aclose()
        return 2
    app = create_app(gateway)
    sc = config.server
    sock = _bind(sc.host, sc.http_port)
    http_port = sock.getsockname()[1]
    uv_config = uvicorn.Config(
        app, lifespan="off", http="httptools", loop="none", access_log=False, log_config=None,
        timeout_keep_alive=75, timeout_graceful_shutdown=max(1, int(sc.shutdown_grace_s)), server_header=False,
    )
    server = _Server(uv_config)
    grpc_handle: Any = None
    if sc.grpc_port is not None:
        try:
            from gateway.grpc_server import start_grpc_server
        except ImportError as e:
            logger.warning("gRPC front end not available (%s); serving HTTP only", e)
        else:
            grpc_handle = await start_grpc_server(
                gateway, sc.host, sc.grpc_port, reuse_port=bool(os.environ.get(_WORKER_ENV))
            )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serve_task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serve_task.done():
        await asyncio.sleep(0.01)
    if serve_task.done():
        await serve_task
        return 1
    logger.info(
        "promptwire serving http://%s:%d%s", sc.host, http_port,
        f" and grpc {sc.host}:{grpc_handle.port}" if grpc_handle is not None else "",
        extra={"event": "serving", "http_port": http_port,
               "grpc_port": grpc_handle.port if grpc_handle is not None else None,
               "backends": sorted(config.backends)},
    )
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({serve_task, stopper}, return_when=asyncio.FIRST_COMPLETED)

    # graceful shutdown: not ready -> finish in-flight requests within the grace -> stop
    logger.info("shutting down: %d request(s) in flight, grace %.1fs", gateway.in_flight, sc.shutdown_grace_s,
                extra={"event": "shutdown"})
    gateway.begin_shutdown()
    if grpc_handle is not None:
        await grpc_handle.set_not_serving()
    drained = await gateway.drain(sc.shutdown_grace_s)
    if not drained:
        logger.warning("grace period over with %d request(s) still in flight; closing them", gateway.in_flight)
    server.should_exit = True
    server.force_exit = not drained
    if grpc_handle is not None:
        await grpc_handle.stop(0.5 if drained else 0)
    with contextlib.suppress(asyncio.CancelledError):
        await serve_task
    stopper.cancel()
    await gateway.aclose()
    logger.info("stopped", extra={"event": "stopped", "drained": drained})
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.logs import configure_logging

    try:
        config = _serve_config(args)
    except ConfigError as e:
        print(f"promptwire: config error:\n{e}", file=sys.stderr)
        return 2
    configure_logging(config.server.log_level)
    workers = args.workers if args.workers is not None else config.server.workers
    if workers > 1 and not os.environ.get(_WORKER_ENV):
        return _run_workers(args, config, workers)
    with _runner() as runner:
        return runner.run(_serve(config))


_WORKER_ENV = "PROMPTWIRE_WORKER_OF"
"""Set in worker processes started by ``serve --workers N`` (their ports are shared with SO_REUSEPORT)."""


def _run_workers(args: argparse.Namespace, config: GatewayConfig, workers: int) -> int:
    """Start ``workers`` serve processes on the same ports; forward SIGTERM/SIGINT; exit with the worst code."""
    sc = config.server
    if sc.http_port == 0 or sc.grpc_port == 0:
        logger.error("--workers needs fixed ports (not 0): every worker binds the same ones")
        return 2
    argv = list(args.argv)
    env = {**os.environ, _WORKER_ENV: str(os.getpid())}
    procs = [subprocess.Popen([sys.executable, "-m", "gateway.cli", *argv], env=env) for _ in range(workers)]
    logger.info("started %d worker processes on http port %d", workers, sc.http_port,
                extra={"event": "workers", "pids": [p.pid for p in procs]})

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    return max(codes, key=abs)


def _cmd_config_check(args: argparse.Namespace) -> int:
    try:
        raw, source = load_raw(args.file)
        config = validate_config(raw, source)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(
        f"{args.file}: OK ({len(config.backends)} backend(s), {len(config.models)} model route(s), "
        f"{len(config.auth.keys)} API key(s))"
    )
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The parser and its subparsers object (other packages add their commands to it)."""
    parser = argparse.ArgumentParser(prog="promptwire", description="promptwire: inference-time prompt middleware")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway (HTTP + gRPC)")
    serve.add_argument("--config", metavar="FILE", help="YAML config (default: the embedded offline default)")
    serve.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    serve.add_argument("--http-port", type=int, metavar="P", help="HTTP port (0: any free port)")
    serve.add_argument("--grpc-port", type=int, metavar="Q", help="gRPC port (0: any free port)")
    serve.add_argument("--no-grpc", action="store_true", help="serve HTTP only")
    serve.add_argument("--upstream", action="append", metavar="URL",
                       help="OpenAI-compatible upstream, e.g. http://127.0.0.1:8000/v1; proxies all its models "
                            "(repeatable; the first is the default for unknown models)")
    serve.add_argument("--model", action="append", metavar="PATH_OR_ID",
                       help="serve a local model in-process (needs the local provider)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--workers", type=int, metavar="N",
                       help="serve with N processes sharing the ports (SO_REUSEPORT); default from config: 1. "
                            "Each loads its own local models, so use it for proxying")
    serve.set_defaults(func=_cmd_serve)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = config_sub.add_parser("check", help="validate a config file (exit 1 with the errors)")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=_cmd_config_check)

    # Commands of the other packages, added explicitly (imports stay light until a command runs).
    from compressors.llmlingua2.cli import register as register_compressor
    from gateway.cli_models import register as register_models

    register_compressor(sub)
    register_models(sub)
    return parser, sub


def main(argv: Sequence[str] | None = None) -> int:
    parser, _sub = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --workers re-runs in each worker
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    rc: int = func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
