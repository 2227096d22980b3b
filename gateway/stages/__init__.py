"""Prompt stages: the protocol (base), the one table of names and options (table), one module per stage."""

from __future__ import annotations

from gateway.stages.base import (
    ModelAccess,
    ResponseHook,
    Stage,
    StageDeps,
    StageFactory,
    StageResult,
    TextHook,
    check_options,
)
from gateway.stages.table import DECODERS, STAGES, DecoderEntry, Option, StageEntry

__all__ = [
    "DECODERS",
    "STAGES",
    "DecoderEntry",
    "ModelAccess",
    "Option",
    "ResponseHook",
    "Stage",
    "StageDeps",
    "StageEntry",
    "StageFactory",
    "StageResult",
    "TextHook",
    "check_options",
]
