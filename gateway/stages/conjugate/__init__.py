"""Conjugate prompting (arXiv 2309.10105): transform the prompt, back-transform the answer, audit every use."""

from __future__ import annotations

from gateway.stages.conjugate import leet, pig_latin
from gateway.stages.conjugate.audit import AuditError, AuditWriter
from gateway.stages.conjugate.translate import (
    SelfTranslator,
    Seq2SeqTranslator,
    Translator,
    TranslatorError,
    TranslatorUnavailable,
    UnknownLanguage,
)

__all__ = [
    "AuditError",
    "AuditWriter",
    "SelfTranslator",
    "Seq2SeqTranslator",
    "Translator",
    "TranslatorError",
    "TranslatorUnavailable",
    "UnknownLanguage",
    "leet",
    "pig_latin",
]
