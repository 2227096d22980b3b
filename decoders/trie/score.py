"""Scoring mode of the trie decoder: every label's exact log-probability, shared prefixes computed once."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from decoders.resources import ResourceCache
from decoders.trie.index import label_index
from decoders.trie.labels import LabelSpec

__all__ = ["LabelScores", "score_labels"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelScores:
    """Per label (in the order given): the raw log-probability of its canonical tokenisation after the prompt
    (sum of token log-probs, no end-of-sequence term) and that, normalised over the label set."""

    labels: tuple[str, ...]
    logprobs: tuple[float, ...]
    probs: tuple[float, ...]
    token_ids: tuple[tuple[int, ...], ...]
    """Each label's canonical tokens in context (what was scored)."""
    forwarded_tokens: int
    """Tokens run through the model after the prompt (= internal trie nodes; shared prefixes once)."""

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {label: {"prob": p, "logprob": lp} for label, p, lp in zip(self.labels, self.probs, self.logprobs,
                                                                         strict=True)}


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _cache_kwarg(model: Any) -> str:
    # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns)
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def score_labels(model: Any, tokenizer: Any, prompt_ids: Sequence[int], labels: Sequence[str],
                 chunk_nodes: int = 512, resources: ResourceCache | None = None,
                 soft_prompt: torch.Tensor | None = None) -> LabelScores:
    """Score every label after ``prompt_ids`` with one prefill and a tree-attention pass over the label trie.

    The trie's internal nodes (token prefixes shared by labels) are run once each, ``chunk_nodes`` at a
    time, attending to the cached prompt and to their own ancestors only (a 4-D additive mask, positions by
    depth), so a prefix shared by a thousand labels costs one token of compute.
    """
    spec = LabelSpec.parse(labels, "canonical")
    index = label_index(spec, tokenizer, prompt_ids, resources)
    device = next(model.parameters()).device
    n_nodes = len(index.children)
    parent = [-1] * n_nodes
    token = [-1] * n_nodes
    depth = [0] * n_nodes
    order: list[int] = []  # internal non-root nodes, preorder
    stack = [0]
    while stack:
        node = stack.pop()
        if node and index.children[node]:
            order.append(node)
        for tok, child in sorted(index.children[node].items(), reverse=True):
            parent[child], token[child], depth[child] = node, tok, depth[node] + 1
            stack.append(child)

    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)  # (1, P)
    if soft_prompt is None:
        out = model(input_ids=prompt, use_cache=True)
    else:
        soft = soft_prompt.to(device=device, dtype=next(model.parameters()).dtype)[None]  # (1, S, d)
        out = model(inputs_embeds=torch.cat([soft, model.get_input_embeddings()(prompt)], dim=1),
                    use_cache=True)  # (1, S+P, d) in
    cache = _cache_of(out)
    n_prompt = prompt.shape[1] + (0 if soft_prompt is None else soft_prompt.shape[0])
    edge = [0.0] * n_nodes  # edge[c] = log p(token[c] | prompt, path to parent[c])
    root = torch.log_softmax(out.logits[0, -1].float(), -1)  # (V,)
    for tok, child in index.children[0].items():
        edge[child] = float(root[tok])
    kw = _cache_kwarg(model)

    done: set[int] = set()
    for start in range(0, len(order), chunk_nodes):
        want = order[start : start + chunk_nodes]
        nodes: list[int] = []
        seen: set[int] = set()
        for node in want:  # ancestors first (preorder keeps them before descendants)
            chain = []
            a = node
            while a and a not in seen:
                chain.append(a)
                a = parent[a]
            for a in reversed(chain):
                seen.add(a)
                nodes.append(a)
        pos_of = {n: i for i, n in enumerate(nodes)}
        n = len(nodes)
        allow = torch.zeros(n, n_prompt + n, dtype=torch.bool)  # (N, P+N)
        allow[:, :n_prompt] = True
        for i, node in enumerate(nodes):
            a = node
            while a:
                allow[i, n_prompt + pos_of[a]] = True
                a = parent[a]
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(1, 1, n, n_prompt + n, dtype=dtype)  # (1, 1, N, P+N)
        mask.masked_fill_(~allow, torch.finfo(dtype).min)
        ids = torch.tensor([[token[x] for x in nodes]], dtype=torch.long, device=device)  # (1, N)
        pos = torch.tensor([[n_prompt + depth[x] - 1 for x in nodes]], dtype=torch.long, device=device)  # (1, N)
        logits = model(input_ids=ids, attention_mask=mask.to(device), position_ids=pos, use_cache=True,
                       **{kw: cache}).logits[0].float()  # (N, V)
        # drop the chunk's keys/values again (transformers 5: a negative count; older: the length to keep)
        cache.crop(-n if kw == "cache" else n_prompt)
        lse = torch.logsumexp(logits, -1)  # (N,)
        kids = [(node, child, tok) for node in want if node not in done
                for tok, child in index.children[node].items()]
        done.update(want)
        rows = torch.tensor([pos_of[k[0]] for k in kids], dtype=torch.long, device=logits.device)  # (K,)
        toks = torch.tensor([k[2] for k in kids], dtype=torch.long, device=logits.device)  # (K,)
        lps = (logits[rows, toks] - lse[rows]).tolist()  # (K,)
        for (_, child, _), lp in zip(kids, lps, strict=True):
            edge[child] = lp

    scores = []
    for i in range(len(spec.labels)):
        scores.append(sum(edge[node] for node in index.paths[i]))
    top = max(scores)
    z = top + math.log(sum(math.exp(s - top) for s in scores))
    probs = tuple(math.exp(s - z) for s in scores)
    seqs = tuple(tuple(token[x] for x in index.paths[i]) for i in range(len(spec.labels)))
    logger.debug("scored %d labels with %d trie tokens", len(spec.labels), len(order))
    return LabelScores(spec.labels, tuple(scores), probs, seqs, len(order))
