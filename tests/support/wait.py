"""Waiting for a state, never for a time: a condition checked as the program runs, with a bound that only
ends a test that would otherwise hang (generous, so that a loaded machine is slow, not wrong)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

__all__ = ["BOUND_S", "until", "until_async"]

BOUND_S = 30.0
_nap = threading.Event()  # never set: wait(t) is a sleep that other threads cannot cut short


def until(cond: Callable[[], bool], what: str = "the condition", bound_s: float = BOUND_S) -> None:
    """Block until ``cond()`` holds (another thread's state); AssertionError after ``bound_s``."""
    deadline = time.monotonic() + bound_s
    while not cond():
        assert time.monotonic() < deadline, f"still waiting for {what} after {bound_s:g} s"
        _nap.wait(0.005)


async def until_async(cond: Callable[[], bool], what: str = "the condition", bound_s: float = BOUND_S) -> None:
    """Yield to the loop until ``cond()`` holds; AssertionError after ``bound_s``."""
    deadline = time.monotonic() + bound_s
    while not cond():
        assert time.monotonic() < deadline, f"still waiting for {what} after {bound_s:g} s"
        await asyncio.sleep(0.005)
