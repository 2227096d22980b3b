"""The conjugate audit writer: durable before return, append-only, group commit, rotation, failures."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.stages.conjugate.audit import AuditError, AuditWriter, rotated_files

ROOT = Path(__file__).resolve().parents[2]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


async def test_lines_are_appended_to_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"old":1}\n', encoding="utf-8")
    w = AuditWriter(path)
    await w.write({"request_id": "r1", "text": "multi\nline «ünïcode» 🎉"})
    w.write_sync({"request_id": "r2"})
    await w.aclose()
    assert lines(path) == [{"old": 1}, {"request_id": "r1", "text": "multi\nline «ünïcode» 🎉"}, {"request_id": "r2"}]
    assert len(path.read_bytes().splitlines()) == 3  # one physical line per record


async def test_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    w = AuditWriter(path)
    await w.aclose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_concurrent_writes_share_one_fsync(tmp_path: Path) -> None:
    w = AuditWriter(tmp_path / "a.jsonl")
    await asyncio.gather(*(w.write({"i": i}) for i in range(50)))
    await w.aclose()
    assert sorted(r["i"] for r in lines(tmp_path / "a.jsonl")) == list(range(50))  # type: ignore[type-var]
    assert (w.lines, w.syncs) == (50, 1)  # all 50 queued before the first batch left


async def test_rotation_by_size_keeps_every_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    w = AuditWriter(path, max_bytes=200)
    for i in range(30):
        await w.write({"i": i, "pad": "x" * 20})
    await w.aclose()
    files = [*rotated_files(path), path]
    assert len(files) > 3
    seen = [r["i"] for f in files for r in lines(f)]
    assert seen == list(range(30))  # oldest file first, nothing lost or reordered
    assert all(f.stat().st_size <= 200 for f in files)


async def test_rotation_keep_deletes_only_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    w = AuditWriter(path, max_bytes=100, keep=2)
    for i in range(20):
        await w.write({"i": i, "pad": "y" * 30})
    await w.aclose()
    kept = rotated_files(path)
    assert len(kept) == 2
    seen = [r["i"] for f in [*kept, path] for r in lines(f)]
    assert seen == list(range(20 - len(seen), 20))


async def test_a_line_longer_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    w = AuditWriter(path, max_bytes=50)
    await w.write({"small": 1})
    await w.write({"big": "z" * 200})
    await w.aclose()
    assert [lines(f) for f in rotated_files(path)] == [[{"small": 1}]]
    assert lines(path) == [{"big": "z" * 200}]


async def test_writers_sharing_a_path_follow_each_others_rotation(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    a, b = AuditWriter(path, max_bytes=120), AuditWriter(path, max_bytes=120)
    for i in range(12):
        await (a if i % 2 else b).write({"i": i})
    await a.aclose()
    await b.aclose()
    seen = sorted(r["i"] for f in [*rotated_files(path), path] for r in lines(f))  # type: ignore[type-var]
    assert seen == list(range(12))
    assert all(f.stat().st_size <= 120 for f in [*rotated_files(path), path])


async def test_failures_raise_audit_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot open"):
        AuditWriter(tmp_path / "missing-dir" / "a.jsonl")
    d = tmp_path / "d"
    d.mkdir()
    w = AuditWriter(d / "a.jsonl")
    await w.write({"ok": 1})
    shutil.rmtree(d)  # the path is gone and cannot be created again
    with pytest.raises(AuditError, match="cannot write"):
        await w.write({"lost": 1})
    with pytest.raises(AuditError):
        w.write_sync({"lost": 2})
    d.mkdir()  # the disk comes back: the writer reopens
    await w.write({"again": 1})
    await w.aclose()
    assert lines(d / "a.jsonl") == [{"again": 1}]


_CHILD = """
import asyncio, sys
from gateway.stages.conjugate.audit import AuditWriter
w = AuditWriter(sys.argv[1])
async def main():
    await w.write({"request_id": "killed-right-after", "n": 1})
    print("written", flush=True)   # the "response": the parent kills us as soon as it sees it
    await asyncio.Event().wait()
asyncio.run(main())
"""


def test_line_is_on_disk_when_write_returns_even_if_the_process_dies_at_once(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, env=env) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"written\n"
            child.send_signal(signal.SIGKILL)  # no chance to flush or close anything
        finally:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert lines(path) == [{"request_id": "killed-right-after", "n": 1}]
