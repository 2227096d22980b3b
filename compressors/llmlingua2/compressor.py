"""Public LLMLingua-2 compressor: default mode (structure-aware, whitespace-preserving) and compat mode."""

from __future__ import annotations

import logging
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .compat import CompatOptions, compat_steps
from .errors import CompressorError, validate_common
from .export import ensure_exported
from .model import Inference, Steps, TokenClassifier, cl100k, drive
from .structure import Protections, Span, block_ranges, split_markers, token_ranges

__all__ = ["CompressResult", "Compressor", "MessagesResult"]

logger = logging.getLogger(__name__)

_WINDOW = 510  # model positions minus [CLS]/[SEP]
_SEGMENT_CHARS = 50_000  # text is tokenized this much at a time (bounded memory)
_FLUSH_WINDOWS = 256  # run inference once this many windows are pending
_SENTENCE_END = {".", "!", "?", ";", "。", "！", "？", "\n"}
_PUNCT = set(string.punctuation)
_PUNCT_CHARS = _PUNCT | set("。，、！？；：…")
DEFAULT_ROLES = ("system", "context", "tool", "user")


@dataclass
class CompressResult:
    """Compressed text and its cl100k_base token counts."""

    text: str
    origin_tokens: int
    compressed_tokens: int
    word_labels: list[tuple[str, int]] | None = None
    """(word, 1 = kept) for every scored word, when requested."""

    @property
    def rate(self) -> float:
        return self.compressed_tokens / self.origin_tokens if self.origin_tokens else 1.0


@dataclass
class MessagesResult:
    messages: list[dict[str, Any]]
    origin_tokens: int
    compressed_tokens: int


@dataclass
class _Words:
    """Scored words of one compressible span (char offsets into its text)."""

    text: str
    starts: np.ndarray  # (W,) int64
    ends: np.ndarray  # (W,) int64
    probs: np.ndarray  # (W,) float32
    ntok: np.ndarray  # (W,) int64
    forced: np.ndarray  # (W,) bool
    keep: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (W,)


