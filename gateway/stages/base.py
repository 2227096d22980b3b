"""The Stage protocol: one prompt transformation in the gateway's pipeline, plus option checking."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from gateway.errors import InvalidRequest
from gateway.types import GatewayRequest, StageStats

__all__ = [
    "IMPLEMENTED_DECODERS",
    "RESERVED_DECODERS",
    "RESERVED_STAGES",
    "Stage",
    "StageFactory",
    "check_options",
]

RESERVED_STAGES: tuple[str, ...] = ("condense_history", "select_prompt", "conjugate", "compress")
"""Stage names the extension object accepts; those without an entry in STAGES are not built yet."""
RESERVED_DECODERS: tuple[str, ...] = ("trie", "uscd", "decog")
IMPLEMENTED_DECODERS: frozenset[str] = frozenset({"trie"})
"""The reserved decoders this version can run (the local provider's DECODER_FACTORIES; a test keeps them equal)."""
"""Decoder names ``promptwire.decoder.name`` accepts."""


@runtime_checkable
class Stage(Protocol):
    """A prompt stage. Instances are shared by all requests: keep per-request state in locals."""

    name: str

    def validate(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """Check (operator defaults merged with client) options and return them normalised.

        Raises InvalidRequest with ``param="promptwire.<stage>.<option>"`` for an unknown option or
        a bad value. Called on the request path before ``apply``; keep it cheap."""
        ...

    async def apply(
        self, req: GatewayRequest, options: Mapping[str, Any]
    ) -> tuple[GatewayRequest, StageStats]:
        """Return the (possibly) rewritten request and what was done. Return ``req`` itself (the same
        object) when nothing changed, so the core can skip re-serialising it."""
        ...


StageFactory = Callable[[Mapping[str, Any]], Stage]
"""``factory(stage_config) -> Stage``; stage_config is ``stages.<name>`` from the YAML (may be empty)."""


def check_options(
    stage: str, options: Mapping[str, Any], schema: Mapping[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    """Type-check ``options`` against ``{option: type}``; unknown names and wrong types are 400s."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        want = schema.get(key)
        if want is None:
            known = ", ".join(sorted(schema)) or "none"
            raise InvalidRequest(
                f"unknown option {key!r} for stage {stage!r} (known: {known})",
                param=f"promptwire.{stage}.{key}",
            )
        # bool is an int subclass; an option typed int/float must not accept true/false
        if isinstance(value, bool) and bool not in (want if isinstance(want, tuple) else (want,)):
            ok = False
        else:
            ok = isinstance(value, want)
        if not ok:
            names = want.__name__ if isinstance(want, type) else " or ".join(t.__name__ for t in want)
            raise InvalidRequest(
                f"option {key!r} of stage {stage!r} must be {names}, got {type(value).__name__}",
                param=f"promptwire.{stage}.{key}",
            )
        out[key] = value
    return out
