"""CompressorService over a real tiny exported model: batched results equal unbatched ones."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pytest

from compressors.llmlingua2.compressor import Compressor
from compressors.llmlingua2.errors import CompressorError
from compressors.llmlingua2.serving import BatcherConfig, CompressorService

TEXTS = [
    "The council approved the budget for the new library on Main Street after a long public hearing. "
    "Staff recommend the motion; it carried unanimously. Next item: water and street repairs.",
    "Die Sitzung des Rates hat heute Abend den Haushalt für die Bibliothek beschlossen. Danke schön.",
    "Speaker 1: We will now move to item 7, the police department report.\nSpeaker 2: Thank you, good evening.",
    "## Plan\n\n- **budget**: approve the 2024 plan\n- **vote**: next week\n\nSee https://example.com/plan?id=3.",
]


def tiny_exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build + export the tiny BERT-style classifier once per test session (reused across modules)."""
    from compressors.llmlingua2.export import export, is_exported
    from compressors.llmlingua2.tiny import build_tiny_bert

    root = tmp_path_factory.getbasetemp() / "h5-tiny-bert"
    out = root / "onnx"
    if not is_exported(out):
        with warnings.catch_warnings():  # torch's ONNX exporter warns about its own deprecations
            warnings.simplefilter("ignore")
            build_tiny_bert(root / "ckpt")
            export(root / "ckpt", out)
    return out


@pytest.fixture(scope="module")
def compressor(tmp_path_factory: pytest.TempPathFactory) -> Compressor:
    return Compressor(tiny_exported(tmp_path_factory))


async def test_concurrent_calls_are_batched_and_equal_unbatched(compressor: Compressor) -> None:
    expected = [compressor.compress(t, rate=r) for r in (0.3, 0.6) for t in TEXTS]
    expected_compat = [compressor.compress_llmlingua(t, rate=0.4) for t in TEXTS]
    svc = CompressorService(compressor, BatcherConfig(max_batch_size=6, max_wait_ms=50))
    got = await asyncio.gather(*(svc.compress(t, rate=r) for r in (0.3, 0.6) for t in TEXTS))
    got_compat = await asyncio.gather(*(svc.compress_llmlingua(t, rate=0.4) for t in TEXTS))
    await svc.aclose()
    assert [g.text for g in got] == [e.text for e in expected]
    assert [(g.origin_tokens, g.compressed_tokens) for g in got] == [
        (e.origin_tokens, e.compressed_tokens) for e in expected
    ]
    assert got_compat == expected_compat
    assert any(g.text != t for g, t in zip(got, TEXTS * 2, strict=True))  # something was compressed
    assert svc.batcher.stats.requests == 12
    assert svc.batcher.stats.batches <= 4  # 8 + 4 requests in batches of at most 6
    assert svc.batcher.stats.largest_batch == 6


async def test_bad_request_fails_alone(compressor: Compressor) -> None:
    svc = CompressorService(compressor, BatcherConfig(max_batch_size=8, max_wait_ms=30))
    good, bad = await asyncio.gather(
        svc.compress(TEXTS[0], rate=0.5), svc.compress(TEXTS[1], rate=1.5), return_exceptions=True
    )
    await svc.aclose()
    assert not isinstance(good, BaseException) and good.text == compressor.compress(TEXTS[0], rate=0.5).text
    assert isinstance(bad, CompressorError) and bad.param == "rate"
    assert svc.batcher.stats.batches == 1


async def test_unknown_method_is_rejected(compressor: Compressor) -> None:
    from compressors.llmlingua2.serving import CompressJob

    svc = CompressorService(compressor)
    with pytest.raises(ValueError, match="unknown compressor method"):
        await svc.run(CompressJob("keep_probs", [], {}))
    await svc.aclose()
    assert svc.provider == "CPUExecutionProvider"
