"""The ``decog`` decoder factory: options -> format automaton + HMM + cached backward table -> processor."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from decoders.decog.hmm import HMM, HMMError, tokenizer_fingerprint
from decoders.decog.steer import DecogProcessor, FormatIndex
from decoders.decog.table import BackwardTable, build_table
from decoders.formats import FORMAT_KINDS, FormatError, compile_format
from decoders.processor import DecoderContext, DecoderOptionError
from decoders.resources import ResourceCache

__all__ = ["OPTIONS", "DecogSetup", "build", "build_decog", "format_index", "load_hmms", "parse_options", "prepare",
           "table_for"]

logger = logging.getLogger(__name__)

OPTIONS = frozenset({"format", "hmm", "prune_top_k"})
_P = "promptwire.decoder."
MIN_BUCKET = 16
MAX_TABLE_BYTES = 2 << 30
"""A backward table larger than this is refused (a 400 naming the format): lower max_tokens or the format's size."""


def parse_options(options: Mapping[str, Any]) -> tuple[str, str, str, int | None]:
    """Validate the client's options -> (format kind, format source, HMM name, prune_top_k)."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise DecoderOptionError(f"unknown decog option {unknown[0]!r} (allowed: {sorted(OPTIONS)})", _P + unknown[0])
    fmt = options.get("format")
    if not isinstance(fmt, Mapping) or len(fmt) != 1 or next(iter(fmt)) not in FORMAT_KINDS:
        raise DecoderOptionError('format must be an object with exactly one key, "template" or "regex"',
                                 _P + "format")
    kind, source = next(iter(fmt.items()))
    if not isinstance(source, str):
        raise DecoderOptionError(f"format.{kind} must be a string", f"{_P}format.{kind}")
    name = options.get("hmm")
    if not isinstance(name, str) or not name:
        raise DecoderOptionError("hmm must name an HMM configured in decoders.decog.hmms", _P + "hmm")
    top_k = options.get("prune_top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise DecoderOptionError("prune_top_k must be an integer >= 1", _P + "prune_top_k")
    return kind, source, name, top_k


@dataclass(frozen=True)
class DecogSetup:
    """The ``decoders.decog`` section loaded for one model: what ``build`` receives as ``ctx.config``."""

    hmms: Mapping[str, HMM]
    """HMMs distilled for this model's tokenizer, by name."""
    mismatched: Mapping[str, str] = field(default_factory=dict)
    """Configured HMMs made for another tokenizer: name -> why (a request naming one is a 400)."""


def load_hmms(paths: Mapping[str, str], tokenizer: Any, device: torch.device | str = "cpu") -> DecogSetup:
    """Load every configured HMM; those distilled for another tokenizer are set aside with the reason.

    A missing or malformed file is an :class:`HMMError` naming the HMM."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    hmms: dict[str, HMM] = {}
    mismatched: dict[str, str] = {}
    for name, path in paths.items():
        try:
            hmm = HMM.load(path)
        except HMMError as exc:
            raise HMMError(f"HMM {name!r}: {exc}") from exc
        if hmm.fingerprint != fingerprint:
            mismatched[name] = f"HMM {name!r} ({path}) was distilled for a different tokenizer than this model's"
            continue
        if hmm.vocab_size != len(tokenizer):
            raise HMMError(f"HMM {name!r}: vocabulary {hmm.vocab_size} does not match the tokenizer's "
                           f"{len(tokenizer)}")
        hmms[name] = hmm.to(device)
    return DecogSetup(hmms, mismatched)


def prepare(section: Mapping[str, Any], ctx: DecoderContext) -> DecogSetup:
    """Load ``decoders.decog`` (``{"hmms": {name: path}}``) for the model of ``ctx``, at start.

    Raises ValueError (HMMError) for a missing or malformed file, or when HMMs are configured and none of
    them was distilled for this model's tokenizer; a partial match is logged and kept."""
    paths = dict(section.get("hmms") or {})
    setup = load_hmms(paths, ctx.tokenizer, ctx.device)
    if paths and not setup.hmms:
        raise HMMError("none of the configured HMMs was distilled for this model's tokenizer ("
                       + "; ".join(setup.mismatched.values()) + ")")
    for why in setup.mismatched.values():
        logger.warning("decog: %s; requests naming it on this model get a 400", why)
    logger.info("decog: %d HMM(s) ready: %s", len(setup.hmms),
                ", ".join(f"{n} (h={h.hidden_states})" for n, h in setup.hmms.items()) or "none")
    return setup


