"""IDP-text: pick a text instruction by embedding similarity to the user's last message (any backend).

Not IDP: no soft prompts and no attention — a sentence encoder compares the query with each entry's
description. It works with black-box upstreams, where IDP cannot run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.types import ChatMessage, GatewayRequest

__all__ = [
    "SYSTEM_ROLES",
    "TextChoice",
    "TextEntry",
    "TextSelector",
    "entries_from_config",
    "query_text",
    "with_instruction",
]

SYSTEM_ROLES = ("system", "developer")
"""Roles whose message the chosen text is prepended to (the first such message)."""
SEPARATOR = "\n\n"
"""Between the chosen text and an existing system message or completion prompt."""


@dataclass(frozen=True)
class TextEntry:
    """One pool entry: ``text`` is what the model gets, ``description`` what the query is compared with."""

    name: str
    text: str
    description: str


@dataclass(frozen=True)
class TextChoice:
    index: int | None
    """The chosen entry, or None when no entry reaches the threshold and there is no fallback."""
    best: int
    """The highest-scoring entry (ties to the lower index), chosen or not."""
    scores: tuple[float, ...]
    """Cosine similarity of the query with each entry's description, in pool order."""
    fallback: bool = False
    """True when the best score was under the threshold and the fallback entry was used."""


class TextSelector:
    """Embeds every description once; `select` embeds one query and compares (cosine similarity)."""

    def __init__(self, entries: Sequence[TextEntry], encoder: Any, *, threshold: float,
                 fallback: str | None = None) -> None:
        if not entries:
            raise ValueError("an IDP-text pool needs at least one entry")
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"entry names repeat: {names}")
        if fallback is not None and fallback not in names:
            raise ValueError(f"fallback {fallback!r} is not an entry name ({', '.join(names)})")
        self.entries = tuple(entries)
        self.encoder = encoder
        self.threshold = float(threshold)
        self.fallback = None if fallback is None else names.index(fallback)
        self._descriptions = self._unit(encoder.embed([e.description for e in entries]))  # (m, D)

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # (.., D)
        return out

    def scores(self, query: str) -> np.ndarray:
        """(m,) cosine similarities of QUERY with the descriptions."""
        q = self._unit(self.encoder.embed([query]))  # (1, D)
        out: np.ndarray = (self._descriptions @ q[0]).astype(np.float64)  # (m,)
        return out

    def select(self, query: str) -> TextChoice:
        s = self.scores(query)
        best = int(np.argmax(s))  # numpy returns the first maximum: ties go to the lower index
        scores = tuple(float(v) for v in s)
        if scores[best] >= self.threshold:
            return TextChoice(best, best, scores)
        if self.fallback is not None:
            return TextChoice(self.fallback, best, scores, fallback=True)
        return TextChoice(None, best, scores)


def query_text(req: GatewayRequest) -> str | None:
    """What IDP-text compares: the last user message (chat) or the prompt text (completions); None if absent."""
    if req.kind == "chat":
        for m in reversed(req.messages):
            if m.role == "user":
                return m.text()
        return None
    text = req.prompt_text()
    return text if text else None


def _prepend(content: Any, text: str) -> Any:
    if isinstance(content, str):
        return text + SEPARATOR + content if content else text
    if isinstance(content, list):
        return [{"type": "text", "text": text + SEPARATOR}, *content]
    return text


def with_instruction(req: GatewayRequest, text: str) -> GatewayRequest:
    """REQ with TEXT as its system instruction.

    Chat: prepended (then a blank line) to the first system/developer message, or a new system message
    at the start when there is none. Completions: prepended to a string prompt (each, for a list of
    strings). A token-id prompt is returned unchanged.
    """
    if req.kind == "chat":
        msgs = list(req.messages)
        for i, m in enumerate(msgs):
            if m.role in SYSTEM_ROLES:
                msgs[i] = dataclasses.replace(m, content=_prepend(m.content, text), content_given=True)
                break
        else:
            msgs.insert(0, ChatMessage(role="system", content=text))
        return dataclasses.replace(req, messages=tuple(msgs))
    p = req.prompt
    if isinstance(p, str):
        return dataclasses.replace(req, prompt=_prepend(p, text))
    if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
        return dataclasses.replace(req, prompt=[_prepend(x, text) for x in p])
    return req


def entries_from_config(raw: Sequence[Mapping[str, Any]]) -> list[TextEntry]:
    """``[{name, text, description}, ...]`` -> entries (types already checked by the config schema)."""
    return [TextEntry(str(e["name"]), str(e["text"]), str(e["description"])) for e in raw]
