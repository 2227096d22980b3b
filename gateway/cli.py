"""The ``promptwire`` command line: serve, config check, compress, compressor export, models make-tiny."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Generator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.config import (
    EMBEDDED_SOURCE,
    ConfigError,
    GatewayConfig,
    Origins,
    apply_env,
    default_config_text,
    load_raw,
    parse_raw,
    validate_config,
)
from gateway.observe.metrics import MULTIPROC_ENV, multiprocess
from gateway.startup import StartupError, bind_socket, model_source_problems, port_problem

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def _upstream_url(url: str) -> str:
    """Accept ``http://host:port`` as well as ``http://host:port/v1``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--upstream {url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/v1")
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") or "/v1"))


_UPSTREAM_KEY_DEFAULT_ENV = "OPENAI_API_KEY"
"""Read for ``--upstream`` backends that have no key configured (and no --upstream-key-env)."""


def _serve_config(args: argparse.Namespace, env: dict[str, str] | None = None) -> tuple[GatewayConfig, str]:
    """The config ``serve`` runs with: the file (or embedded default), PROMPTWIRE_* overrides, then the
    command line on top. Returns it and the name of its source (for messages)."""
    env = dict(os.environ) if env is None else env
    origins: Origins = {}
    if args.config is None and (args.upstream or args.model):
        # The embedded default's stand-in model gives way to the backends named on the command line;
        # environment overrides still apply (to those backends too).
        source = EMBEDDED_SOURCE
        raw = parse_raw(default_config_text(), source)
        raw.pop("backends", None)
        raw.pop("default_backend", None)
        # and so does its stand-in compressor: random weights must not compress real traffic
        raw.pop("stages", None)
        raw.pop("default_stages", None)
        apply_env(raw, env, origins)
    else:
        raw, source = load_raw(args.config, env, origins)
    server = raw.setdefault("server", {})
    if server is None:
        server = raw["server"] = {}
    if not isinstance(server, dict):
        raise ConfigError(f"{source}: server: must be a mapping")
    for opt, key, value in (
        ("--host", "host", args.host),
        ("--http-port", "http_port", args.http_port),
        ("--grpc-port", "grpc_port", None if args.no_grpc else args.grpc_port),
        ("--health-port", "health_port", args.health_port),
        ("--log-level", "log_level", args.log_level),
    ):
        if value is not None:
            server[key] = value
            origins[("server", key)] = f"command line {opt}"
    if args.no_grpc:
        server["grpc_port"] = None
        origins[("server", "grpc_port")] = "command line --no-grpc"
    if args.upstream_key_env is not None and not args.upstream:
        raise ConfigError("--upstream-key-env goes with --upstream (the key for those backends)")
    if args.upstream:
        backends = _cli_backends(raw, source)
        first = None
        for i, url in enumerate(args.upstream):
            name = "upstream" if i == 0 else f"upstream{i + 1}"
            backend = _cli_backend(backends, name, source, origins)
            backend["type"] = "openai"
            backend["base_url"] = _upstream_url(url)
            origins[("backends", name, "type")] = origins[("backends", name, "base_url")] = "command line --upstream"
            _upstream_key(backend, name, args.upstream_key_env, env, origins)
            first = first or name
        if raw.get("default_backend") is None:
            raw["default_backend"] = first
            origins[("default_backend",)] = "command line --upstream"
    if args.model:
        backends = _cli_backends(raw, source)
        for i, path in enumerate(args.model):
            name = f"local{i + 1}" if i else "local"
            backend = _cli_backend(backends, name, source, origins)
            backend["type"] = "local"
            backend["model_path"] = path
            origins[("backends", name, "type")] = origins[("backends", name, "model_path")] = "command line --model"
    return validate_config(raw, source, origins), source


def _cli_backends(raw: dict[str, Any], source: str) -> dict[str, Any]:
    backends = raw.get("backends")
    if backends is None:
        backends = raw["backends"] = {}
    if not isinstance(backends, dict):
        raise ConfigError(f"{source}: backends: must be a mapping")
    return backends


