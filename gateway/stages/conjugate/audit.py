"""The conjugate audit log: one JSON line per request, appended and fsynced before the answer leaves.

The file is opened ``O_WRONLY | O_APPEND | O_CREAT`` (mode 0600) and never truncated or rewritten.
Each record is one ``write`` of one line (JSON escapes newlines), followed by ``fsync``; a caller's
``await write(record)`` returns only after its line is on disk. Concurrent requests share fsyncs
(group commit): lines that arrive while one batch is being synced go out together in the next.

Rotation by size: when appending a batch would take the file past ``max_bytes``, the file is
renamed to ``<path>.<UTC time>`` (``conjugate.jsonl.20260101T120000.123456Z``) and a new one is
started; nothing is deleted unless ``keep`` is set, and then only the oldest rotated files beyond
``keep``. Several processes (``--workers``) may share one path: a ``<path>.lock`` file serialises
their appends and rotations, and a process whose file was rotated by another reopens the path.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["AuditError", "AuditWriter", "rotated_files"]

logger = logging.getLogger(__name__)


class AuditError(OSError):
    """The record could not be written and synced (disk full, permissions, path gone, ...)."""


def _encode(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode()


def rotated_files(path: str | Path) -> list[Path]:
    """The rotated files of ``path``, oldest first."""
    p = Path(path)
    return sorted(q for q in p.parent.glob(p.name + ".*") if q.name[len(p.name) + 1 :][:1].isdigit())


class AuditWriter:
    """Appends JSON lines to ``path`` durably (module docstring)."""

    def __init__(self, path: str | Path, *, max_bytes: int = 64 * 1024 * 1024, keep: int | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        """Rotate before a batch would take the file past this many bytes; 0: never rotate."""
        self.keep = keep
        """Rotated files to keep (oldest deleted first); None: keep them all."""
        self._lock = threading.Lock()  # one append (write + fsync + maybe rotate) at a time in this process
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="conjugate-audit")
        self.lines = 0
        self.syncs = 0
        with self._lock:
            try:
                self._open()  # fail at start, not at the first request
            except OSError as e:
                raise AuditError(e.errno or 0, f"cannot open the conjugate audit log {self.path}: "
                                 f"{e.strerror or e}") from None

    # -- file handling (called with self._lock held) ---------------------------------------------

    def _open(self) -> None:
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if self._lock_fd is None:
            lock = self.path.with_name(self.path.name + ".lock")
            self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if created:
            self._sync_dir()

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _sync_dir(self) -> None:
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _rotate(self) -> None:
        self._close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.{stamp}.{time.time_ns() // 1000 % 1_000_000:06d}Z")
        while target.exists():
            target = target.with_name(target.name + "1")
        os.rename(self.path, target)
        logger.info("conjugate audit log rotated to %s", target)
        if self.keep is not None:
            for old in rotated_files(self.path)[: max(0, len(rotated_files(self.path)) - self.keep)]:
                old.unlink(missing_ok=True)
        self._open()

    def _append(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        with self._lock:
            try:
                if self._fd is None:
                    self._open()
                assert self._fd is not None and self._lock_fd is not None
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # other processes on the same path
                try:
                    try:
                        current = os.stat(self.path)
                    except FileNotFoundError:
                        current = None
                    if current is None or current.st_ino != os.fstat(self._fd).st_ino:
                        self._close()  # rotated (or removed) by someone else: follow the path
                        self._open()
                    assert self._fd is not None
                    size = os.fstat(self._fd).st_size
                    if self.max_bytes and size > 0 and size + len(data) > self.max_bytes:
                        self._rotate()
                    assert self._fd is not None
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._fd, view) :]
                    os.fsync(self._fd)
                finally:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            except OSError as e:
                self._close()  # reopen on the next attempt (the disk may come back)
                raise AuditError(e.errno or 0, f"cannot write the conjugate audit log {self.path}: "
                                 f"{e.strerror or e}") from None
            self.lines += len(lines)
            self.syncs += 1

    # -- public API ------------------------------------------------------------------------------

    def write_sync(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` and fsync; returns once it is on disk. Raises AuditError."""
        self._append([_encode(record)])

    async def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record``; returns once it is on disk (batched with concurrent writes). Raises AuditError."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((_encode(record), fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await loop.run_in_executor(self._executor, self._append, [line for line, _ in batch])
            except Exception as e:  # AuditError, or the executor shut down under us
                err = e if isinstance(e, AuditError) else AuditError(0, f"conjugate audit log: {e}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    async def aclose(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        self._executor.shutdown(wait=True)
        with self._lock:
            self._close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
