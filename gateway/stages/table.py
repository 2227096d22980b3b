"""The one table of stage and decoder names with their option schemas (torch-free).

Everything that needs to know which stages and decoders exist and what options they take reads this
module: the HTTP extension object and OpenAPI document, the gRPC conversion (proto field names equal
option names; a test keeps them in step), config validation and ``promptwire config check``, the
pipeline (which builds stages from ``factory``) and the local provider (which builds decoders).

Adding a stage or a decoder = its module + one entry here + its proto options message.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

from pydantic import BaseModel

from gateway.config.stages import (
    CompressConfig,
    CondenseHistoryConfig,
    ConjugateConfig,
    DecogConfig,
    NoConfig,
    SelectPromptConfig,
)

__all__ = [
    "DECODERS",
    "STAGES",
    "DecoderEntry",
    "Option",
    "OptionError",
    "StageEntry",
    "check_option_values",
    "load_factory",
]

JSON_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
              type(None): "null"}


@dataclass(frozen=True)
class Option:
    """One option of a stage or decoder: its JSON types and the limits every value must meet.

    The limits here are the ones a value has on its own (types, ranges, choices); rules that tie
    several options together live in the stage's ``validate`` or the decoder's factory."""

    name: str
    types: tuple[type, ...]
    """Accepted JSON types (``int`` also accepts nothing but integers; ``float`` accepts integers too)."""
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    items: type | None = None
    """For lists: the type of each item."""
    max_items: int | None = None
    keys: tuple[str, ...] = ()
    """For objects: the keys allowed (empty: any)."""
    proto_fields: tuple[str, ...] = ()
    """Proto field names that carry this option when they differ from ``name`` (a oneof of forms)."""

    def json_schema(self) -> dict[str, Any]:
        """The option's JSON Schema (for the OpenAPI document)."""
        names = sorted({JSON_NAMES[t] for t in self.types})
        out: dict[str, Any] = {"description": self.doc}
        out["type"] = names[0] if len(names) == 1 else names
        if self.minimum is not None:
            out["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices:
            out["enum"] = list(self.choices)
        if self.items is not None:
            out["items"] = {"type": JSON_NAMES[self.items]}
        if self.max_items is not None:
            out["maxItems"] = self.max_items
        if self.keys:
            out["properties"] = {k: {} for k in self.keys}
            out["additionalProperties"] = False
        return out


@dataclass(frozen=True)
class StageEntry:
    """A prompt stage: its name, options, construction config and where its factory lives."""

    name: str
    options: tuple[Option, ...]
    doc: str
    config: type[BaseModel]
    """The typed class of ``stages.<name>`` in the config file."""
    factory: str | Callable[..., Any] | None
    """``"module:function"`` building the stage (``function(config, deps) -> Stage``), or the function
    itself; None: the name is reserved and the stage is not built in this version (asking for it is a
    clear 400)."""
    proto_message: str
    """The options message in protos/promptwire/v1/options.proto."""

    def option(self, name: str) -> Option | None:
        return _by_name(self.options).get(name)


@dataclass(frozen=True)
class DecoderEntry:
    """A decoder: its name, options, where its factory lives and what upstreams can do with it."""

    name: str
    options: tuple[Option, ...]
    doc: str
    factory: str | Callable[..., Any] | None
    """``"module:function"``: ``function(options, ctx) -> Processor`` (decoders/), or the function; None:
    reserved."""
    proto_message: str
    local_only: str
    """Why only the ``local`` provider can run it (the 400 for an ``openai`` backend says this), or ""
    when an ``openai`` backend can express it (trie labels as a structured-output choice)."""
    config: type[BaseModel] = NoConfig
    """The typed class of ``decoders.<name>`` in the config file."""

    def option(self, name: str) -> Option | None:
        return _by_name(self.options).get(name)


def _by_name(options: Sequence[Option]) -> dict[str, Option]:
    return {o.name: o for o in options}


_STR_LIST = (list,)
_NUM = (int, float)

STAGES: dict[str, StageEntry] = {
    "condense_history": StageEntry(
        "condense_history",
        (
            Option("window", (int,), "Observations kept per tool group; older ones become a one-line placeholder.",
                   minimum=1),
            Option("budget_tokens", (int,), "Token budget for the condensed messages (cl100k); the oldest "
                   "observations become placeholders first.", minimum=1),
            Option("roles", _STR_LIST, "Roles whose messages are observations (default: tool).", items=str),
            Option("min_chars", (int,), "Observations shorter than this many characters stay as they are.",
                   minimum=0),
        ),
        "Agent and tool histories as exact diffs between successive observations (diff history).",
        CondenseHistoryConfig,
        "gateway.stages.condense_history:make_condense_history_stage",
        "CondenseHistoryOptions",
    ),
    "select_prompt": StageEntry(
        "select_prompt",
        (Option("pool", (str,), "The prompt pool to choose from (a key of stages.select_prompt.pools)."),),
        "Per-request prompt selection: IDP (soft prompts, the local model's attention) or IDP-text.",
        SelectPromptConfig,
        "gateway.stages.select_prompt.stage:make_select_prompt_stage",
        "SelectPromptOptions",
    ),
    "conjugate": StageEntry(
        "conjugate",
        (
            Option("transform", (str,), "How the prompt is transformed (and the answer back).",
                   choices=("leet", "pig_latin", "translate")),
            Option("language", (str,), "Target language code for transform translate."),
        ),
        "Conjugate prompting: transformed prompt in, back-transformed answer out (off unless allowed).",
        ConjugateConfig,
        "gateway.stages.conjugate:make_conjugate_stage",
        "ConjugateOptions",
    ),
    "compress": StageEntry(
        "compress",
        (
            Option("rate", _NUM, "Fraction of tokens to keep.", minimum=0, maximum=1, exclusive_minimum=True),
            Option("target_token", (int,), "Target number of tokens after compression (overrides rate).",
                   minimum=1),
            Option("force_tokens", _STR_LIST, "Tokens always kept.", items=str, max_items=100),
            Option("roles", _STR_LIST, "Chat roles whose messages may be compressed.", items=str),
            Option("protections", (dict,), "Spans never touched, each on by default.",
                   keys=("code_blocks", "code", "json", "urls", "identifiers", "numbers")),
            Option("compat", (str, type(None)), "`llmlingua`: reproduce llmlingua 0.2.2 decision for decision.",
                   choices=("none", "llmlingua")),
            Option("force_reserve_digit", (bool,), "Compat mode: keep every token with a digit."),
            Option("drop_consecutive", (bool,), "Compat mode: drop repeated force tokens."),
        ),
        "LLMLingua-2 token-classification compression of the allowed prompt spans (ONNX Runtime).",
        CompressConfig,
        "gateway.stages.compress:make_compress_stage",
        "CompressStageOptions",
    ),
}
"""Every stage. A route runs the stages it lists in the order it lists them (DESIGN.md's order is
condense_history, select_prompt, conjugate, compress)."""

DECODERS: dict[str, DecoderEntry] = {
    "trie": DecoderEntry(
        "trie",
        (
            Option("labels", _STR_LIST, "The labels; the output is exactly one (or several with a separator).",
                   items=str),
            Option("mode", (str,), "`canonical`: each label's own tokenisation; `any`: every tokenisation.",
                   choices=("canonical", "any")),
            Option("separator", (str,), "Multi-label output: labels joined by this, none repeated."),
            Option("max_labels", (int,), "With a separator: at most this many labels.", minimum=1),
            Option("scoring", (bool,), "Return every label's probability instead of sampling one."),
        ),
        "Output restricted to labels from a taxonomy (a token trie on the local model; a structured-output "
        "choice on upstreams that have one).",
        "decoders.trie:build",
        "TrieDecoder",
        "",
    ),
    "uscd": DecoderEntry(
        "uscd",
        (
            Option("alpha", _NUM, "Contrast strength.", minimum=0),
            Option("mode", (str,), "`prob` (the paper's, probability space) or `log` (log space).",
                   choices=("prob", "log")),
            Option("measure", (str,), "Uncertainty measure gating the contrast.", choices=("std", "entropy", "top1")),
            Option("threshold", _NUM, "Gate threshold for the measure."),
            Option("lazy", (bool,), "Skip the lame stream's forward on steps that are not contrasted."),
            Option("plausibility", _NUM, "Log mode: tokens below this fraction of the top probability are dropped.",
                   minimum=0, maximum=1),
            Option("lame_prompt", (str, list), "The lame prompt: text, or token ids used as they are.",
                   proto_fields=("lame_prompt_text", "lame_prompt_ids")),
        ),
        "Uncertainty-aware selective contrastive decoding against a lame prompt.",
        "decoders.uscd:build",
        "UscdDecoder",
        "USCD needs the model's logits (the next-token distributions of the prompt and of the lame prompt) "
        "at every step",
    ),
    "decog": DecoderEntry(
        "decog",
        (
            Option("format", (dict,), "The output format: {\"template\": ...} or {\"regex\": ...}.",
                   keys=("template", "regex")),
            Option("hmm", (str,), "The HMM to steer with (a key of decoders.decog.hmms)."),
            Option("prune_top_k", (int,), "Keep only the top-k hidden states by forward mass.", minimum=1),
        ),
        "Output formats guaranteed by a DFA and steered by an HMM distilled from the model (Deco-G).",
        "decoders.decog:build",
        "DecogDecoder",
        "Deco-G combines the model's next-token distribution with an HMM at every step",
        DecogConfig,
    ),
}
"""Every decoder: the names ``promptwire.decoder.name`` accepts."""


class OptionError(ValueError):
    """An option value breaks its schema; ``option`` names it (relative to the stage or decoder)."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int subclass: only an option typed bool takes one
        return bool in types
    if value is None:
        return type(None) in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(JSON_NAMES[t] for t in types)


def check_option_values(options: Sequence[Option], values: Mapping[str, Any], what: str) -> None:
    """Check each value against its option's schema; raise :class:`OptionError` for the first bad one.

    ``what`` names the owner in messages (``stage 'compress'``). Unknown names are errors too."""
    schema = _by_name(options)
    for key, value in values.items():
        opt = schema.get(key)
        if opt is None:
            known = ", ".join(sorted(schema)) or "none"
            raise OptionError(f"unknown option {key!r} for {what} (known: {known})", key)
        if not _type_ok(value, opt.types):
            raise OptionError(f"option {key!r} of {what} must be {_type_names(opt.types)}, "
                              f"got {JSON_NAMES.get(type(value), type(value).__name__)}", key)
        _check_limits(opt, value, what)


def _check_limits(opt: Option, value: Any, what: str) -> None:
    key = opt.name
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise OptionError(f"option {key!r} of {what} must be a finite number, got {value!r}", key)
        low = opt.minimum
        if low is not None and (value <= low if opt.exclusive_minimum else value < low):
            sign = ">" if opt.exclusive_minimum else ">="
            raise OptionError(f"option {key!r} of {what} must be {sign} {low:g}, got {value!r}", key)
        if opt.maximum is not None and value > opt.maximum:
            raise OptionError(f"option {key!r} of {what} must be <= {opt.maximum:g}, got {value!r}", key)
    if isinstance(value, str) and opt.choices and value not in opt.choices:
        raise OptionError(f"option {key!r} of {what} must be one of {', '.join(opt.choices)}, got {value!r}", key)
    if isinstance(value, list):
        if opt.max_items is not None and len(value) > opt.max_items:
            raise OptionError(f"option {key!r} of {what} takes at most {opt.max_items} items, got {len(value)}",
                              key)
        if opt.items is not None:
            for i, item in enumerate(value):
                if not _type_ok(item, (opt.items,)):
                    raise OptionError(f"{key}[{i}] of {what} must be {JSON_NAMES[opt.items]}", key)
    if isinstance(value, dict) and opt.keys:
        for k in value:
            if k not in opt.keys:
                raise OptionError(f"option {key!r} of {what} has an unknown key {k!r} "
                                  f"(known: {', '.join(opt.keys)})", f"{key}.{k}")


@overload
def load_factory(path: str | Callable[..., Any]) -> Callable[..., Any]: ...
@overload
def load_factory(path: str | Callable[..., Any], missing_ok: bool) -> Callable[..., Any] | None: ...


def load_factory(path: str | Callable[..., Any], missing_ok: bool = False) -> Callable[..., Any] | None:
    """Import ``"module:function"`` (factories are imported only when a stage or decoder is used, so a
    proxy never loads a model runtime it does not need); a callable is returned as it is. With
    ``missing_ok``, a module without that function gives None (a decoder's optional ``prepare``)."""
    if callable(path):
        return path
    module, _, name = path.partition(":")
    factory: Callable[..., Any] | None = getattr(importlib.import_module(module), name, None)
    if factory is None and not missing_ok:
        raise AttributeError(f"{module} has no {name}")
    return factory


