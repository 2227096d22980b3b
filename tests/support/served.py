"""`promptwire serve` as a real child process: its JSON log lines read as they come, the serving ports."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["ServedProcess", "clean_env"]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without PROMPTWIRE_* overrides and upstream keys, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTWIRE_") and k != "OPENAI_API_KEY"}
    return {**env, **(extra or {})}


class ServedProcess:
    """``ServedProcess(["--upstream", url, ...])``: started, and waited for until ``workers`` processes log
    ``serving`` (each log line goes to ``log``; ``records`` holds the parsed JSON ones)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, *, workers: int = 1,
                 timeout: float = 90) -> None:
        # a session of its own: kill() ends the workers of `--workers N` too, even when their parent is gone
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=clean_env(env), text=True,
                                     start_new_session=True)
        self.log: list[str] = []
        self.records: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.serving = self._wait_serving(workers, timeout)
        self.http_port = int(self.serving[0]["http_port"])
        self.grpc_port = self.serving[0].get("grpc_port")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                self.records.append(rec)
            self._lines.put(line)
        self._lines.put(None)  # end of output: the process is gone

    def _wait_serving(self, workers: int, timeout: float) -> list[dict[str, Any]]:
        """Blocks on the log lines themselves (no polling); the deadline only bounds a process that hangs."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < workers:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.kill()
                raise AssertionError("promptwire serve did not start:\n" + "".join(self.log))
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("event") == "serving":
                found.append(rec)
        return found

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the process and every worker it started (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stderr is not None and not self._reader.is_alive():  # (closing under a reader blocks)
            self.proc.stderr.close()

    def __enter__(self) -> ServedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