def _cli_backend(backends: dict[str, Any], name: str, source: str, origins: Origins) -> dict[str, Any]:
    """Backend ``name`` for a command-line option: settings from the file and environment are kept
    (timeouts, keys, headers...), the option sets its type and address on top."""
    backend = backends.get(name)
    if backend is None:
        backend = backends[name] = {}
        origins.setdefault(("backends", name), "command line")
    if not isinstance(backend, dict):
        where = origins.get(("backends", name), source)
        raise ConfigError(f"{where}: backends.{name}: must be a mapping (the command line adds to it)")
    return backend


def _upstream_key(backend: dict[str, Any], name: str, key_env: str | None, env: dict[str, str],
                  origins: Origins) -> None:
    """The upstream key of an ``--upstream`` backend: --upstream-key-env VAR (an empty VAR: none); else
    what the config or environment set; else $OPENAI_API_KEY when set. The key itself is never logged."""
    if key_env is not None:
        if key_env == "":
            backend.pop("api_key", None)
            backend.pop("api_key_env", None)
            return
        if not env.get(key_env):
            raise ConfigError(f"--upstream-key-env {key_env}: the environment variable {key_env} is not set")
        backend.pop("api_key", None)
        backend["api_key_env"] = key_env
        origins[("backends", name, "api_key_env")] = "command line --upstream-key-env"
        return
    if backend.get("api_key") or backend.get("api_key_env"):
        return
    if env.get(_UPSTREAM_KEY_DEFAULT_ENV):
        url = str(backend.get("base_url") or "")
        if not _private_channel(url):
            # never send an OpenAI key in clear text to another machine because it happened to be set
            logger.warning("backend %s: $%s is set but not sent to %s (plain http to a non-local host); "
                           "pass --upstream-key-env %s to send it anyway", name, _UPSTREAM_KEY_DEFAULT_ENV,
                           urlsplit(url).hostname, _UPSTREAM_KEY_DEFAULT_ENV)
            return
        backend["api_key_env"] = _UPSTREAM_KEY_DEFAULT_ENV
        origins[("backends", name, "api_key_env")] = f"command line --upstream (${_UPSTREAM_KEY_DEFAULT_ENV})"


