"""CompressorService over real tiny exports (fp32 and int8): windows of concurrent requests share
ONNX Runtime calls and every request gets bit for bit what it gets alone."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compressors.llmlingua2.compressor import Compressor
from compressors.llmlingua2.errors import CompressorError
from compressors.llmlingua2.model import TokenClassifier
from compressors.llmlingua2.serving import BatcherConfig, CompressJob, CompressorService

TEXTS = [
    "The council approved the budget for the new library on Main Street after a long public hearing. "
    "Staff recommend the motion; it carried unanimously. Next item: water and street repairs.",
    "Die Sitzung des Rates hat heute Abend den Haushalt für die Bibliothek beschlossen. Danke schön.",
    "Speaker 1: We will now move to item 7, the police department report.\nSpeaker 2: Thank you, good evening.",
    "## Plan\n\n- **budget**: approve the 2024 plan\n- **vote**: next week\n\nSee https://example.com/plan?id=3.",
    # several model windows: packed beside the short ones
    " ".join(f"Item {i}: the council will now vote on the water budget and the library report." for i in range(90)),
]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant for the city council. Answer briefly, please."},
    {"role": "user", "content": TEXTS[0]},
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": "What did the council approve?"},
]


def tiny_exported(tmp_path_factory: pytest.TempPathFactory, int8: bool = False) -> Path:
    """Build + export the tiny BERT-style classifier once per test session (reused across modules)."""
    from compressors.llmlingua2.export import export, is_exported
    from compressors.llmlingua2.tiny import build_tiny_bert

    root = tmp_path_factory.getbasetemp() / "h5-tiny-bert"
    out = root / ("onnx-int8" if int8 else "onnx")
    if not is_exported(out):
        with warnings.catch_warnings():  # torch's ONNX exporter warns about its own deprecations
            warnings.simplefilter("ignore")
            if not (root / "ckpt" / "config.json").is_file():
                build_tiny_bert(root / "ckpt")
            export(root / "ckpt", out, int8=int8)
    return out


@pytest.fixture(scope="module", params=["fp32", "int8"])
def compressor(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Compressor:
    return Compressor(tiny_exported(tmp_path_factory, int8=request.param == "int8"), intra_op_threads=2)


def test_a_window_scores_the_same_in_any_batch(compressor: Compressor) -> None:
    """What the batching relies on: no window's probabilities depend on its call companions or padding."""
    clf: TokenClassifier = compressor.classifier
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(5, 1000, size=int(n))) for n in rng.integers(3, 200, size=9)]
    alone = [clf.keep_probs([s])[0] for s in seqs]
    mixed = clf.keep_probs(seqs[::-1])[::-1]
    padded = clf.keep_probs(seqs, pad_to=256)
    for a, m, p in zip(alone, mixed, padded, strict=True):
        assert np.array_equal(a, m) and np.array_equal(a, p)


def _calls() -> list[tuple[str, Any, dict[str, Any]]]:
    calls: list[tuple[str, Any, dict[str, Any]]] = []
    for rate in (0.3, 0.6):
        calls += [("compress", t, {"rate": rate, "return_word_labels": True}) for t in TEXTS]
    calls += [("compress_llmlingua", t, {"rate": 0.4, "return_word_label": True}) for t in TEXTS]
    calls.append(("compress_llmlingua", TEXTS[:3], {"rate": 0.5, "return_word_label": True}))  # context filter
    calls.append(("compress_llmlingua", TEXTS[4], {"rate": 0.5, "pad_to_max": False, "max_batch_size": 4}))
    calls.append(("compress_messages", MESSAGES, {"rate": 0.5, "compress_last_user": True}))
    return calls


async def test_concurrent_requests_share_calls_and_get_what_they_get_alone(compressor: Compressor) -> None:
    calls = _calls()
    alone = [getattr(compressor, m)(p, **o) for m, p, o in calls]
    # a long max_wait: every request is tokenized before the first call leaves, so calls are shared
    svc = CompressorService(compressor, BatcherConfig(max_wait_ms=60_000))
    together = await asyncio.gather(*(svc.run(CompressJob(m, p, o)) for m, p, o in calls))
    await svc.aclose()
    assert together == alone  # texts, token counts and every word label, bit for bit
    assert svc.stats.shared_batches >= 1 and svc.stats.largest_batch > 1
    assert svc.stats.requests == len(calls)
    assert any(r.text != t for r, t in zip(together[: len(TEXTS)], TEXTS, strict=True))  # it did compress


async def test_batching_off_gives_the_same_results(compressor: Compressor) -> None:
    calls = _calls()[: len(TEXTS)]
    svc = CompressorService(compressor, BatcherConfig(batching=False))
    got = await asyncio.gather(*(svc.run(CompressJob(m, p, o)) for m, p, o in calls))
    await svc.aclose()
    assert got == [getattr(compressor, m)(p, **o) for m, p, o in calls]
    assert svc.stats.shared_batches == 0


async def test_bad_request_fails_alone(compressor: Compressor) -> None:
    svc = CompressorService(compressor, BatcherConfig(max_wait_ms=60_000))
    good, bad = await asyncio.gather(
        svc.compress(TEXTS[0], rate=0.5), svc.compress(TEXTS[1], rate=1.5), return_exceptions=True
    )
    await svc.aclose()
    assert not isinstance(good, BaseException) and good.text == compressor.compress(TEXTS[0], rate=0.5).text
    assert isinstance(bad, CompressorError) and bad.param == "rate"
    assert svc.provider == "CPUExecutionProvider"
