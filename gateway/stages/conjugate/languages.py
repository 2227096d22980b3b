"""Language codes: ISO 639-1 as clients write them, and each translator family's own spelling."""

from __future__ import annotations

import re

__all__ = ["LANGUAGES", "Language", "canonical", "english_name", "flores", "iso3"]

Language = tuple[str, str, str]
"""(English name, ISO 639-3 / 639-2 code, FLORES-200 code as NLLB spells it)."""

LANGUAGES: dict[str, Language] = {
    "ar": ("Arabic", "ara", "arb_Arab"),
    "bg": ("Bulgarian", "bul", "bul_Cyrl"),
    "bn": ("Bengali", "ben", "ben_Beng"),
    "ca": ("Catalan", "cat", "cat_Latn"),
    "cs": ("Czech", "ces", "ces_Latn"),
    "da": ("Danish", "dan", "dan_Latn"),
    "de": ("German", "deu", "deu_Latn"),
    "el": ("Greek", "ell", "ell_Grek"),
    "en": ("English", "eng", "eng_Latn"),
    "es": ("Spanish", "spa", "spa_Latn"),
    "et": ("Estonian", "est", "est_Latn"),
    "fa": ("Persian", "fas", "pes_Arab"),
    "fi": ("Finnish", "fin", "fin_Latn"),
    "fr": ("French", "fra", "fra_Latn"),
    "he": ("Hebrew", "heb", "heb_Hebr"),
    "hi": ("Hindi", "hin", "hin_Deva"),
    "hr": ("Croatian", "hrv", "hrv_Latn"),
    "hu": ("Hungarian", "hun", "hun_Latn"),
    "id": ("Indonesian", "ind", "ind_Latn"),
    "it": ("Italian", "ita", "ita_Latn"),
    "ja": ("Japanese", "jpn", "jpn_Jpan"),
    "ko": ("Korean", "kor", "kor_Hang"),
    "lt": ("Lithuanian", "lit", "lit_Latn"),
    "lv": ("Latvian", "lav", "lvs_Latn"),
    "ml": ("Malayalam", "mal", "mal_Mlym"),
    "ms": ("Malay", "msa", "zsm_Latn"),
    "nl": ("Dutch", "nld", "nld_Latn"),
    "no": ("Norwegian", "nor", "nob_Latn"),
    "pl": ("Polish", "pol", "pol_Latn"),
    "pt": ("Portuguese", "por", "por_Latn"),
    "ro": ("Romanian", "ron", "ron_Latn"),
    "ru": ("Russian", "rus", "rus_Cyrl"),
    "sk": ("Slovak", "slk", "slk_Latn"),
    "sl": ("Slovenian", "slv", "slv_Latn"),
    "sr": ("Serbian", "srp", "srp_Cyrl"),
    "sv": ("Swedish", "swe", "swe_Latn"),
    "sw": ("Swahili", "swa", "swh_Latn"),
    "ta": ("Tamil", "tam", "tam_Taml"),
    "te": ("Telugu", "tel", "tel_Telu"),
    "th": ("Thai", "tha", "tha_Thai"),
    "tr": ("Turkish", "tur", "tur_Latn"),
    "uk": ("Ukrainian", "ukr", "ukr_Cyrl"),
    "ur": ("Urdu", "urd", "urd_Arab"),
    "vi": ("Vietnamese", "vie", "vie_Latn"),
    "zh": ("Chinese", "zho", "zho_Hans"),
}
"""The languages this module can name and map between families (others pass through verbatim)."""

_BY_OTHER = {code.lower(): iso for iso, (_, i3, fl) in LANGUAGES.items() for code in (i3, fl)}
FLORES_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
_PLAIN_CODE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$")


def canonical(code: str) -> str:
    """The ISO 639-1 code for a known language in any spelling (``fr``, ``FR``, ``fra``, ``fra_Latn``
    → ``fr``); an unknown but well-formed code as given (``gsw``, ``ast_Latn``, ``pt-BR``); ``""`` for
    something that is not a language code at all."""
    code = code.strip()
    if not _PLAIN_CODE.match(code):
        return ""
    low = code.lower()
    if low in LANGUAGES:
        return low
    return _BY_OTHER.get(low, code)


def english_name(iso: str) -> str | None:
    entry = LANGUAGES.get(iso)
    return entry[0] if entry else None


def iso3(iso: str) -> str | None:
    entry = LANGUAGES.get(iso)
    return entry[1] if entry else None


def flores(code: str) -> str | None:
    """NLLB's FLORES-200 spelling of a canonical code (a FLORES code passes through)."""
    if FLORES_CODE.match(code):
        return code
    entry = LANGUAGES.get(code)
    return entry[2] if entry else None
