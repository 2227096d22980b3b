"""`idp train`: one soft prompt per task by prompt tuning (model frozen, loss on the output tokens only)."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from gateway.stages.select_prompt.errors import SelectPromptError

__all__ = [
    "Example",
    "TrainConfig",
    "TrainDataError",
    "TrainResult",
    "encode_example",
    "read_examples",
    "split_held_out",
    "train_pool",
]

logger = logging.getLogger(__name__)

Init = Literal["vocab", "random"]
Format = Literal["chat", "plain"]


class TrainDataError(SelectPromptError):
    """A training file, example or setting that cannot be used; ``param`` names the flag or field."""

    default_param = "data"


@dataclass(frozen=True)
class Example:
    task: str
    input: str
    output: str


@dataclass(frozen=True)
class TrainConfig:
    """Prompt-tuning settings (the CLI flags of `promptwire idp train`)."""

    tokens: int
    """n: virtual tokens per soft prompt."""
    epochs: int = 10
    lr: float = 0.03
    """Adam learning rate for the prompt embeddings (prompt tuning wants far larger rates than fine-tuning)."""
    seed: int = 0
    init: Init = "vocab"
    """vocab: each virtual token starts as the embedding of a random vocabulary token (Lester et al.);
    random: Gaussian with the embedding matrix's standard deviation."""
    batch_size: int = 8
    held_out: float = 0.2
    """Fraction of each task's examples kept out of training to report held-out loss (at least one)."""
    format: Format = "chat"
    """chat: the input is one user message through the chat template, as a chat request is served;
    plain: the input text as a completion prompt."""
    max_length: int = 1024
    """Examples longer than this (input + output tokens) are cut from the left of the input."""

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.tokens >= 1, "tokens", "must be >= 1"),
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr", "must be > 0"),
            (self.init in ("vocab", "random"), "init", "must be vocab or random"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (0 < self.held_out < 1, "held_out", "must be in (0, 1)"),
            (self.format in ("chat", "plain"), "format", "must be chat or plain"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise TrainDataError(f"{name} {why}, got {getattr(self, name)!r}", param=name)


@dataclass
class TrainResult:
    prompts: torch.Tensor
    """(m, n, d) float32, one row per task in ``names`` order."""
    names: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    """Held-out loss per task: entry 0 before training, entry e after epoch e."""


def read_examples(path: str | Path) -> list[Example]:
    """JSONL lines ``{"task": ..., "input": ..., "output": ...}`` (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise TrainDataError(f"data file {p} does not exist")
    out: list[Example] = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainDataError(f"{p}:{lineno}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise TrainDataError(f"{p}:{lineno}: expected an object with task, input, output")
            for key in ("task", "input", "output"):
                if not isinstance(row.get(key), str) or (key != "input" and not row[key]):
                    raise TrainDataError(f"{p}:{lineno}: {key!r} must be a non-empty string", param=f"data.{key}")
            out.append(Example(row["task"], row["input"], row["output"]))
    if not out:
        raise TrainDataError(f"{p}: no examples")
    return out


def split_held_out(examples: Sequence[Example], fraction: float, seed: int
                   ) -> tuple[list[str], dict[str, list[Example]], dict[str, list[Example]]]:
    """Task names (first-seen order) and per-task (train, held-out) lists; every task needs two examples."""
    tasks: dict[str, list[Example]] = {}
    for ex in examples:
        tasks.setdefault(ex.task, []).append(ex)
    rng = random.Random(seed)
    train: dict[str, list[Example]] = {}
    held: dict[str, list[Example]] = {}
    for name, rows in tasks.items():
        if len(rows) < 2:
            raise TrainDataError(f"task {name!r} has {len(rows)} example; at least 2 are needed "
                                 "(one is held out to measure the loss)")
        rows = rows[:]
        rng.shuffle(rows)
        k = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        held[name], train[name] = rows[:k], rows[k:]
    return list(tasks), train, held


def encode_example(tokenizer: Any, ex: Example, fmt: Format, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, output ids): the input as the gateway tokenises the request, the output plus EOS."""
    if fmt == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": ex.input}],
                                             add_generation_prompt=True, tokenize=False)
        x = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        x = list(tokenizer(ex.input)["input_ids"])
    y = list(tokenizer(ex.output, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        y.append(int(tokenizer.eos_token_id))
    y = y[:max_length - 1]
    x = x[-(max_length - len(y)):]
    return x, y


def _batches(rows: Sequence[tuple[list[int], list[int]]], size: int) -> list[list[tuple[list[int], list[int]]]]:
    return [list(rows[i:i + size]) for i in range(0, len(rows), size)]


def _loss(model: Any, prompt: torch.Tensor, batch: Sequence[tuple[list[int], list[int]]], pad_id: int
          ) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the batch's output tokens with PROMPT (n, d) before each input; and their count."""
    n, d = prompt.shape
    device = prompt.device
    width = max(len(x) + len(y) for x, y in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long, device=device)  # (B, T)
    labels = torch.full((len(batch), n + width), -100, dtype=torch.long, device=device)  # (B, n+T)
    mask = torch.zeros((len(batch), n + width), dtype=torch.long, device=device)  # (B, n+T)
    for i, (x, y) in enumerate(batch):
        seq = x + y
        ids[i, : len(seq)] = torch.tensor(seq, device=device)
        labels[i, n + len(x) : n + len(seq)] = torch.tensor(y, device=device)  # loss on output tokens only
        mask[i, : n + len(seq)] = 1
    emb = model.get_input_embeddings()(ids)  # (B, T, d)
    x_in = torch.cat([prompt[None].expand(len(batch), n, d).to(emb.dtype), emb], dim=1)  # (B, n+T, d)
    logits = model(inputs_embeds=x_in, attention_mask=mask, use_cache=False).logits  # (B, n+T, V)
    pred = logits[:, :-1].float()  # (B, n+T-1, V): position t predicts token t+1
    target = labels[:, 1:]  # (B, n+T-1)
    count = int((target != -100).sum())
    loss = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return loss / max(count, 1), count


def _init_prompt(model: Any, tokenizer: Any, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    weight = model.get_input_embeddings().weight.detach().float().cpu()  # (V, d)
    if cfg.init == "random":
        std = float(weight.std())
        return torch.randn(cfg.tokens, weight.shape[1], generator=gen) * std  # (n, d)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pool = torch.tensor([i for i in range(min(len(tokenizer), weight.shape[0])) if i not in special])
    picks = pool[torch.randint(len(pool), (cfg.tokens,), generator=gen)]  # (n,)
    out: torch.Tensor = weight[picks].clone()  # (n, d)
    return out


def _held_out_loss(model: Any, prompt: torch.Tensor, rows: Sequence[tuple[list[int], list[int]]],
                   pad_id: int, batch_size: int) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in _batches(rows, batch_size):
            loss, k = _loss(model, prompt, batch, pad_id)
            total += float(loss) * k
            count += k
    return total / max(count, 1)


def train_pool(model: Any, tokenizer: Any, examples: Sequence[Example], cfg: TrainConfig,
               on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Prompt-tune one soft prompt per task; the model's weights never change.

    Each task has its own prompt and its own Adam state, so tasks do not influence each other; batches
    of all tasks are interleaved in a seeded order. ON_EPOCH(epoch, held-out loss per task) is called
    before training (epoch 0) and after every epoch.
    """
    from tqdm import tqdm

    model.eval()
    model.requires_grad_(False)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    names, train, held = split_held_out(examples, cfg.held_out, cfg.seed)
    enc = {t: [encode_example(tokenizer, e, cfg.format, cfg.max_length) for e in train[t]] for t in names}
    enc_held = {t: [encode_example(tokenizer, e, cfg.format, cfg.max_length) for e in held[t]] for t in names}

    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    params = [torch.nn.Parameter(_init_prompt(model, tokenizer, cfg, gen).to(device)) for _ in names]
    optims = [torch.optim.Adam([p], lr=cfg.lr) for p in params]

    def evaluate(epoch: int) -> dict[str, float]:
        losses = {t: _held_out_loss(model, params[i].detach(), enc_held[t], pad_id, cfg.batch_size)
                  for i, t in enumerate(names)}
        logger.info("epoch %d held-out loss %s", epoch, {t: round(v, 4) for t, v in losses.items()})
        if on_epoch is not None:
            on_epoch(epoch, losses)
        return losses

    result = TrainResult(prompts=torch.empty(0), names=names, history=[evaluate(0)])
    steps_per_epoch = sum(math.ceil(len(enc[t]) / cfg.batch_size) for t in names)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="idp train", unit="step", disable=None)
    for epoch in range(1, cfg.epochs + 1):
        work: list[tuple[int, list[tuple[list[int], list[int]]]]] = []
        for i, t in enumerate(names):
            rows = enc[t][:]
            rng.shuffle(rows)
            work.extend((i, b) for b in _batches(rows, cfg.batch_size))
        rng.shuffle(work)
        for i, batch in work:
            loss, _ = _loss(model, params[i], batch, pad_id)
            optims[i].zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optims[i].step()
            bar.update()
            bar.set_postfix_str(f"{names[i]} {loss.item():.3f}")
        result.history.append(evaluate(epoch))
    bar.close()
    result.prompts = torch.stack([p.detach().float().cpu() for p in params])  # (m, n, d)
    return result
