"""Trie labels -> an OpenAI-compatible upstream's structured-output choice (vLLM structured_outputs / guided_choice)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.providers.choice import apply_choice, choice_fields

LABELS = ["billing", "bug report", "Zürich office", "😀"]


def _fields(decoder: dict[str, Any], style: str | None = "structured_outputs") -> dict[str, Any]:
    return choice_fields(decoder, style, model="m-1", backend="vllm")


def test_structured_outputs_style_is_vllm_0_12_choice() -> None:
    assert _fields({"name": "trie", "labels": LABELS}) == {"structured_outputs": {"choice": LABELS}}
    # a single label, explicitly: same thing; mode does not change what the upstream is asked
    single = {"name": "trie", "labels": LABELS, "max_labels": 1, "scoring": False, "mode": "any"}
    assert _fields(single) == {"structured_outputs": {"choice": LABELS}}


def test_guided_choice_style_is_older_vllm() -> None:
    out = _fields({"name": "trie", "labels": LABELS}, "guided_choice")
    assert out == {"guided_choice": LABELS}
    assert out["guided_choice"] is not LABELS  # a copy: the request's list is never shared


def test_upstream_without_choice_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequest) as e:
        _fields({"name": "trie", "labels": LABELS}, None)
    assert e.value.param == "promptwire.decoder.name"
    assert e.value.http_status == 400
    assert e.value.message == (
        "the upstream for model 'm-1' cannot constrain output to labels; configure "
        "backends.vllm.structured_choice: structured_outputs|guided_choice or use a local model"
    )


@pytest.mark.parametrize(
    ("decoder", "param", "words"),
    [
        ({"name": "trie", "labels": LABELS, "separator": ", "}, "separator", "multi-label"),
        ({"name": "trie", "labels": LABELS, "separator": ", ", "max_labels": 2}, "separator", "multi-label"),
        ({"name": "trie", "labels": LABELS, "max_labels": 3}, "max_labels", "exactly one label"),
        ({"name": "trie", "labels": LABELS, "scoring": True}, "scoring", "logits"),
        ({"name": "trie", "labels": LABELS, "scoring": "yes"}, "scoring", "true or false"),
        ({"name": "trie", "labels": LABELS, "mode": "fuzzy"}, "mode", "mode must be one of"),
        ({"name": "trie", "labels": LABELS, "temperature": 2}, "temperature", "unknown trie option"),
        ({"name": "trie"}, "labels", "needs labels"),
        ({"name": "uscd"}, "name", "local model"),
        ({"name": "decog", "labels": LABELS}, "name", "local model"),
    ],
)
def test_what_a_single_choice_cannot_express_is_rejected(decoder: dict[str, Any], param: str, words: str) -> None:
    for style in ("structured_outputs", "guided_choice"):
        with pytest.raises(InvalidRequest) as e:
            _fields(decoder, style)
        assert e.value.param == f"promptwire.decoder.{param}"
        assert words in e.value.message


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        ([], "must not be empty"),
        ("billing", "list of strings"),
        (None, "list of strings"),
        (["a", "b", "a"], "duplicate label 'a' (labels[2])"),
        (["a", ""], "labels[1] is empty"),
        (["a", 3], "labels[1] must be a string"),
    ],
)
def test_bad_labels_are_400_naming_labels(labels: Any, words: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        _fields({"name": "trie", "labels": labels})
    assert e.value.param == "promptwire.decoder.labels"
    assert words in e.value.message


def test_apply_choice_merges_and_refuses_conflicting_constraints() -> None:
    body = {"model": "m-1", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2,
            "response_format": {"type": "text"}}
    out = apply_choice(body, {"name": "trie", "labels": LABELS}, "guided_choice", model="m-1", backend="vllm")
    assert out == {**body, "guided_choice": LABELS}
    assert "guided_choice" not in body  # the caller's body is not modified
    for key, value in [("response_format", {"type": "json_object"}), ("guided_regex", "a+"),
                       ("structured_outputs", {"json": {}}), ("guided_choice", ["x"])]:
        with pytest.raises(InvalidRequest) as e:
            apply_choice({**body, key: value}, {"name": "trie", "labels": LABELS}, "structured_outputs",
                         model="m-1", backend="vllm")
        assert e.value.param == key


def test_style_outside_the_config_enum_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="structured_choice must be one of"):
        _fields({"name": "trie", "labels": LABELS}, "json_schema")


def test_proxy_path_does_not_import_torch() -> None:
    code = ("import sys; import gateway.providers.choice, gateway.providers.openai; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
