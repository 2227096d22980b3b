"""Conjugate prompting (arXiv 2309.10105): transform the prompt, back-transform the answer, audit every use."""

from __future__ import annotations

from gateway.stages.conjugate import leet, pig_latin
from gateway.stages.conjugate.audit import AuditError, AuditWriter
from gateway.stages.conjugate.grants import ANONYMOUS, Grants, parse_grant
from gateway.stages.conjugate.stage import ConjugateHook, ConjugateStage, make_conjugate_stage
from gateway.stages.conjugate.translate import (
    SelfTranslator,
    Seq2SeqTranslator,
    Translator,
    TranslatorError,
    TranslatorUnavailable,
    UnknownLanguage,
)

__all__ = [
    "ANONYMOUS",
    "AuditError",
    "AuditWriter",
    "ConjugateHook",
    "ConjugateStage",
    "Grants",
    "SelfTranslator",
    "Seq2SeqTranslator",
    "Translator",
    "TranslatorError",
    "TranslatorUnavailable",
    "UnknownLanguage",
    "leet",
    "make_conjugate_stage",
    "parse_grant",
    "pig_latin",
]
