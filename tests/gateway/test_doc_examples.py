"""Every example in README.md that talks to `make run`'s server, and every compression example in
docs/, runs against a real server started from the embedded default config (what `make run` serves):
the examples are read from the markdown, so an example that breaks fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)
_MAKE_RUN = ("127.0.0.1:8080", "localhost:8080")


def compression_examples(path: Path, *, only_compression: bool = True) -> list[tuple[str, str, str]]:
    """(id, language, code) of each bash/python block that talks to `make run`'s server (about
    compression, unless ``only_compression`` is false). LiteLLM examples need LiteLLM
    (tests/compressors/test_litellm_callback.py runs that path)."""
    out = []
    text = path.read_text(encoding="utf-8")
    for m in _FENCE.finditer(text):
        lang, code = m.group(1), m.group(2)
        if lang not in ("bash", "sh", "shell", "python"):
            continue
        if not any(h in code for h in _MAKE_RUN) or "litellm" in code:
            continue
        if only_compression and not ("/v1/compress" in code or '"compress"' in code):
            continue
        line = text[: m.start()].count("\n") + 1
        out.append((f"{path.relative_to(ROOT)}:{line}", lang, code))
    return out


DOCS = [p for p in sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [e for p in DOCS for e in compression_examples(p)]
README_EXAMPLES = compression_examples(ROOT / "README.md", only_compression=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`promptwire serve` with the embedded default (stand-ins built first, under a test cache)."""
    from compressors.llmlingua2.export import ensure_exported
    from gateway.providers.local import resolve_model_source
    from tests.gateway.test_serve_process import Served

    cache = tmp_path_factory.getbasetemp() / "pw-cache"
    old = os.environ.get("PROMPTWIRE_CACHE_DIR")
    os.environ["PROMPTWIRE_CACHE_DIR"] = str(cache)
    try:
        with warnings.catch_warnings():  # torch's ONNX exporter warns about its own deprecations
            warnings.simplefilter("ignore")
            resolve_model_source("tiny:llama")
            ensure_exported("tiny:llmlingua2")
    finally:
        if old is None:
            os.environ.pop("PROMPTWIRE_CACHE_DIR", None)
        else:
            os.environ["PROMPTWIRE_CACHE_DIR"] = old
    served = Served([], cache_dir=cache)
    try:
        yield served.base.removeprefix("http://")
    finally:
        served.kill()


def _run(lang: str, code: str, host: str) -> subprocess.CompletedProcess[str]:
    for h in _MAKE_RUN:
        code = code.replace(h, host)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT)}
    cmd = ["bash", "-euo", "pipefail", "-c", code] if lang != "python" else [sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_the_docs_have_compression_examples() -> None:
    assert len(EXAMPLES) >= 4, [e[0] for e in EXAMPLES]


@pytest.mark.parametrize(("where", "lang", "code"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_docs_example_runs(server: str, where: str, lang: str, code: str) -> None:
    run = _run(lang, code, server)
    assert run.returncode == 0, f"{where}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    assert '"error"' not in run.stdout, f"{where}: {run.stdout[-2000:]}"


@pytest.mark.parametrize(("where", "lang", "code"), README_EXAMPLES, ids=[e[0] for e in README_EXAMPLES])
def test_readme_example_runs(server: str, where: str, lang: str, code: str) -> None:
    assert "[...]" not in code, f"{where}: an example must run as written"
    run = _run(lang, code, server)
    assert run.returncode == 0, f"{where}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    assert '"error"' not in run.stdout, f"{where}: {run.stdout[-2000:]}"