def _private_channel(url: str) -> bool:
    """https, or plain http to this machine: where a default key may go without being asked for."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _runner() -> Generator[asyncio.Runner, None, None]:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        runner = asyncio.Runner()
    with runner:
        yield runner


async def _serve(config: GatewayConfig, source: str = "<config>") -> int:
    import uvicorn

    from gateway.core.gateway import Gateway
    from gateway.http.app import create_app
    from gateway.observe.health import HealthListener, HealthStatus, QuietServer

    sc = config.server
    gateway = Gateway(config)
    status = HealthStatus(gateway)  # shared by the gRPC server and the health listener
    # Both ports are bound before anything loads: a port in use is one line now, not after a model load.
    try:
        sock, grpc_handle = await _bind_ports(gateway, config, status)
    except StartupError as e:
        _cannot_start(str(e))
        return 2
    # SIGTERM/SIGINT from here on stop the process cleanly, start-up included (imports, discovery
    # against a slow upstream, a local model build): see _StartupStop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    early = _StartupStop(loop, stop)
    start_task = asyncio.create_task(gateway.start())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({start_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            start_task.cancel()
            with contextlib.suppress(BaseException):
                await start_task
            logger.info("stop signal during start-up: exiting without serving", extra={"event": "stopped",
                                                                                        "drained": True})
            await _close_unstarted(gateway, sock, grpc_handle)
            return 0
        start_task.result()
        # Everything loaded so far lives as long as the process: keep it out of the collector's
        # generations, or each full collection walks it and stalls every request in flight.
        gc.collect()
        gc.freeze()
    except Exception as e:  # a backend or stage that cannot be built: say why (one line) and exit
        reason = " ".join(str(getattr(e, "message", None) or e).split())
        logger.error("cannot start (config %s): %s", source, reason, extra={"event": "start_failed"})
        await _close_unstarted(gateway, sock, grpc_handle)
        return 2
    finally:
        stopper.cancel()
        early.done(stopping=stop.is_set())
    app = create_app(gateway)
    http_port = sock.getsockname()[1]
    uv_config = uvicorn.Config(
        app, lifespan="off", http="httptools", loop="none", access_log=False, log_config=None,
        timeout_keep_alive=75, timeout_graceful_shutdown=max(1, int(sc.shutdown_grace_s)), server_header=False,
        ssl_certfile=sc.tls_cert_file, ssl_keyfile=sc.tls_key_file,
    )
    server = QuietServer(uv_config)  # SIGTERM/SIGINT are ours: readiness first, drain, then stop uvicorn
    if grpc_handle is not None:
        await grpc_handle.start()
    status.start(_HEALTH_INTERVAL_S)
    publisher = asyncio.create_task(gateway.metrics.publish_every(1.0)) if multiprocess() else None
    health: HealthListener | None = None
    if sc.health_port is not None:
        health = await HealthListener.start(gateway, status, sc.health_host, sc.health_port)

    serve_task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serve_task.done():
        await asyncio.sleep(0.01)
    if serve_task.done():
        await status.close()
        if health is not None:
            await health.stop()
        await serve_task
        return 1
    logger.info(
        "promptwire serving %s://%s:%d%s", "https" if sc.tls_cert_file else "http", sc.host, http_port,
        f" and grpc{'s' if sc.tls_cert_file else ''} {sc.host}:{grpc_handle.port}" if grpc_handle is not None else "",
        extra={"event": "serving", "http_port": http_port,
               "grpc_port": grpc_handle.port if grpc_handle is not None else None,
               "health_port": health.port if health is not None else None,
               "backends": sorted(config.backends)},
    )
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({serve_task, stopper}, return_when=asyncio.FIRST_COMPLETED)

    # graceful shutdown: not ready -> finish in-flight requests within the grace -> stop
    logger.info("shutting down: %d request(s) in flight, grace %.1fs", gateway.in_flight, sc.shutdown_grace_s,
                extra={"event": "shutdown"})
    gateway.begin_shutdown()
    await status.shutdown()  # readiness NOT_SERVING on every health endpoint; liveness stays SERVING
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
    await status.close()
    if health is not None:
        await health.stop()
    if publisher is not None:
        publisher.cancel()
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]  # its live gauges leave the sum; its counters stay counted
    await gateway.aclose()
    logger.info("stopped", extra={"event": "stopped", "drained": drained})
    return 0


async def _bind_ports(gateway: Any, config: GatewayConfig, status: Any) -> tuple[socket.socket, Any]:
    """The HTTP socket and the gRPC server (bound, not started), the health port checked free;
    StartupError (one line) for a port that cannot be bound."""
    sc = config.server
    reuse = bool(os.environ.get(_WORKER_ENV))
    if sc.health_port:  # bound later by the health listener; checked now with the others
        bind_socket(sc.health_host, sc.health_port, "health", reuse_port=reuse).close()
    sock = bind_socket(sc.host, sc.http_port, "HTTP", reuse_port=reuse)
    if sc.grpc_port is None:
        return sock, None
    try:
        from gateway.grpc.server import prepare_grpc_server
    except ImportError as e:
        logger.warning("gRPC front end not available (%s); serving HTTP only", e)
        return sock, None
    tls = None
    if sc.tls_cert_file is not None and sc.tls_key_file is not None:
        with open(sc.tls_key_file, "rb") as kf, open(sc.tls_cert_file, "rb") as cf:
            tls = (kf.read(), cf.read())
    try:
        if sc.grpc_port:  # checked with a socket of ours first: grpc's own bind failure is a C-core log line
            bind_socket(sc.host, sc.grpc_port, "gRPC", reuse_port=reuse).close()
        return sock, await prepare_grpc_server(gateway, sc.host, sc.grpc_port, reuse_port=reuse, tls=tls,
                                               status=status)
    except StartupError:
        sock.close()
        raise
    except OSError:
        sock.close()
        raise StartupError(port_problem("gRPC", sc.host, sc.grpc_port)) from None


async def _close_unstarted(gateway: Any, sock: socket.socket, grpc_handle: Any) -> None:
    sock.close()
    if grpc_handle is not None:
        await grpc_handle.server.stop(None)
    await gateway.aclose()


def _cannot_start(reason: str) -> None:
    """A start-up problem: one plain line on stderr (before or beside the JSON log)."""
    print(f"promptwire: cannot start: {reason}", file=sys.stderr, flush=True)


def _exit_before_start(signum: int, _frame: Any) -> None:
    logger.info("%s before start-up: exiting", signal.Signals(signum).name, extra={"event": "stopped"})
    raise SystemExit(0)


class _StartupStop:
    """SIGTERM/SIGINT while the gateway starts. The signal sets ``stop`` (start-up is raced against it
    and cancelled); and because a local model build runs on the event loop's thread, where no loop
    callback can run until it returns, a watchdog ends the process with status 0 if the cancelled
    start-up has not finished unwinding within ``_STARTUP_STOP_S``. Nothing is served yet, so there is
    nothing to drain; the model cache is written atomically."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        self._loop = loop
        self._stop = stop
        self._active = True
        self._timer: threading.Timer | None = None
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # A Python-level handler: it runs on the main thread between bytecodes, even inside a build.
        if not self._active:
            return
        if self._timer is None:
            logger.info("%s during start-up: stopping", signal.Signals(signum).name, extra={"event": "shutdown"})
            self._timer = threading.Timer(_STARTUP_STOP_S, self._force_exit)
            self._timer.daemon = True
            self._timer.start()
        self._loop.call_soon_threadsafe(self._stop.set)

    def _force_exit(self) -> None:
        logger.warning("start-up did not stop within %.0f s of the signal; exiting now", _STARTUP_STOP_S,
                       extra={"event": "stopped", "drained": True})
        for h in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                h.flush()
        os._exit(0)

    def done(self, *, stopping: bool) -> None:
        """Start-up is over: the loop's own handlers take over (they set ``stop``). When it ended because
        of a signal (``stopping``) the watchdog stays armed until the process exits."""
        self._active = False
        if self._timer is not None and not stopping:
            self._timer.cancel()
        for sig in _STOP_SIGNALS:
            self._loop.add_signal_handler(sig, self._stop.set)


