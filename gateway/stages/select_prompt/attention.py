"""IDP selection: the model reads [P_i ; input] for every pool prompt at once and attends its choice."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = ["attention_modules", "choose", "eager_attention", "idp_scores", "resolve_layers"]


class _Done(Exception):
    """Raised by the hook of the last scored layer: the layers after it are not needed."""


def attention_modules(model: Any) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer, in layer order.

    Found through the class transformers records attentions from (``_can_record_outputs``), so any
    architecture transformers can return attentions for works (Llama, Qwen2, GPT-2, Mistral, ...).
    """
    for module in model.modules():
        spec = (getattr(type(module), "_can_record_outputs", None) or {}).get("attentions")
        if spec is None:
            continue
        target = getattr(spec, "target_class", spec)
        suffix = getattr(spec, "layer_name", None)
        found = [
            m for name, m in module.named_modules()
            if isinstance(m, target) and (suffix is None or name.endswith(suffix))
        ]
        if found:
            return found
    raise ValueError(f"{type(model).__name__}: cannot find its attention modules (no _can_record_outputs)")


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """Configured layer indices (negative ones count from the end) -> sorted distinct indices; None = all."""
    if layers is None:
        return list(range(num_layers))
    out: set[int] = set()
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int) or not -num_layers <= i < num_layers:
            raise ValueError(f"layer {i!r} out of range for a model with {num_layers} layers")
        out.add(i % num_layers)
    if not out:
        raise ValueError("layers must name at least one layer")
    return sorted(out)


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Run the model with the eager attention kernel (the only one that returns attention weights).

    Switching is a config flag read at every forward, so it is cheap and undone on exit; callers must
    hold the model exclusively (the engine's exclusive call does).
    """
    previous = model.config._attn_implementation
    if previous == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@torch.inference_mode()
def idp_scores(model: Any, prompts: torch.Tensor, input_ids: Sequence[int],
               layers: Sequence[int] | None = None) -> torch.Tensor:
    """IDP score of each pool prompt for one input: a float32 tensor (m,).

    Row i of one batched pass holds [P_i ; input]; its score is the mean attention weight from the
    input's positions (queries) to P_i's positions (keys) over the given layers (default: all) and all
    heads. Rows have equal lengths and no padding, and each row's score depends only on that row, so
    the scores do not depend on the pool's order. Layers after the last scored one are skipped.
    """
    m, n, _ = prompts.shape
    if not input_ids:
        raise ValueError("IDP needs at least one input token")
    embed = model.get_input_embeddings()
    ids = torch.as_tensor(list(input_ids), dtype=torch.long, device=embed.weight.device)[None]  # (1, T)
    x = embed(ids)  # (1, T, d)
    p = prompts.to(device=x.device, dtype=x.dtype)  # (m, n, d)
    x = torch.cat([p, x.expand(m, -1, -1)], dim=1)  # (m, n+T, d)
    mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)  # (m, n+T)

    modules = attention_modules(model)
    wanted = resolve_layers(layers, len(modules))
    last = wanted[-1]
    total = torch.zeros(m, dtype=torch.float32, device=x.device)  # (m,)

    def hook_for(index: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            nonlocal total
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("attention weights not returned; the eager kernel is required")
            # weights (m, H, n+T, n+T): queries are the input's positions, keys P_i's positions
            total = total + weights[:, :, n:, :n].float().mean(dim=(1, 2, 3))  # (m,)
            if index == last:
                raise _Done
        return hook

    handles = [modules[i].register_forward_hook(hook_for(i)) for i in wanted]
    try:
        with eager_attention(model), contextlib.suppress(_Done):
            model(inputs_embeds=x, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return (total / len(wanted)).cpu()  # (m,)


def choose(scores: Sequence[float] | torch.Tensor) -> int:
    """Index of the highest score; ties go to the lower index."""
    values = scores.tolist() if isinstance(scores, torch.Tensor) else list(scores)
    if not values:
        raise ValueError("no scores to choose from")
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best
