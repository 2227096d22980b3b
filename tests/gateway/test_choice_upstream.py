"""Trie labels through the openai provider: sent as the upstream's structured-output choice."""

from __future__ import annotations

from typing import Any

import openai
import pytest

MSG = [{"role": "user", "content": "classify: the invoice is late"}]
LABELS = ["billing", "shipping", "other"]


def _config(url: str, style: str | None) -> dict[str, Any]:
    backend: dict[str, Any] = {"type": "openai", "base_url": url}
    if style is not None:
        backend["structured_choice"] = style
    return {"server": {"grpc_port": None}, "backends": {"up": backend}}


@pytest.mark.parametrize(
    ("style", "field", "value"),
    [("structured_outputs", "structured_outputs", {"choice": LABELS}), ("guided_choice", "guided_choice", LABELS)],
)
def test_labels_reach_the_upstream_as_its_choice_field(
    make_upstream: Any, make_proxy: Any, style: str, field: str, value: Any
) -> None:
    up = make_upstream(reply="billing")
    proxy = make_proxy(_config(up.url, style))
    with proxy.client() as client:
        resp = client.chat.completions.create(
            model="test-model", messages=MSG,  # type: ignore[arg-type]
            extra_body={"promptwire": {"decoder": {"name": "trie", "labels": LABELS}}},
        )
    assert resp.choices[0].message.content == "billing"
    sent = up.requests[-1].body
    assert sent is not None and sent[field] == value
    assert "promptwire" not in sent


def test_upstream_without_choice_support_is_a_clear_400(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url, None))
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="test-model", messages=MSG,  # type: ignore[arg-type]
            extra_body={"promptwire": {"decoder": {"name": "trie", "labels": LABELS}}},
        )
    body: Any = info.value.body
    assert body["param"] == "promptwire.decoder.name" and "structured_choice" in body["message"]
    assert body["code"] == "decoder_not_available"
    assert not [r for r in up.requests if r.path.endswith("/chat/completions")]


def test_multi_label_cannot_be_one_choice(make_upstream: Any, make_proxy: Any) -> None:
    up = make_upstream()
    proxy = make_proxy(_config(up.url, "structured_outputs"))
    with proxy.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="test-model", messages=MSG,  # type: ignore[arg-type]
            extra_body={"promptwire": {"decoder": {"name": "trie", "labels": LABELS, "separator": ", ",
                                                   "max_labels": 2}}},
        )
    body: Any = info.value.body
    assert body["param"] in ("promptwire.decoder.separator", "promptwire.decoder.max_labels")