_STARTUP_STOP_S = 3.0
_HEALTH_INTERVAL_S = 5.0
"""How often gRPC health re-reads readiness (HTTP /readyz asks on every call)."""
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.observe.logs import configure_logging

    try:
        config, source = _serve_config(args)
    except ConfigError as e:  # one line per problem, each naming the file (or flag), key path and reason
        for line in str(e).splitlines():
            print(f"promptwire: config error: {line}", file=sys.stderr)
        return 2
    problems = model_source_problems(config)
    if problems:  # models that cannot load: say so now, not after the others have loaded
        for line in problems:
            _cannot_start(line)
        return 2
    configure_logging(config.server.log_level)
    for sig in _STOP_SIGNALS:  # until _serve (or the workers' parent) installs its own
        signal.signal(sig, _exit_before_start)
    workers = args.workers if args.workers is not None else config.server.workers
    if not os.environ.get(_WORKER_ENV):  # workers: their parent says it once
        _log_backend_notes(config, defaulted_key=bool(args.upstream) and args.upstream_key_env is None)
    if workers > 1 and not os.environ.get(_WORKER_ENV):
        return _run_workers(args, config, workers)
    with _runner() as runner:
        return runner.run(_serve(config, source))


def _log_backend_notes(config: GatewayConfig, *, defaulted_key: bool) -> None:
    """Start-time notes on upstream keys and TLS (names of variables only, never a key)."""
    for name, bc in config.backends.items():
        if bc.type != "openai":
            continue
        host = urlsplit(bc.base_url or "").netloc
        if bc.api_key_env:
            if not os.environ.get(bc.api_key_env):
                logger.warning("backend %s: api_key_env %s is not set; no key is sent to %s", name, bc.api_key_env,
                               host, extra={"event": "upstream_key_missing", "backend": name})
            elif defaulted_key and bc.api_key_env == _UPSTREAM_KEY_DEFAULT_ENV and name.startswith("upstream"):
                logger.info("backend %s: sending the key in $%s to %s (--upstream-key-env VAR picks another "
                            "variable, --upstream-key-env '' sends none)", name, bc.api_key_env, host,
                            extra={"event": "upstream_key", "backend": name, "env": bc.api_key_env})
        if not bc.tls_verify and (bc.base_url or "").startswith("https:"):
            logger.warning("backend %s: tls_verify is false: the certificate of %s is NOT checked, so anyone on "
                           "the path can read and change this traffic (and the upstream key)", name, host,
                           extra={"event": "tls_verify_off", "backend": name})


