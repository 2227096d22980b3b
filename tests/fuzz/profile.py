"""Fuzzing sizes: the quick profile in the default run, the long one by command.

    PROMPTWIRE_FUZZ=long python -m pytest -q -m '' tests/fuzz    # the long profile (20x the cases)
"""

from __future__ import annotations

import os

__all__ = ["SCALE", "examples"]

SCALE = 20 if os.environ.get("PROMPTWIRE_FUZZ") == "long" else 1
"""How many times the quick profile's case counts each fuzz test runs."""


def examples(quick: int) -> int:
    """The case count for a test whose quick profile runs ``quick`` cases."""
    return quick * SCALE
