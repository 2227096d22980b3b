"""Compat mode: the decisions of llmlingua 0.2.2 `compress_prompt(..., use_llmlingua2=True)`, quirks included."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import validate_common
from .model import Inference, Steps, TokenClassifier, cl100k

__all__ = ["CompatOptions", "compat_steps"]

_DIGIT = re.compile(r"\d")
_SPLIT_WORDS = re.compile(r'\b\w+\b|[<>=/!@#$%^&*()?":{}|\\`~;_+-]')
_MAX_SEQ_LEN = 512
_MAX_FORCE = 100


@dataclass
class CompatOptions:
    """The llmlingua2 parameters of `PromptCompressor.compress_prompt`, same names and defaults."""

    rate: float = 0.5
    target_token: float = -1
    use_context_level_filter: bool = True
    use_token_level_filter: bool = True
    target_context: int = -1
    context_level_rate: float = 1.0
    context_level_target_token: int = -1
    force_context_ids: list[int] | None = None
    return_word_label: bool = False
    word_sep: str = "\t\t|\t\t"
    label_sep: str = " "
    token_to_word: str = "mean"
    force_tokens: list[str] = field(default_factory=list)
    force_reserve_digit: bool = False
    drop_consecutive: bool = False
    chunk_end_tokens: list[str] = field(default_factory=lambda: [".", "\n"])
    max_batch_size: int = 1
    """Chunks per inference call. Upstream uses 50; each row is masked on its own, so the decisions are the
    same, and on CPU one chunk per call is faster and holds far less memory (a 50 x 512 batch keeps large
    attention buffers in onnxruntime's arena). Raise it on a GPU."""
    pad_to_max: bool = True
    """Pad every batch to 512 like upstream (False: pad to the longest chunk; same decisions up to float noise)."""


def _ntok(text: str) -> int:
    return len(cl100k().encode(text, disallowed_special=()))


class _Run:
    """State of one compat call (token map, special tokens) and its steps."""

    def __init__(self, clf: TokenClassifier, opts: CompatOptions) -> None:
        self.clf = clf
        self.opts = opts
        self.force_tokens = list(opts.force_tokens)
        self.token_map: dict[str, str] = {}
        for i, t in enumerate(self.force_tokens):
            if len(clf.tokenize(t)) != 1:
                self.token_map[t] = f"[NEW{i}]"
        self.placeholders = set(self.token_map.values())
        ends = list(opts.chunk_end_tokens)
        for c in list(ends):
            if c in self.token_map:
                ends.append(self.token_map[c])
        self.chunk_end = set(ends)
        self.wordpiece = clf.subword_style == "wordpiece"
        self.specials = clf.specials.names
        # upstream's dataset always uses BERT's literal strings, whatever the model
        self.cls_id = clf.token_id("[CLS]")
        self.sep_id = clf.token_id("[SEP]")
        self.pad_id = clf.token_id("[PAD]")

    # -- chunking -------------------------------------------------------------------------------

    def chunk(self, text: str) -> list[str]:
        max_len = _MAX_SEQ_LEN - 2
        tokens = self.clf.tokenize(text)
        n = len(tokens)
        out: list[str] = []
        st = 0
        while st < n:
            if st + max_len > n - 1:
                out.append(self.clf.tokens_to_string(tokens[st:n]))
                break
            ed = st + max_len
            for j in range(ed - st):
                if tokens[ed - j] in self.chunk_end:
                    ed = ed - j
                    break
            out.append(self.clf.tokens_to_string(tokens[st : ed + 1]))
            st = ed + 1
        return out

    # -- model ------------------------------------------------------------------------------------

    def token_probs(self, chunks: Sequence[str]) -> Steps[list[tuple[list[str], list[Any]]]]:
        """Per chunk: the active tokens (incl. the [CLS]/[SEP] stand-ins) and their keep-probabilities."""
        seqs: list[list[int]] = []
        masks: list[list[int]] = []
        for c in chunks:
            toks, ids = self.clf.encode(c)
            toks = ["[CLS]", *toks, "[SEP]"][:_MAX_SEQ_LEN]
            ids = [self.cls_id, *ids, self.sep_id][:_MAX_SEQ_LEN]
            seqs.append(ids)
            masks.append([0 if t == "[PAD]" else 1 for t in toks])
        results: list[tuple[list[str], list[Any]]] = []
        if not seqs:
            return results
        probs = yield Inference(
            seqs,
            pad_id=self.pad_id,
            masks=masks,
            pad_to=_MAX_SEQ_LEN if self.opts.pad_to_max else None,
            max_windows=self.opts.max_batch_size,
        )
        for ids, mask, p in zip(seqs, masks, probs, strict=True):
            active = [k for k, m in enumerate(mask) if m]
            results.append(([self.clf.id_to_token(ids[k]) for k in active], list(p[active])))
        return results

    # -- words ----------------------------------------------------------------------------------

    def _pure(self, token: str) -> str:
        return token.lstrip("#") if self.wordpiece else token.lstrip("▁")

    def _begins_word(self, token: str) -> bool:
        if self.wordpiece:
            pure = token.lstrip("#")
            if pure in self.force_tokens or pure in self.placeholders:
                return True
            return not token.startswith("##")
        if token in string.punctuation or token in self.force_tokens or token in self.placeholders:
            return True
        return token.startswith("▁")

    def _unplace(self, token: str) -> str:
        for ori, new in self.token_map.items():
            token = token.replace(new, ori)
        return token

    def merge(
        self, tokens: Sequence[str], probs: Sequence[Any]
    ) -> tuple[list[str], list[list[Any]], list[list[Any]]]:
        frd = self.opts.force_reserve_digit
        words: list[str] = []
        wprobs: list[list[Any]] = []
        wprobs_nf: list[list[Any]] = []
        prob_nf: Any = None
        for token, prob in zip(tokens, probs, strict=True):
            if token in self.specials:
                continue
            if self._begins_word(token):
                pure = self._pure(token)
                prob_nf = prob
                if pure in self.force_tokens or pure in self.placeholders:
                    prob = 1.0
                token = self._unplace(token)
                words.append(token)
                wprobs.append([1.0 if frd and _DIGIT.search(token) else prob])
                wprobs_nf.append([prob_nf])
            elif words:
                words[-1] += self._pure(token)
                wprobs[-1].append(1.0 if frd and _DIGIT.search(token) else prob)
                # upstream appends the word's first-token probability here
                wprobs_nf[-1].append(prob_nf)
        return words, wprobs, wprobs_nf

    def word_probs(self, token_probs: list[list[Any]]) -> list[Any]:
        if self.opts.token_to_word == "mean":
            return [sum(p) / len(p) for p in token_probs]
        return [p[0] for p in token_probs]

    def strip_word(self, w: str) -> str:
        return w if self.wordpiece else w.lstrip("▁")

    # -- token-level compression ------------------------------------------------------------------

    def compress(
        self, contexts: list[list[str]], reduce_rate: float
    ) -> Steps[tuple[list[str], list[list[str]], list[list[int]]]]:
        if reduce_rate <= 0:
            texts: list[str] = []
            all_words: list[list[str]] = []
            all_labels: list[list[int]] = []
            for chunks in contexts:
                restored = [self._unplace_back(c) for c in chunks]
                ws = [w for c in restored for w in _SPLIT_WORDS.findall(c)]
                texts.append("".join(restored))
                all_words.append(ws)
                all_labels.append([1] * len(ws))
            return texts, all_words, all_labels

        flat = [c for chunks in contexts for c in chunks]
        kept_chunks: list[str] = []
        chunk_words: list[list[str]] = []
        chunk_labels: list[list[int]] = []
        force = self.force_tokens
        for tokens, probs in (yield from self.token_probs(flat)):
            words, tprobs, _ = self.merge(tokens, probs)
            wp = self.word_probs(tprobs)
            if self.opts.drop_consecutive and wp:
                thr_d = np.percentile(wp, int(100 * reduce_rate))
                between = False
                prev = None
                for i, (w, p) in enumerate(zip(words, wp, strict=True)):
                    if w in force:
                        if between:
                            between = False
                        elif w == prev:
                            wp[i] = 0.0
                        prev = w
                    else:
                        between |= bool(p > thr_d)
            repeated: list[Any] = []
            for w, p in zip(words, wp, strict=True):
                repeated.extend([p] * _ntok(w))
            keep: list[str] = []
            labels: list[int] = []
            if repeated:
                thr = np.percentile(repeated, int(100 * reduce_rate + 1))
                for w, p in zip(words, wp, strict=True):
                    if p > thr or (thr == 1.0 and p == thr):
                        if self.opts.drop_consecutive and w in force and keep and keep[-1] == w:
                            labels.append(0)
                        else:
                            keep.append(w)
                            labels.append(1)
                    else:
                        labels.append(0)
            else:
                labels = [0] * len(words)
            kept_chunks.append(self.clf.tokens_to_string(keep))
            chunk_words.append([self.strip_word(w) for w in words])
            chunk_labels.append(labels)

        out: list[str] = []
        words_out: list[list[str]] = []
        labels_out: list[list[int]] = []
        k = 0
        for chunks in contexts:
            n = len(chunks)
            out.append("".join(kept_chunks[k : k + n]))
            words_out.append([w for ws in chunk_words[k : k + n] for w in ws])
            labels_out.append([lab for ls in chunk_labels[k : k + n] for lab in ls])
            k += n
        return out, words_out, labels_out

    def _unplace_back(self, text: str) -> str:
        for ori, new in self.token_map.items():
            text = text.replace(new, ori)
        return text

    # -- context-level filter -----------------------------------------------------------------------

    def context_probs(self, contexts: list[list[str]]) -> Steps[tuple[list[Any], list[list[str]]]]:
        flat = [c for chunks in contexts for c in chunks]
        per_chunk: list[tuple[list[str], list[Any]]] = []
        for tokens, probs in (yield from self.token_probs(flat)):
            words, _, nf = self.merge(tokens, probs)
            per_chunk.append(([self.strip_word(w) for w in words], self.word_probs(nf)))
        scores: list[Any] = []
        all_words: list[list[str]] = []
        k = 0
        for chunks in contexts:
            ps = [p for _, wp in per_chunk[k : k + len(chunks)] for p in wp]
            all_words.append([w for ws, _ in per_chunk[k : k + len(chunks)] for w in ws])
            # upstream divides by zero here for a context without words
            scores.append(sum(ps) / len(ps) if ps else 0.0)
            k += len(chunks)
        return scores, all_words


def _result(
    compressed: list[str], n_orig: int, opts: CompatOptions, words: list[str] | None, labels: list[int] | None
) -> dict[str, Any]:
    n_comp = sum(_ntok(c) for c in compressed)
    saving = (n_orig - n_comp) * 0.06 / 1000
    ratio = 1 if n_comp == 0 else n_orig / n_comp
    res: dict[str, Any] = {
        "compressed_prompt": "\n\n".join(compressed),
        "compressed_prompt_list": compressed,
        "origin_tokens": n_orig,
        "compressed_tokens": n_comp,
        "ratio": f"{ratio:.1f}x",
        "rate": f"{1 / ratio * 100:.1f}%",
        "saving": f", Saving ${saving:.1f} in GPT-4.",
    }
    if opts.return_word_label and words is not None and labels is not None:
        res["fn_labeled_original_prompt"] = opts.word_sep.join(
            f"{w}{opts.label_sep}{lab}" for w, lab in zip(words, labels, strict=True)
        )
    return res


def compat_steps(clf: TokenClassifier, context: str | list[str], opts: CompatOptions) -> Steps[dict[str, Any]]:
    """Compress like llmlingua 0.2.2 (LLMLingua-2 path); returns the same dict (a step generator)."""
    contexts = validate_common(context, opts.rate, opts.target_token, opts.force_tokens, _MAX_FORCE)
    if opts.token_to_word not in ("mean", "first"):
        from .errors import CompressorError

        raise CompressorError("token_to_word", "token_to_word must be 'mean' or 'first'")
    run = _Run(clf, opts)
    rate = float(opts.rate)
    target_token = opts.target_token
    use_ctx = opts.use_context_level_filter and len(contexts) > 1

    n_orig: int = 0
    chunked: list[list[str]] = []
    for text in contexts:
        n_orig += _ntok(text)
        for ori, new in run.token_map.items():
            text = text.replace(ori, new)
        chunked.append(run.chunk(text))

    if use_ctx:
        clr = float(opts.context_level_rate)
        cltt = float(opts.context_level_target_token)
        if opts.target_context <= 0 and clr >= 1.0 and cltt <= 0:
            if target_token < 0 and rate < 1.0:
                clr = (rate + 1.0) / 2 if opts.use_token_level_filter else rate
            if target_token >= 0:
                cltt = target_token * 2 if opts.use_token_level_filter else target_token
        if opts.target_context >= 0:
            clr = min(opts.target_context / len(contexts), 1.0)
        if cltt >= 0:
            clr = min(cltt / n_orig, 1.0) if n_orig else 1.0
        scores, ctx_words = yield from run.context_probs(chunked)
        thr = np.percentile(scores, int(100 * (1 - clr)))
        forced = opts.force_context_ids
        reserved: list[list[str]] = []
        ctx_label = [False] * len(scores)
        for i, p in enumerate(scores):
            if p >= thr or (forced is not None and i in forced):
                reserved.append(chunked[i])
                ctx_label[i] = True
        n_res = sum(_ntok(c) for chunks in reserved for c in chunks)
        if target_token >= 0:
            rate = min(target_token / n_res, 1.0) if n_res else 1.0
        reduce = max(0.0, 1 - rate) if opts.use_token_level_filter else 0.0
        compressed, wlist, llist = yield from run.compress(reserved, reduce)
        words: list[str] = []
        labels: list[int] = []
        j = 0
        for i in range(len(contexts)):
            if ctx_label[i]:
                words += wlist[j]
                labels += llist[j]
                j += 1
            else:
                words += ctx_words[i]
                labels += [0] * len(ctx_words[i])
        return _result(compressed, n_orig, opts, words, labels)

    if target_token > 0 and n_orig:
        rate = min(target_token / n_orig, 1.0)
    reduce = max(0.0, 1 - rate) if opts.use_token_level_filter else 0.0
    compressed, wlist, llist = yield from run.compress(chunked, reduce)
    words = [w for ws in wlist for w in ws]
    labels = [lab for ls in llist for lab in ls]
    return _result(compressed, n_orig, opts, words, labels)
