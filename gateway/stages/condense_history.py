"""The `condense_history` stage: agent tool outputs condensed to diff histories (compressors.diff_history)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compressors.diff_history import DiffHistoryError, Observation, condense_messages, diff, message_text
from compressors.diff_history.chat import DEFAULT_ROLES
from gateway.config.stages import CondenseHistoryConfig
from gateway.errors import InvalidRequest
from gateway.stages.base import StageDeps, StageResult
from gateway.stages.table import STAGES, OptionError, check_option_values
from gateway.tokens import count_tokens
from gateway.types import ChatMessage, GatewayRequest, StageStats

__all__ = [
    "STAGE",
    "CondenseHistoryStage",
    "CondenseOutcome",
    "condense",
    "make_condense_history_stage",
    "parse_body",
    "validate_condense_options",
]

logger = logging.getLogger(__name__)

STAGE = "condense_history"
STAGE_PREFIX = f"promptwire.{STAGE}."


@functools.lru_cache(maxsize=4096)
def _count(text: str) -> int:
    """cl100k tokens, cached per text: an agent resends its whole history every turn, so only the
    newest outputs are counted cold (the stats' counting dominates a cold 128-step condense)."""
    return count_tokens(text)


@functools.lru_cache(maxsize=4096)
def _diff(a: str, b: str) -> str:
    """The reference's diff, cached per pair: an agent's next turn repeats every earlier pair."""
    return diff(a, b)


def validate_condense_options(options: Mapping[str, Any], prefix: str = STAGE_PREFIX) -> dict[str, Any]:
    """Check and normalise the options; errors are InvalidRequest naming ``prefix + option``.

    Returns every key: window (int | None), budget_tokens (int | None), roles (tuple[str, ...]),
    min_chars (int)."""
    try:
        check_option_values(STAGES[STAGE].options, options, f"stage {STAGE!r}")
    except OptionError as e:
        raise InvalidRequest(str(e), param=f"{prefix}{e.option}") from None
    roles = options.get("roles")
    if roles is not None and (not roles or not all(roles)):
        raise InvalidRequest("roles must be a non-empty list of non-empty role names", param=f"{prefix}roles")
    return {
        "window": options.get("window"),
        "budget_tokens": options.get("budget_tokens"),
        "roles": tuple(roles) if roles is not None else DEFAULT_ROLES,
        "min_chars": options.get("min_chars") or 0,
    }


@dataclass(frozen=True)
class CondenseOutcome:
    """Condensed messages (untouched ones are the input objects), the stage stats and a record."""

    messages: list[Mapping[str, Any]]
    stats: StageStats
    observations: tuple[Observation, ...]
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": [dict(m) for m in self.messages],
            "stats": self.stats.to_dict(),
            "observations": [{"index": o.index, "group": o.group, "kind": o.kind} for o in self.observations],
        }


def _uncounted(text: str) -> int:
    return 0


def condense(
    messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any], prefix: str = STAGE_PREFIX,
    *, count: bool = True,
) -> CondenseOutcome:
    """Run diff-history condensing with validated ``options``; a bad history is InvalidRequest naming
    the message field (``messages[3].tool_call_id``), a budget too small names ``prefix + budget_tokens``.

    ``count=False`` (only without ``budget_tokens``, which needs the counts) skips the cl100k counts:
    the messages are the same and the stats' tokens are 0; :func:`counted_stats` completes them."""
    if not count and options["budget_tokens"] is not None:
        raise ValueError("budget_tokens needs the token counts")
    t0 = time.perf_counter()
    try:
        res = condense_messages(
            messages,
            window=options["window"],
            budget_tokens=options["budget_tokens"],
            roles=options["roles"],
            min_chars=options["min_chars"],
            count_tokens=_count if count else _uncounted,
            diff_fn=_diff,
        )
    except DiffHistoryError as e:
        param = e.param if e.param.startswith("messages") else f"{prefix}{e.param}"
        raise InvalidRequest(e.message, param=param) from None
    s = res.stats
    stats = StageStats(
        stage=STAGE,
        tokens_before=s.tokens_before,
        tokens_after=s.tokens_after,
        ms=(time.perf_counter() - t0) * 1000,
        extra={
            "observations": s.observations,
            "observations_diffed": s.observations_diffed,
            "placeholders": s.placeholders,
        },
    )
    changed = any(o.kind in ("diff", "placeholder") for o in res.observations)
    return CondenseOutcome(res.messages, stats, res.observations, changed)


