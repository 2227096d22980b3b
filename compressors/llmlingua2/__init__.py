"""LLMLingua-2 prompt compressor on ONNX Runtime (API in .compressor, export in .export, CLI in .cli)."""

from __future__ import annotations

__all__: list[str] = []