def format_index(kind: str, source: str, ctx: DecoderContext, device: torch.device) -> FormatIndex:
    """The compiled format (cached per model); FormatError -> DecoderOptionError naming the format."""

    def build() -> FormatIndex:
        return FormatIndex(compile_format(kind, source, ctx.tokenizer, ctx.resources), device, ctx.vocab_size)

    try:
        index: FormatIndex = ctx.resources.get_or_build(("decog.format", kind, source, str(device)), build)
    except FormatError as exc:
        raise DecoderOptionError(str(exc), f"{_P}format.{kind}") from exc
    return index


def _bucket(budget: int) -> int:
    return max(MIN_BUCKET, 1 << max(0, budget - 1).bit_length())


def table_for(resources: ResourceCache, hmm_key: str, hmm: HMM, index: FormatIndex, budget: int
              ) -> tuple[BackwardTable, bool]:
    """The backward table answering ``budget`` tokens left (cached per format, HMM and budget bucket —
    a table for a larger bucket serves smaller budgets); returns (table, was it cached)."""
    dfa = index.dfa
    need = _bucket(budget)
    bucket = need
    while bucket <= max(need, 1 << 16):
        hit = resources.get(("decog.table", hmm_key, dfa.kind, dfa.source, bucket))
        if hit is not None:
            return hit, True
        bucket *= 2
    size = (need + 1) * dfa.num_states * hmm.hidden_states * 4
    if size > MAX_TABLE_BYTES:
        raise DecoderOptionError(
            f"the backward table for this format would take {size / 2**30:.1f} GiB ({dfa.num_states} automaton states "
            f"x {need + 1} steps x {hmm.hidden_states} hidden states); use a smaller max_tokens or format",
            f"{_P}format.{dfa.kind}")
    key = ("decog.table", hmm_key, dfa.kind, dfa.source, need)
    table: BackwardTable = resources.get_or_build(key, lambda: build_table(hmm, dfa, need))
    if table.nbytes > resources.max_bytes:
        logger.warning("decog: a %.0f MB backward table does not fit the model's resource cache (%.0f MB), so "
                       "every request with this format rebuilds it; give the engine a larger resource cache",
                       table.nbytes / 1e6, resources.max_bytes / 1e6)
    return table, False


def build(options: Mapping[str, Any], ctx: DecoderContext) -> DecogProcessor:
    """The gateway table's factory: HMMs come from ``ctx.config`` (what :func:`prepare` loaded at start)."""
    setup = ctx.config if isinstance(ctx.config, DecogSetup) else DecogSetup({})
    return build_decog(options, ctx, setup.hmms, setup.mismatched)


def build_decog(options: Mapping[str, Any], ctx: DecoderContext, hmms: Mapping[str, HMM],
                mismatched: Mapping[str, str] | None = None) -> DecogProcessor:
    """One request's Deco-G processor; bad options -> DecoderOptionError naming the option."""
    kind, source, name, top_k = parse_options(options)
    hmm = hmms.get(name)
    if hmm is None:
        if mismatched and name in mismatched:
            raise DecoderOptionError(f"{mismatched[name]}; it cannot steer this model", _P + "hmm")
        known = ", ".join(sorted(hmms)) or "none configured in decoders.decog.hmms"
        raise DecoderOptionError(f"unknown HMM {name!r} (available: {known})", _P + "hmm")
    index = format_index(kind, source, ctx, hmm.device)
    budget = ctx.max_new_tokens
    if index.dfa.min_tokens > budget:
        raise DecoderOptionError(
            f"the {kind} cannot be completed within max_tokens={budget}: its shortest output takes "
            f"{index.dfa.min_tokens} tokens", f"{_P}format.{kind}")
    table, cached = table_for(ctx.resources, hmm.uid, hmm, index, budget)
    return DecogProcessor(index, table, hmm, ctx.eos_token_ids, budget, top_k, cached)