def counted_stats(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], provisional: StageStats
) -> StageStats:
    """``provisional`` (from ``condense(..., count=False)``) with the cl100k counts of the messages as they
    came (``before``) and as condensed (``after``) filled in: the same sums ``condense`` takes (each
    message's text; an untouched message counts the same on both sides). Runs in a worker thread, off the
    request path."""
    return dataclasses.replace(provisional, tokens_before=sum(_count(message_text(m)) for m in before),
                               tokens_after=sum(_count(message_text(m)) for m in after))


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failure as seen even if nobody awaits the future (a caller of the stage other than the
    gateway)."""
    if not future.cancelled():
        future.exception()


def parse_body(body: Any) -> tuple[list[Mapping[str, Any]], dict[str, Any]]:
    """``POST /v1/condense_history`` body -> (messages, options): ``messages`` plus the stage's options
    at the top level; errors name the body field."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages must be a list of chat messages", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise InvalidRequest("a message must be an object with a string role", param=f"messages[{i}]")
    known = {o.name for o in STAGES[STAGE].options}
    for key in body:
        if key != "messages" and key not in known:
            raise InvalidRequest(
                f"unknown field {key!r} (known: messages, {', '.join(sorted(known))})", param=key
            )
    return messages, {k: v for k, v in body.items() if k != "messages"}


class CondenseHistoryStage:
    """Chat requests' tool outputs grouped per tool, later ones replaced by diffs (docs/condense-history.md)."""

    name = STAGE

    def __init__(self, defaults: Mapping[str, Any] | None = None) -> None:
        self.defaults = dict(defaults or {})
        """Operator defaults from ``stages.condense_history.defaults`` (merged under each request's)."""

    def validate(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        return validate_condense_options({**self.defaults, **options})

    async def apply(self, req: GatewayRequest, options: Mapping[str, Any]) -> StageResult:
        if req.kind != "chat":
            n = count_tokens(req.prompt_text())
            return StageResult(req, StageStats(STAGE, n, n, 0.0, choice="skipped: not a chat request"))
        dicts = [m.to_dict() for m in req.messages]
        # Without a budget the counts only feed the stats: they are taken in a worker thread while the
        # upstream works (a 128-step history seen for the first time holds tens of thousands of tokens to
        # count; the diffs alone take a few ms). A budget needs them before anything is sent.
        deferred = options["budget_tokens"] is None
        out = condense(dicts, options, count=not deferred)
        if out.changed:
            req = dataclasses.replace(req, messages=tuple(
                m if out.messages[i] is dicts[i] else ChatMessage.from_dict(out.messages[i])
                for i, m in enumerate(req.messages)
            ))
        if not deferred:
            return StageResult(req, out.stats)
        # started last: the worker thread shares the interpreter lock with what is left of this request
        settle = asyncio.get_running_loop().run_in_executor(None, counted_stats, dicts, out.messages, out.stats)
        settle.add_done_callback(_retrieve)
        return StageResult(req, out.stats, settle=settle)


def make_condense_history_stage(
    config: CondenseHistoryConfig, deps: StageDeps | None = None
) -> CondenseHistoryStage:
    """The table's factory for ``stages.condense_history`` (defaults checked at start)."""
    defaults = dict(config.defaults)
    validate_condense_options(defaults, prefix="stages.condense_history.defaults.")
    count_tokens("")  # load the cl100k ranks now (~0.5 s), not on the first request
    return CondenseHistoryStage(defaults)
