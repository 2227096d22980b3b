"""Policy: who may call (API keys, per-key model and stage allowlists), admission (in-flight limit,
graceful shutdown) and request limits (prompt size)."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.config.schema import ApiKeyConfig, LimitsConfig
from gateway.errors import AuthenticationError, Overloaded, PermissionDenied, PromptTooLarge, ShuttingDown
from gateway.types import GatewayRequest

__all__ = ["Admission", "ApiKey", "Keys", "check_limits"]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An authenticated client key (the secret itself is never kept)."""

    id: str
    models: tuple[str, ...]
    stages: frozenset[str] | None
    """Stages this key may use; None: every stage the route offers."""

    def allows_model(self, model: str) -> bool:
        return any(p == "*" or p == model or fnmatch.fnmatchcase(model, p) for p in self.models)

    def allows_stage(self, stage: str) -> bool:
        return self.stages is None or stage in self.stages


class Keys:
    """The configured API keys, stored as sha256 digests and compared in constant time."""

    def __init__(self, keys: Iterable[ApiKeyConfig]) -> None:
        self._keys = tuple(
            (bytes.fromhex(k.sha256), ApiKey(k.id, k.models, None if k.stages is None else frozenset(k.stages)))
            for k in keys
        )
        self._by_id = {key.id: key for _, key in self._keys}

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, api_key: str | None) -> ApiKey | None:
        """The key's record, None when auth is off; AuthenticationError for a missing/unknown key."""
        if not self._keys:
            return None
        if not api_key:
            raise AuthenticationError("missing API key (send `Authorization: Bearer <key>`)")
        digest = hashlib.sha256(api_key.encode()).digest()
        found: ApiKey | None = None
        for stored, key in self._keys:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(stored, digest):
                found = key
        if found is None:
            raise AuthenticationError("invalid API key")
        return found

    def of_request(self, req: GatewayRequest) -> ApiKey | None:
        """The key a front end authenticated for ``req`` (by id), checked against its model."""
        key = self._by_id.get(req.api_key_id) if req.api_key_id is not None else None
        if self._keys and key is None:
            raise AuthenticationError("missing or invalid API key")
        if key is not None and not key.allows_model(req.model):
            raise PermissionDenied(f"this API key may not use model {req.model!r}", param="model")
        return key


class Admission:
    """The in-flight limit and graceful shutdown: requests are admitted, released, and drained."""

    def __init__(self, max_in_flight: int, retry_after_s: float,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.limit = max_in_flight
        self.retry_after_s = retry_after_s
        self._on_change = on_change
        """Told the new count at every change (``--workers``: the shared in-flight gauge, kept exact)."""
        self.in_flight = 0
        self.shutting_down = False
        self._idle = asyncio.Event()
        self._idle.set()

    def admit(self) -> None:
        if self.shutting_down:
            raise ShuttingDown("the gateway is shutting down; retry on another replica")
        if self.in_flight >= self.limit:
            raise Overloaded(f"too many requests in flight (limit {self.limit}); retry later",
                             retry_after=self.retry_after_s)
        self.in_flight += 1
        self._idle.clear()
        if self._on_change is not None:
            self._on_change(self.in_flight)

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
        if self._on_change is not None:
            self._on_change(self.in_flight)

    async def drain(self, grace_s: float) -> bool:
        """Wait up to ``grace_s`` for in-flight requests to finish; True if all did."""
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False


def check_limits(req: GatewayRequest, limits: LimitsConfig) -> None:
    """Prompt size limits (characters, and tokens when configured); tool definitions count as prompt."""
    if limits.max_prompt_chars is None and limits.max_prompt_tokens is None:
        return
    text = req.prompt_text()
    tools = req.params.get("tools")
    if tools:  # tool definitions are prompt too (the upstream renders them into it)
        text += "\n" + json.dumps(tools, ensure_ascii=False, separators=(",", ":"))
    ids = req.prompt_token_ids()  # completion prompts given as token ids: each is at least a character
    param = "messages" if req.kind == "chat" else "prompt"
    if limits.max_prompt_chars is not None and len(text) + ids > limits.max_prompt_chars:
        raise PromptTooLarge(
            f"prompt has {len(text) + ids} characters, over the limit of {limits.max_prompt_chars}", param=param
        )
    if limits.max_prompt_tokens is not None:
        from gateway.tokens import count_tokens

        n = ids + (count_tokens(text) if text else 0)
        if n > limits.max_prompt_tokens:
            raise PromptTooLarge(f"prompt has {n} tokens, over the limit of {limits.max_prompt_tokens}", param=param)
