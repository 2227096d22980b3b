"""A per-model cache of decoder resources (label tries, HMMs, DFAs), bounded in bytes, LRU, thread-safe."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["CacheStats", "ResourceCache"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


class _Building:
    """A build in progress: later callers for the same key wait for it instead of building again."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class ResourceCache:
    """Get-or-build by key, each entry with its size in bytes; least recently used entries are evicted
    once the total passes ``max_bytes``.

    One cache per model (the engine owns it and hands it to decoder factories as
    ``DecoderContext.resources``), so keys need not name the model or tokenizer — only what the resource
    is built from::

        hmm = ctx.resources.get_or_build(("decog.hmm", path), lambda: load(path))   # value with .nbytes
        idx = ctx.resources.get_or_build(("trie", spec), lambda: (build(spec), n_bytes))  # or (value, size)

    ``build`` returns the value and its size as ``(value, nbytes)``, or just the value when it has an
    ``nbytes`` attribute (numpy arrays, torch tensors, or a class of your own with that property). It runs
    outside the lock; concurrent callers of the same key wait for one build. A value larger than the
    whole budget is returned but not kept. Failed builds are not cached (the error reaches every waiter).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._building: dict[Hashable, _Building] = {}
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        """The cached value (marked recently used), or None."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return hit[0]

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value for ``key``, building it with ``build()`` (see the class docs) if it is not cached."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return hit[0]
            pending = self._building.get(key)
            owner = pending is None
            if owner:
                self._misses += 1
                pending = self._building[key] = _Building()
        assert pending is not None
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value
        try:
            value, size = _sized(build())
        except BaseException as exc:
            with self._lock:
                del self._building[key]
            pending.error = exc
            pending.done.set()
            raise
        with self._lock:
            del self._building[key]
            self._put(key, value, size)
        pending.value = value
        pending.done.set()
        return value

    def _put(self, key: Hashable, value: Any, size: int) -> None:
        if size > self.max_bytes:
            logger.warning("resource %r (%d bytes) exceeds the cache budget of %d bytes; not cached",
                           key, size, self.max_bytes)
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._entries[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            gone, (_, n) = self._entries.popitem(last=False)
            self._bytes -= n
            self._evictions += 1
            logger.debug("resource cache evicted %r (%d bytes)", gone, n)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._entries), self._bytes, self.max_bytes, self._hits, self._misses,
                              self._evictions)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries


def _sized(built: Any) -> tuple[Any, int]:
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[1], int) and not isinstance(built[1], bool):
        return built[0], max(0, built[1])
    size = getattr(built, "nbytes", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return built, max(0, size)
    raise TypeError("a resource build must return (value, nbytes) or a value with an int .nbytes attribute")
