"""Prompt stages, by name, in the one table the pipeline reads."""

from __future__ import annotations

from gateway.stages.base import RESERVED_DECODERS, RESERVED_STAGES, Stage, StageFactory, check_options

__all__ = ["RESERVED_DECODERS", "RESERVED_STAGES", "STAGES", "Stage", "StageFactory", "check_options"]

STAGES: dict[str, StageFactory] = {}
"""Built stages: name -> factory. Names in RESERVED_STAGES missing here answer "not available yet"."""
