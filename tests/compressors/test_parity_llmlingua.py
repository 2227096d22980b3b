"""Parity: llmlingua 0.2.2 itself vs our compat mode on the same tiny weights (BERT- and XLM-R-style)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from compressors.llmlingua2.compressor import Compressor

_EN = (
    "Good evening everyone. The council will now vote on item 12, the water budget. "
    "Staff recommend approval of the motion; it carried unanimously. Next we will move to the library report. "
)
_DE = "Die Sitzung des Rates hat heute Abend den Haushalt für die Bibliothek beschlossen. Danke schön. "
_FR = "Le conseil de la ville a voté le budget de la bibliothèque ce soir. Merci beaucoup à tous. "
_ES = "El consejo de la ciudad aprobó el presupuesto para la biblioteca esta noche. Gracias a todos. "
_RU = "Совет города сегодня вечером утвердил бюджет библиотеки. Спасибо всем. "
_ZH = "今天晚上城市议会投票通过了图书馆的预算。谢谢大家。"
_CODE = 'def get_user(user_id):\n    """Return the user."""\n    return db["users"][user_id]  # v2\n\nprint(get_user(42))\n'
_MD = "# Plan\n\n## Budget\n\n- **approve** the 2024 plan\n- _vote_ next week\n\n| item | cost |\n|---|---|\n| water | $3,400 |\n"
_NUM = "Revenue was $3,400,000 in 2023 (up 12.5%), 1,234 users, ratio 3:1, on 24.11.2026 at 20:15 UTC. "


def _docs() -> list[Any]:
    rng = random.Random(7)
    mixed = " ".join(rng.choice([_EN, _DE, _FR, _ES, _RU, _ZH, _NUM]) for _ in range(40))
    return [
        _EN,
        _DE * 3,
        _FR * 2,
        _ES * 2,
        _RU * 3,
        _ZH * 4,
        _CODE,
        _MD,
        _NUM * 2,
        _EN + "\n\n" + _DE + "\n" + _NUM,
        "   \n\t  ",
        "Short.",
        "a b c d e f g h i j k l m n o p q r s t u v w x y z",
        "Hello!!! What?? Yes... no -- maybe; (ok) [fine] {done} <tag> @user #hash",
        (_EN * 15),  # several chunks
        mixed,  # many chunks, several languages
        (_EN.replace(". ", " ") * 12),  # long without sentence ends: hard chunk cuts
        "Line one\nLine two\nLine three\n\n\nLine four",
        "emoji 😀 test ✓ ∑ ≈ ü ß ñ 한국어 日本語 العربية",
        _CODE * 4,
        "user_id getUserName max_tokens parseJSON v2 sha256 utf8 HTTP/1.1 192.168.0.1",
        "The [CLS] token and [SEP] and [PAD] and [NEW3] literal strings.",
        [_EN, _DE, _NUM],
        [_EN * 3, _ZH, _FR, _CODE],
        [_RU, _ES * 4, "Tiny.", _MD],
        _MD * 5 + _NUM * 5,
    ]


_OPTIONS: list[dict[str, Any]] = [
    {"rate": 0.5},
    {"rate": 0.33},
    {"rate": 0.8, "token_to_word": "first"},
    {"target_token": 40},
    {"rate": 0.5, "force_tokens": ["\n", ".", "?", "!", ","], "drop_consecutive": True},
    {"rate": 0.4, "force_tokens": ["getUserName", "budget", "Bibliothek"], "force_reserve_digit": True},
    {"rate": 0.5, "chunk_end_tokens": [".", "\n", "。"]},
    {"rate": 1.0},
    {"rate": 0.5, "force_context_ids": [0], "use_context_level_filter": True},
    {"rate": 0.6, "use_context_level_filter": False},
]


def _labels(res: dict[str, Any]) -> list[str]:
    text = res.get("fn_labeled_original_prompt", "")
    return text.split("\t\t|\t\t") if text else []


def _compare(
    ours: Compressor, ref: Any, doc: Any, opts: dict[str, Any]
) -> tuple[int, int, bool, dict[str, Any]]:
    a = ref.compress_prompt(doc, return_word_label=True, **opts)
    b = ours.compress_llmlingua(doc, return_word_label=True, **opts)
    la, lb = _labels(a), _labels(b)
    agree = sum(x == y for x, y in zip(la, lb, strict=False))
    total = max(len(la), len(lb))
    same = a == b
    return agree, total, same, {"ref": a, "ours": b}


def _run(
    tiny_exports: dict[str, Path], llmlingua_factory: Any, docs: list[Any], options: list[dict[str, Any]]
) -> None:
    agree = total = same = cases = 0
    diffs = []
    for arch in ("bert", "xlmr"):
        ours = Compressor(tiny_exports[arch])
        ref = llmlingua_factory(arch)
        for d_i, doc in enumerate(docs):
            for opts in options:
                if "target_token" in opts and isinstance(doc, str) and not doc.strip():
                    continue  # upstream divides by zero on empty input (#144)
                ag, tot, eq, detail = _compare(ours, ref, doc, opts)
                agree += ag
                total += tot
                same += eq
                cases += 1
                if not eq:
                    diffs.append((arch, d_i, opts, detail))
    word_rate = agree / total
    case_rate = same / cases
    print(f"parity: words {agree}/{total} = {word_rate:.5f}; identical {same}/{cases} = {case_rate:.4f}")
    for arch, d_i, opts, _ in diffs:
        print("differs:", arch, d_i, opts)
    assert total > 0
    assert word_rate >= 0.999
    assert case_rate >= 0.95


def test_parity_subset(tiny_exports: dict[str, Path], llmlingua_factory: Any) -> None:
    docs = _docs()
    subset = [docs[i] for i in (0, 5, 6, 14, 18, 22)]
    _run(tiny_exports, llmlingua_factory, subset, [_OPTIONS[0], _OPTIONS[4], _OPTIONS[5]])


@pytest.mark.slow
def test_parity_full(tiny_exports: dict[str, Path], llmlingua_factory: Any) -> None:
    _run(tiny_exports, llmlingua_factory, _docs(), _OPTIONS)


def test_export_dir_name_does_not_matter(tiny_exports: dict[str, Path]) -> None:
    for arch, path in tiny_exports.items():
        assert "bert" not in path.name.replace("model-bert", "") and "roberta" not in path.name
        c = Compressor(path)
        assert c.classifier.subword_style == ("wordpiece" if arch == "bert" else "metaspace")