_WORKER_ENV = "PROMPTWIRE_WORKER_OF"
"""Set in worker processes started by ``serve --workers N`` (their ports are shared with SO_REUSEPORT)."""


def _run_workers(args: argparse.Namespace, config: GatewayConfig, workers: int) -> int:
    """Start ``workers`` serve processes on the same ports; forward SIGTERM/SIGINT; exit with the worst code."""
    sc = config.server
    if sc.http_port == 0 or sc.grpc_port == 0:
        logger.error("--workers needs fixed ports (not 0): every worker binds the same ones")
        return 2
    # the workers share the ports (SO_REUSEPORT): check once here that nobody else holds them
    checks = [("HTTP", sc.http_port)] + ([("gRPC", sc.grpc_port)] if sc.grpc_port is not None else [])
    for what, port in checks:
        try:
            bind_socket(sc.host, port, what).close()
        except StartupError as e:
            _cannot_start(str(e))
            return 2
    argv = list(args.argv)
    env = {**os.environ, _WORKER_ENV: str(os.getpid())}
    # /metrics on any worker reports all of them: prometheus_client's multiprocess mode, in a fresh
    # directory of this run (or the operator's $PROMETHEUS_MULTIPROC_DIR)
    own_dir = None
    if not env.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="promptwire-metrics-")
        env[MULTIPROC_ENV] = own_dir
    procs = [subprocess.Popen([sys.executable, "-m", "gateway.cli", *argv], env=env) for _ in range(workers)]
    logger.info("started %d worker processes on http port %d", workers, sc.http_port,
                extra={"event": "workers", "pids": [p.pid for p in procs]})

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        codes = [p.wait() for p in procs]
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return max(codes, key=abs)


def _cmd_config_check(args: argparse.Namespace) -> int:
    try:
        origins: Origins = {}
        raw, source = load_raw(args.file, origins=origins)
        config = validate_config(raw, source, origins)
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
    serve.add_argument("--health-port", type=int, metavar="P",
                       help="health-only listener (gRPC health, /healthz, /readyz; nothing else) on all "
                            "interfaces, for probes of an API bound to localhost (config: server.health_port)")
    serve.add_argument("--upstream", action="append", metavar="URL",
                       help="OpenAI-compatible upstream, e.g. http://127.0.0.1:8000/v1; proxies all its models "
                            "(repeatable; the first is the default for unknown models)")
    serve.add_argument("--upstream-key-env", metavar="VAR",
                       help="name of the environment variable holding the --upstream API key (default: "
                            "the key configured for the backend, else $OPENAI_API_KEY when set; '' sends none)")
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
    from gateway.cli_decog import register as register_decog
    from gateway.cli_models import register as register_models
    from gateway.stages.select_prompt.cli import register as register_idp

    register_compressor(sub)
    register_decog(sub)
    register_models(sub)
    register_idp(sub)
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
