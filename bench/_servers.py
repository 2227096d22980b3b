"""Start, probe and stop the benchmark's server subprocesses (upstream, promptwire, LiteLLM) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BENCH",
    "ROOT",
    "Server",
    "cpu_seconds",
    "free_port",
    "process_tree",
    "start_litellm",
    "start_promptwire",
    "start_upstream",
]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A server subprocess and how to reach it."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    api_key: str = "sk-bench"
    log_path: Path | None = None
    workdir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def pids(self) -> list[int]:
        """The server's process and its descendants (LiteLLM may fork a worker)."""
        return process_tree(self.proc.pid)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: only its group gets the signal
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (those still alive)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / _CLK_TCK


def _spawn(
    name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")
    print(f"[bench] starting {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def _wait_http(server: Server, path: str, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    """Poll http://127.0.0.1:PORT/path until it answers 200 (bounded by timeout_s)."""
    url = f"http://127.0.0.1:{server.port}{path}"
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = repr(e)
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready at {url} after {timeout_s} s ({last}):\n{server.log_tail()}")


def start_upstream(workdir: Path, latency_ms: float, chunk_gap_ms: float) -> Server:
    """The fixed-latency upstream in its own process (it prints the port it bound)."""
    log_path = workdir / "upstream.log"
    port = free_port()
    cmd = [
        sys.executable,
        str(BENCH / "_upstream.py"),
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
        "--chunk-gap-ms",
        str(chunk_gap_ms),
    ]
    server = Server("upstream", _spawn("upstream", cmd, log_path), port, log_path=log_path)
    _wait_http(server, "/v1/models", 20)
    return server


def start_promptwire(
    workdir: Path, upstream: Server, timeout_s: float = 60, workers: int = 1, extra_args: tuple[str, ...] = (),
    name: str = "promptwire",
) -> Server:
    """`promptwire serve --upstream URL [--workers N] [extra_args...]` from bench/.venv (the console script
    next to this Python); ``extra_args`` e.g. ``("--config", "gateway.yaml")``."""
    exe = Path(sys.executable).parent / "promptwire"
    cmd = [
        str(exe) if exe.exists() else "promptwire",
        "serve",
        "--upstream",
        f"http://127.0.0.1:{upstream.port}/v1",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(port := free_port()),
        "--grpc-port",
        str(free_port()) if workers > 1 else "0",  # workers share fixed ports
        "--log-level",
        "warning",
        "--workers",
        str(workers),
        *extra_args,
    ]
    env = dict(os.environ)
    log_path = workdir / f"{name}.log"
    server = Server(name, _spawn(name, cmd, log_path, env=env, cwd=workdir), port, log_path=log_path)
    try:
        _wait_http(server, "/readyz", timeout_s)
    except RuntimeError:
        server.stop()
        raise
    return server


def litellm_config(upstream: Server, master_key: str) -> str:
    return f"""\
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:{upstream.port}/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
  set_verbose: false
  drop_params: true
general_settings:
  master_key: {master_key}
  disable_spend_logs: true
"""


def start_litellm(workdir: Path, upstream: Server, timeout_s: float = 120, workers: int = 1) -> Server:
    """LiteLLM's proxy from its own venv: `workers` workers, no DB, no telemetry, errors-only logging."""
    exe = BENCH / ".venv-litellm" / "bin" / "litellm"
    if not exe.exists():
        raise FileNotFoundError(f"{exe} is missing: run `bash bench/setup_env.sh` first")
    # LiteLLM refuses to start without a master key; with one and no DB, auth is a key comparison.
    master_key = "sk-" + secrets.token_hex(24)
    cfg = workdir / "litellm.yaml"
    cfg.write_text(litellm_config(upstream, master_key))
    port = free_port()
    cmd = [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(workers)]
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_DOCS": "True",
        "DISABLE_ADMIN_UI": "True",
    }
    env.pop("DATABASE_URL", None)
    log_path = workdir / "litellm.log"
    server = Server(
        "litellm",
        _spawn("litellm", cmd, log_path, env=env, cwd=workdir),
        port,
        api_key=master_key,
        log_path=log_path,
    )
    try:
        _wait_http(server, "/health/liveliness", timeout_s)
    except RuntimeError:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def stopping(servers: list[Server]) -> Iterator[list[Server]]:
    """Stop every server started into `servers`, whatever happens."""
    try:
        yield servers
    finally:
        for s in reversed(servers):
            s.stop()