class Compressor:
    """LLMLingua-2 on ONNX Runtime.

    MODEL is an exported directory, or a checkpoint directory / Hugging Face id that is exported
    (and cached under CACHE_DIR) on first use. `keep_probs` is the thread-safe batch entry point.
    Each public method has a ``*_steps`` twin returning a step generator (`model.Steps`): the
    serving layer drives many of those at once and packs their windows into shared calls.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        int8: bool = False,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        cache_dir: str | Path | None = None,
        max_batch_tokens: int = 16_384,
        spinning: bool = False,
    ) -> None:
        path = ensure_exported(model, int8=int8, cache_dir=cache_dir)
        self.classifier = TokenClassifier(
            path,
            providers=providers,
            intra_op_threads=intra_op_threads,
            spinning=spinning,
            max_batch_tokens=max_batch_tokens,
        )
        spec = self.classifier.specials
        self._cls_id = self.classifier.token_id(spec.cls or "[CLS]")
        self._sep_id = self.classifier.token_id(spec.sep or "[SEP]")
        self._pad_id = self.classifier.token_id(spec.pad) if spec.pad else 0

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider in use."""
        return self.classifier.provider

    def keep_probs(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Keep-probabilities for token-id sequences (already with [CLS]/[SEP]); thread-safe."""
        return self.classifier.keep_probs(batch, pad_id=self._pad_id)

    # -- compat ------------------------------------------------------------------------------------

    def compress_llmlingua(self, context: str | list[str], **options: Any) -> dict[str, Any]:
        """Exactly llmlingua 0.2.2's `compress_prompt(context, **options)` (LLMLingua-2 path)."""
        return drive(self.compress_llmlingua_steps(context, **options), self.classifier.score)

    def compress_llmlingua_steps(self, context: str | list[str], **options: Any) -> Steps[dict[str, Any]]:
        """`compress_llmlingua` as a step generator."""
        known = set(CompatOptions.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise CompressorError(unknown[0], "unknown option")
        opts = CompatOptions(**options)
        result: dict[str, Any] = yield from compat_steps(self.classifier, context, opts)
        return result

    # -- default mode --------------------------------------------------------------------------------

    def compress(
        self,
        text: str | bytes,
        *,
        rate: float = 0.5,
        target_token: int | None = None,
        force_tokens: Sequence[str] = (),
        protections: Protections | None = None,
        return_word_labels: bool = False,
    ) -> CompressResult:
        """Compress one text; markers and protections decide which spans may change."""
        steps = self.compress_steps(
            text,
            rate=rate,
            target_token=target_token,
            force_tokens=force_tokens,
            protections=protections,
            return_word_labels=return_word_labels,
        )
        return drive(steps, self.classifier.score)

    def compress_steps(
        self,
        text: str | bytes,
        *,
        rate: float = 0.5,
        target_token: int | None = None,
        force_tokens: Sequence[str] = (),
        protections: Protections | None = None,
        return_word_labels: bool = False,
    ) -> Steps[CompressResult]:
        """`compress` as a step generator."""
        (doc,) = validate_common(text, rate, target_token, list(force_tokens))
        spans = split_markers(doc)
        out, n0, n1, labels = yield from self._compress_spans(
            [spans], rate, target_token, force_tokens, protections or Protections(), return_word_labels
        )
        return CompressResult(out[0], n0, n1, labels)

    def compress_messages(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        rate: float = 0.5,
        target_token: int | None = None,
        roles: Sequence[str] = DEFAULT_ROLES,
        compress_last_user: bool = False,
        force_tokens: Sequence[str] = (),
        protections: Protections | None = None,
    ) -> MessagesResult:
        """Compress chat messages: only ROLES, never the last user message unless asked."""
        steps = self.compress_messages_steps(
            messages,
            rate=rate,
            target_token=target_token,
            roles=roles,
            compress_last_user=compress_last_user,
            force_tokens=force_tokens,
            protections=protections,
        )
        return drive(steps, self.classifier.score)

    def compress_messages_steps(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        rate: float = 0.5,
        target_token: int | None = None,
        roles: Sequence[str] = DEFAULT_ROLES,
        compress_last_user: bool = False,
        force_tokens: Sequence[str] = (),
        protections: Protections | None = None,
    ) -> Steps[MessagesResult]:
        """`compress_messages` as a step generator."""
        validate_common("", rate, target_token, list(force_tokens))
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        per_msg: list[list[Span]] = []
        for i, m in enumerate(messages):
            content = m.get("content")
            if content is not None and not isinstance(content, str):
                raise CompressorError(f"messages[{i}].content", "must be text")
            allowed = m.get("role") in roles and (i != last_user or compress_last_user)
            per_msg.append(split_markers(content or "", allowed) if content else [])
        out, n0, n1, _ = yield from self._compress_spans(
            per_msg, rate, target_token, force_tokens, protections or Protections(), False
        )
        new = []
        for m, text in zip(messages, out, strict=True):
            d = dict(m)
            if m.get("content") is not None:
                d["content"] = text
            new.append(d)
        return MessagesResult(new, n0, n1)

    # -- internals -----------------------------------------------------------------------------------

    def _compress_spans(
        self,
        docs: list[list[Span]],
        rate: float,
        target_token: int | None,
        force_tokens: Sequence[str],
        prot: Protections,
        want_labels: bool,
    ) -> Steps[tuple[list[str], int, int, list[tuple[str, int]] | None]]:
        enc = cl100k()
        force = set(force_tokens)
        to_score: list[tuple[str, list[tuple[int, int]]]] = []
        layout: list[list[int | str]] = []
        fixed_tokens = 0
        for spans in docs:
            parts: list[int | str] = []
            for span in spans:
                if not span.compress:
                    parts.append(span.text)
                    fixed_tokens += len(enc.encode_ordinary(span.text))
                    continue
                pos = 0
                for s, e in [*block_ranges(span.text, prot), (len(span.text), len(span.text))]:
                    if s > pos:
                        piece = span.text[pos:s]
                        parts.append(len(to_score))
                        to_score.append((piece, token_ranges(piece, prot)))
                    if e > s:
                        parts.append(span.text[s:e])
                        fixed_tokens += len(enc.encode_ordinary(span.text[s:e]))
                    pos = e
            layout.append(parts)
        tables_all = (yield from self._score_all(to_score, force)) if to_score else []
        scored: list[list[_Words | str]] = [
            [tables_all[p] if isinstance(p, int) else p for p in parts] for parts in layout
        ]

        tables = [p for parts in scored for p in parts if isinstance(p, _Words)]
        total_words = int(sum(t.ntok.sum() for t in tables))
        budget = rate * total_words
        if target_token is not None and target_token > 0:
            # like upstream, a token target overrides the rate
            budget = max(0.0, float(target_token) - fixed_tokens)
        _select(tables, budget)

        texts: list[str] = []
        labels: list[tuple[str, int]] | None = [] if want_labels else None
        for doc_parts in scored:
            texts.append("".join(_render(p) if isinstance(p, _Words) else p for p in doc_parts))
            if labels is not None:
                for p in doc_parts:
                    if isinstance(p, _Words):
                        labels.extend(
                            (p.text[s:e], int(k)) for s, e, k in zip(p.starts, p.ends, p.keep, strict=True)
                        )
        compressed = sum(len(enc.encode_ordinary(t)) for t in texts)
        # token counts of the whole text (boundaries between parts can merge tokens)
        origin = sum(len(enc.encode_ordinary("".join(s.text for s in spans))) for spans in docs)
        return texts, origin, compressed, labels

    def _score_all(
        self, pieces: list[tuple[str, list[tuple[int, int]]]], force: set[str]
    ) -> Steps[list[_Words]]:
        """Score every word of every piece; windows of many pieces share inference requests.

        Token-level data lives only until its windows are inferred (at most ~_FLUSH_WINDOWS of them);
        what is kept per word is a few numbers, so memory stays bounded for long inputs.
        """
        words: list[list[_SegWords]] = [[] for _ in pieces]
        pending: list[tuple[int, _Segment]] = []
        n_windows = 0

        def flush() -> Steps[None]:
            yield from self._infer([sg for _, sg in pending])
            for pj, sg in pending:
                words[pj].append(_segment_words(sg, force))
            pending.clear()

        for pi, (text, _) in enumerate(pieces):
            for start, seg in _segments(text):
                sg = self._prepare(seg, start)
                pending.append((pi, sg))
                n_windows += len(sg.windows)
                if n_windows >= _FLUSH_WINDOWS:
                    yield from flush()
                    n_windows = 0
        yield from flush()
        return [_finish(text, words[pi], prot) for pi, (text, prot) in enumerate(pieces)]

    def _prepare(self, seg: str, seg_start: int) -> _Segment:
        """Tokenize one segment, find word starts and model windows."""
        enc = self.classifier.tokenizer.encode(seg, add_special_tokens=False)
        toks, ids, offs = enc.tokens, enc.ids, enc.offsets
        n = len(ids)
        wordpiece = self.classifier.subword_style == "wordpiece"
        begins = np.zeros(n, dtype=bool)  # (n,)
        sent_end = np.zeros(n, dtype=bool)  # (n,) token i ends a sentence
        for i, t in enumerate(toks):
            if i == 0 or offs[i][0] > offs[i - 1][1] or not t.strip("▁").strip():
                begins[i] = True
            elif not toks[i - 1].strip("▁").strip():
                begins[i] = True
            elif wordpiece:
                begins[i] = not t.startswith("##")
            else:
                begins[i] = t.startswith("▁") or t in _PUNCT
            nxt = offs[i + 1][0] if i + 1 < n else len(seg)
            sent_end[i] = t.lstrip("▁") in _SENTENCE_END or "\n" in seg[offs[i][1] : nxt]
        return _Segment(
            seg, seg_start, ids, offs, begins, _windows(begins, sent_end), np.zeros(n, np.float32)
        )

    def _infer(self, segs: list[_Segment]) -> Steps[None]:
        """Fill the token probabilities of every window (one request; the runner packs by length)."""
        jobs = [(sg, a, b) for sg in segs for a, b in sg.windows]
        if not jobs:
            return
        seqs = [[self._cls_id, *sg.ids[a:b], self._sep_id] for sg, a, b in jobs]
        probs = yield Inference(seqs, pad_id=self._pad_id)
        for (sg, a, b), p in zip(jobs, probs, strict=True):
            sg.token_probs[a:b] = p[1:-1]


@dataclass
class _Segment:
    """One tokenized segment of a piece and its model windows."""

    text: str
    start: int
    ids: list[int]
    offsets: list[tuple[int, int]]
    begins: np.ndarray  # (n,) bool
    windows: list[tuple[int, int]]
    token_probs: np.ndarray  # (n,) float32


_SegWords = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _segment_words(sg: _Segment, force: set[str]) -> _SegWords:
    """(starts, ends, probs, cl100k counts, force-token flags) of a segment's words, in piece offsets."""
    n = len(sg.ids)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0, dtype=np.float32), z, np.zeros(0, dtype=bool)
    wstart = np.flatnonzero(sg.begins)  # (W,)
    counts = np.diff(np.append(wstart, n))  # (W,)
    wprob = (np.add.reduceat(sg.token_probs, wstart) / counts).astype(np.float32)  # (W,)
    last_tok = np.append(wstart[1:], n) - 1
    starts = np.array([sg.offsets[i][0] for i in wstart], dtype=np.int64)
    ends = np.array([sg.offsets[i][1] for i in last_tok], dtype=np.int64)
    seg = sg.text
    # metaspace offsets may include the replaced space: words are trimmed to their visible chars
    for w in range(len(starts)):
        while starts[w] < ends[w] and seg[starts[w]].isspace():
            starts[w] += 1
        while ends[w] > starts[w] and seg[ends[w] - 1].isspace():
            ends[w] -= 1
    keep = ends > starts
    starts, ends, wprob = starts[keep], ends[keep], wprob[keep]
    texts = [seg[a:b] for a, b in zip(starts, ends, strict=True)]
    ntok = np.array([_word_tokens(t) for t in texts], dtype=np.int64)  # (W,)
    forced = np.array([t in force for t in texts], dtype=bool)  # (W,)
    return starts + sg.start, ends + sg.start, wprob, ntok, forced


def _finish(text: str, parts: list[_SegWords], protected: list[tuple[int, int]]) -> _Words:
    """Concatenate a piece's segment words; words overlapping a protected range are forced."""
    if not parts:
        z = np.zeros(0, dtype=np.int64)
        return _Words(text, z, z, np.zeros(0, dtype=np.float32), z, np.zeros(0, dtype=bool))
    st, en, pr, ntok, forced = (np.concatenate([p[k] for p in parts]) for k in range(5))
    if protected:
        rs = np.array([r[0] for r in protected])  # (R,)
        re_ = np.array([r[1] for r in protected])  # (R,)
        idx = np.searchsorted(re_, st, side="right")
        ok = idx < len(rs)
        forced[ok] |= rs[idx[ok]] < en[ok]
    return _Words(text, st, en, pr, ntok, forced)


@lru_cache(maxsize=200_000)
def _word_tokens(word: str) -> int:
    return len(cl100k().encode_ordinary(word))


def _segments(text: str) -> Iterator[tuple[int, str]]:
    """Cut TEXT into pieces of about _SEGMENT_CHARS at a newline or space."""
    pos = 0
    n = len(text)
    while pos < n:
        end = min(n, pos + _SEGMENT_CHARS)
        if end < n:
            cut = text.rfind("\n", pos + _SEGMENT_CHARS // 2, end)
            if cut < 0:
                cut = text.rfind(" ", pos + _SEGMENT_CHARS // 2, end)
            if cut > pos:
                end = cut + 1
        yield pos, text[pos:end]
        pos = end


def _windows(begins: np.ndarray, sent_end: np.ndarray) -> list[tuple[int, int]]:
    """Token windows of at most _WINDOW, cut after a sentence end, else at a word start."""
    n = len(begins)
    out: list[tuple[int, int]] = []
    st = 0
    while st < n:
        if n - st <= _WINDOW:
            out.append((st, n))
            break
        end = st + _WINDOW
        cut = -1
        for b in range(end, st, -1):  # window [st, b): b must begin a word
            if begins[b] and sent_end[b - 1]:
                cut = b
                break
        if cut < 0:
            for b in range(end, st, -1):
                if begins[b]:
                    cut = b
                    break
        if cut < 0:
            cut = end
        out.append((st, cut))
        st = cut
    return out


def _select(tables: list[_Words], budget: float) -> None:
    """Keep forced words, then the most probable words until BUDGET cl100k tokens are used."""
    if not tables:
        return
    probs = np.concatenate([t.probs for t in tables])  # (W,)
    ntok = np.concatenate([t.ntok for t in tables])  # (W,)
    forced = np.concatenate([t.forced for t in tables])  # (W,)
    keep = forced.copy()
    remaining = budget - float(ntok[forced].sum())
    free = np.flatnonzero(~forced)
    order = free[np.argsort(-probs[free], kind="stable")]
    cum = np.cumsum(ntok[order])
    keep[order[cum <= remaining]] = True
    k = 0
    for t in tables:
        t.keep = keep[k : k + len(t.probs)]
        k += len(t.probs)


def _render(w: _Words) -> str:
    """Kept words with the original whitespace: the gap with the most newlines between two kept words."""
    text = w.text
    if len(w.starts) == 0:
        return text
    pieces: list[str] = [text[: w.starts[0]] if w.keep[0] else _lead_ws(text, int(w.starts[0]))]
    prev_end = -1
    gap_best = ""
    for i in range(len(w.starts)):
        s, e = int(w.starts[i]), int(w.ends[i])
        gap = text[(int(w.ends[i - 1]) if i else s) : s]
        if i and gap.count("\n") >= gap_best.count("\n") and (gap or not gap_best):
            gap_best = gap if gap.strip() == "" else "".join(c for c in gap if c.isspace())
        if w.keep[i]:
            if prev_end >= 0:
                word = text[s:e]
                # punctuation that was attached to its word stays attached to the kept word before it
                glue = gap == "" and "\n" not in gap_best and all(c in _PUNCT_CHARS for c in word)
                pieces.append("" if glue else gap_best)
            pieces.append(text[s:e])
            prev_end = e
            gap_best = ""
    last_end = int(w.ends[-1])
    pieces.append(text[last_end:] if text[last_end:].strip() == "" else "")
    return "".join(pieces)


def _lead_ws(text: str, first: int) -> str:
    lead = text[:first]
    return lead if lead.strip() == "" else ""
