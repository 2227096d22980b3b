"""Start-up checks that run before any model loads: model sources that cannot load, ports in use.

Each problem is one line naming the key (or flag) and the reason, so that ``promptwire serve`` fails
in a second with something a person can act on, instead of a traceback after a model has loaded."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from gateway.config.schema import GatewayConfig

__all__ = ["TINY_PREFIX", "StartupError", "bind_socket", "model_source_problems", "source_problem"]

TINY_PREFIX = "tiny:"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class StartupError(Exception):
    """The gateway cannot start; the message is one line."""


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


def _looks_like_path(source: str) -> bool:
    """A filesystem path rather than a Hugging Face id (``name`` or ``org/name``)."""
    return (source.startswith(("/", "./", "../", "~", ".\\")) or source.count("/") > 1 or "\\" in source
            or source in (".", ".."))


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return False
    return isinstance(found, str)


def source_problem(source: str, *, marker: str = "config.json") -> str | None:
    """Why ``source`` (a directory, a Hugging Face id or a ``tiny:`` stand-in) cannot load, or None.

    A directory must exist and hold ``marker``; a Hugging Face id must be in the local cache when the
    hub is off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): otherwise the loader would only find out after
    trying the network. An id while online is left to the loader."""
    if source.startswith(TINY_PREFIX):
        return None
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"{source!r} is a file, not a model directory"
        if not os.access(path, os.R_OK | os.X_OK):
            return f"{source!r} cannot be read (permissions)"
        if marker and not (path / marker).is_file():
            return f"{source!r} is not a model directory (no {marker} in it)"
        return None
    if _looks_like_path(source):
        return f"{source!r} does not exist"
    if _offline() and not _in_hf_cache(source):
        return (f"{source!r} is not a directory and not in the Hugging Face cache, and the hub is off "
                f"(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): download it first or give a local directory")
    return None


def model_source_problems(config: GatewayConfig) -> list[str]:
    """One line per model source in the config that cannot load (local backends, the compressor)."""
    out = []
    for name, bc in config.backends.items():
        if bc.type == "local":
            why = source_problem(bc.model_path)
            if why is not None:
                out.append(f"backends.{name}.model_path: {why}")
    compress = config.stages.compress
    if compress is not None:
        # an exported ONNX directory or a checkpoint directory (their files differ: existence only)
        why = source_problem(compress.model, marker="")
        if why is not None:
            out.append(f"stages.compress.model: {why}")
    return out


def bind_socket(host: str, port: int, what: str, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on host:port; StartupError (one line) when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # one of several worker processes: the kernel spreads connections over them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise StartupError(port_problem(what, host, port, e)) from None
    sock.setblocking(False)
    return sock


def port_problem(what: str, host: str, port: int, e: OSError | None = None) -> str:
    """The one line for a port that cannot be bound."""
    flag = {"HTTP": "--http-port / server.http_port", "gRPC": "--grpc-port / server.grpc_port"}.get(
        what, "--health-port / server.health_port")
    if e is None or e.errno == errno.EADDRINUSE:
        return f"{what} port {port} on {host} is already in use (another process listens there; change {flag})"
    if e.errno == errno.EACCES:
        return f"{what} port {port} on {host}: permission denied (ports below 1024 need privileges; change {flag})"
    if e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
        return f"{what}: cannot listen on {host!r}: not an address of this machine (change --host / server.host)"
    return f"{what} port {port} on {host}: {e.strerror or e}"
