"""Prompt stages, by name, in the one table the pipeline reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.stages.base import RESERVED_DECODERS, RESERVED_STAGES, Stage, StageFactory, check_options

__all__ = ["RESERVED_DECODERS", "RESERVED_STAGES", "STAGES", "Stage", "StageFactory", "check_options"]


def _compress(config: Mapping[str, Any]) -> Stage:
    # imported on use: the compressor runtime (onnxruntime) is only loaded when a route uses the stage
    from gateway.stages.compress import make_compress_stage

    return make_compress_stage(config)


STAGES: dict[str, StageFactory] = {
    "compress": _compress,
}
"""Built stages: name -> factory. Names in RESERVED_STAGES missing here answer "not available yet"."""
