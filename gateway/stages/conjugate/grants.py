"""The conjugate allow-list: which API key id may use which transform (and language)."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.stages.conjugate.languages import canonical

__all__ = ["ANONYMOUS", "Grants", "parse_grant"]

ANONYMOUS = "anonymous"
"""The key id of every request when ``auth.keys`` is empty."""


def parse_grant(entry: str) -> str:
    """An allow-list entry normalised: ``leet``, ``pig_latin``, ``translate:<canonical code>`` (``fr``,
    ``fra`` and ``fra_Latn`` all give ``translate:fr``) or ``translate:*``; ValueError otherwise."""
    entry = entry.strip()
    if entry in ("leet", "pig_latin"):
        return entry
    kind, sep, lang = entry.partition(":")
    if kind.strip() == "translate" and sep:
        if lang.strip() == "*":
            return "translate:*"
        code = canonical(lang)
        if code:
            return f"translate:{code}"
    raise ValueError(f"{entry!r} is not leet, pig_latin, translate:<language code> or translate:*")


class Grants:
    """Key id -> normalised grants; everything not granted is refused."""

    def __init__(self, allow: dict[str, Iterable[str]]) -> None:
        self._by_key = {key: frozenset(parse_grant(e) for e in entries) for key, entries in allow.items()}

    def allows(self, key_id: str, transform: str, language: str | None) -> bool:
        grants = self._by_key.get(key_id, frozenset())
        if transform != "translate":
            return transform in grants
        return "translate:*" in grants or f"translate:{canonical(language or '')}" in grants

    def __getitem__(self, key_id: str) -> frozenset[str]:
        return self._by_key.get(key_id, frozenset())
