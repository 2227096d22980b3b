"""Run promptwire with the `local` extra's packages hidden: what a proxy-only install can import.

    python -m tests.support.lean serve --config FILE    # = promptwire serve ..., torch & co. unimportable

Importing a hidden package raises ModuleNotFoundError, as in a venv that never installed it.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["HIDDEN", "hide"]

HIDDEN = ("torch", "transformers", "sentencepiece", "sacremoses", "onnx", "onnx_ir", "accelerate")
"""Top-level modules of the `local` extra (and of theirs that a proxy install does not have)."""


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: Any = None) -> None:
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: proxy-only install)", name=name)
        return None


def hide() -> None:
    """Make the HIDDEN packages unimportable in this process (before anything imports them)."""
    loaded = [m for m in HIDDEN if m in sys.modules]
    assert not loaded, f"already imported: {loaded}"
    sys.meta_path.insert(0, _Hide())


if __name__ == "__main__":
    hide()
    from gateway.cli import main

    sys.exit(main(sys.argv[1:]))
