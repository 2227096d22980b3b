"""LiteLLM callback: compress chat messages with LLMLingua-2 before LiteLLM sends them (fail-open).

Load it in LiteLLM's proxy (``config.yaml``)::

    litellm_settings:
      callbacks: compressors.llmlingua2.litellm_callback.proxy_handler_instance

or in the SDK: ``litellm.callbacks = [PromptwireCompression(server_url="http://127.0.0.1:8080")]``.
It compresses through a promptwire server's ``POST /v1/compress`` (``server_url``), or in-process
with an exported model (``model``; needs onnxruntime), per model (``models``: glob -> options or
``False``) and per request (``metadata={"promptwire": {"compress": {...} | False}}``, or the body
key ``promptwire`` that promptwire's own API takes). Any failure leaves the request as it was and
logs one warning. What happened is written to the request's metadata under ``promptwire``.
The environment configures ``proxy_handler_instance``: PROMPTWIRE_URL, PROMPTWIRE_API_KEY,
PROMPTWIRE_COMPRESSOR_MODEL, PROMPTWIRE_COMPRESS (JSON default options), PROMPTWIRE_COMPRESS_MODELS
(JSON {glob: options | false}), PROMPTWIRE_TIMEOUT_S. See docs/compress-serving.md.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

__all__ = ["PromptwireCompression", "proxy_handler_instance"]

logger = logging.getLogger(__name__)

_CHAT_CALLS = {"completion", "acompletion", "CallTypes.completion", "CallTypes.acompletion"}
_LIBRARY_PROTECTION = {"code_blocks": "code"}


class PromptwireCompression(CustomLogger):  # type: ignore[misc]  # LiteLLM is untyped here
    """Compresses ``messages`` of chat requests in LiteLLM's pre-call hooks (proxy and SDK)."""

    def __init__(
        self,
        *,
        server_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        default: Mapping[str, Any] | None = None,
        models: Mapping[str, Mapping[str, Any] | bool] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.server_url = server_url.rstrip("/") if server_url else None
        """A promptwire server: messages go to its POST /v1/compress."""
        self.api_key = api_key
        self.model = model
        """In-process instead: an exported LLMLingua-2 directory (or checkpoint) for compressors.llmlingua2."""
        self.default = dict(default if default is not None else {"rate": 0.5})
        """Options for every model no entry of ``models`` matches (promptwire's option names)."""
        self.models = dict(models or {})
        """Model name glob -> options merged over ``default``, or False (never compress that model)."""
        self.timeout_s = timeout_s
        self._service: Any = None
        self._service_lock = asyncio.Lock()
        if not self.server_url and not self.model:
            logger.warning("promptwire compression: no server_url (PROMPTWIRE_URL) and no model "
                           "(PROMPTWIRE_COMPRESSOR_MODEL); requests pass through unchanged")

    @classmethod
    def from_env(cls) -> PromptwireCompression:
        """Configured by PROMPTWIRE_URL, PROMPTWIRE_API_KEY, PROMPTWIRE_COMPRESSOR_MODEL, PROMPTWIRE_COMPRESS,
        PROMPTWIRE_COMPRESS_MODELS and PROMPTWIRE_TIMEOUT_S."""
        env = os.environ

        def json_env(name: str) -> Any:
            raw = env.get(name)
            if not raw:
                return None
            try:
                return json.loads(raw)
            except ValueError:
                logger.warning("promptwire compression: %s is not JSON; ignored", name)
                return None

        return cls(
            server_url=env.get("PROMPTWIRE_URL") or None,
            api_key=env.get("PROMPTWIRE_API_KEY") or None,
            model=env.get("PROMPTWIRE_COMPRESSOR_MODEL") or None,
            default=json_env("PROMPTWIRE_COMPRESS"),
            models=json_env("PROMPTWIRE_COMPRESS_MODELS"),
            timeout_s=float(env.get("PROMPTWIRE_TIMEOUT_S") or 10.0),
        )

    # -- LiteLLM hooks -------------------------------------------------------------------------

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        """The proxy's pre-call hook: returns the request with compressed messages."""
        if str(call_type) not in _CHAT_CALLS:
            return data
        return await self.compress_request(data)

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any]:
        """The SDK's (and Router's) hook before a deployment is called; a request the proxy's hook
        already handled is left alone."""
        if call_type is not None and str(call_type) not in _CHAT_CALLS:
            return kwargs
        if _stats_of(kwargs) is not None:
            return kwargs
        return await self.compress_request(kwargs)

    # -- the work --------------------------------------------------------------------------------

    def options_for(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """The compress options for this request, or None when it is not to be compressed."""
        options = dict(self.default)
        model = str(data.get("model") or "")
        for pattern, value in self.models.items():
            if fnmatch.fnmatchcase(model, pattern):
                if value is False:
                    return None  # the operator's "never" wins over the request
                options.update(value if isinstance(value, Mapping) else {})
                break
        asked = _request_setting(data)
        if asked is False:
            return None
        if isinstance(asked, Mapping):
            options.update(asked)
        return options

    async def compress_request(self, data: dict[str, Any]) -> dict[str, Any]:
        """Compress ``data["messages"]`` in place of the request; never raises (fail-open)."""
        messages = data.get("messages")
        options = self.options_for(data) if isinstance(messages, list) and messages else None
        data.pop("promptwire", None)  # promptwire's body key must not reach the provider
        if options is None or not (self.server_url or self.model) or not isinstance(messages, list):
            _set_stats(data, {"status": "skipped"})
            return data
        t0 = time.perf_counter()
        plain = [{"role": m.get("role"), "content": m.get("content") if isinstance(m.get("content"), str) else None}
                 for m in messages if isinstance(m, Mapping)]
        try:
            if len(plain) != len(messages):
                raise ValueError("messages must be objects")
            if self.server_url:
                new, before, after = await self._via_server(plain, options)
                mode = "server"
            else:
                new, before, after = await self._in_process(plain, options)
                mode = "in-process"
        except Exception as exc:  # fail-open: the request goes on uncompressed
            logger.warning("promptwire compression skipped for model %s: %s: %s", data.get("model"),
                           type(exc).__name__, exc)
            _set_stats(data, {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]})
            return data
        out = []
        for m, n in zip(messages, new, strict=True):
            if isinstance(m.get("content"), str) and n.get("content") != m.get("content"):
                m = {**m, "content": n["content"]}
            out.append(m)
        data["messages"] = out
        _set_stats(data, {
            "status": "ok", "mode": mode, "tokens_before": before, "tokens_after": after,
            "ratio": round(before / after, 4) if after else None, "ms": round((time.perf_counter() - t0) * 1000, 2),
        })
        return data

    async def _via_server(self, messages: list[dict[str, Any]], options: Mapping[str, Any]
                          ) -> tuple[list[dict[str, Any]], int, int]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            resp = await client.post(f"{self.server_url}/v1/compress", json={"messages": messages, **options},
                                     headers=headers)
        if resp.status_code != 200:
            try:
                detail = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                detail = resp.text[:200]
            raise RuntimeError(f"/v1/compress answered {resp.status_code}: {detail}")
        body = resp.json()
        new = body["messages"]
        if not isinstance(new, list) or len(new) != len(messages):
            raise RuntimeError("/v1/compress answered a different number of messages")
        return new, int(body["origin_tokens"]), int(body["compressed_tokens"])

    async def _in_process(self, messages: list[dict[str, Any]], options: Mapping[str, Any]
                          ) -> tuple[list[dict[str, Any]], int, int]:
        service = await self._get_service()
        opts = dict(options)
        if opts.pop("compat", "none") not in ("none", None):
            raise ValueError("compat mode is served by a promptwire server (server_url), not in-process")
        if "protections" in opts:
            from .structure import Protections

            given: dict[str, Any] = dict(opts["protections"])
            opts["protections"] = Protections(**{_LIBRARY_PROTECTION.get(k, k): bool(v) for k, v in given.items()})
        res = await asyncio.wait_for(service.compress_messages(messages, **opts), self.timeout_s)
        return list(res.messages), int(res.origin_tokens), int(res.compressed_tokens)

    async def _get_service(self) -> Any:
        async with self._service_lock:
            if self._service is None:
                from .compressor import Compressor
                from .serving import CompressorService

                assert self.model is not None
                compressor = await asyncio.to_thread(Compressor, self.model)
                self._service = CompressorService(compressor)
            return self._service


def _request_setting(data: Mapping[str, Any]) -> Any:
    """The request's own ``compress`` setting: body key ``promptwire`` or ``metadata.promptwire``."""
    for holder in (data, data.get("metadata"), data.get("litellm_metadata")):
        if isinstance(holder, Mapping):
            pw = holder.get("promptwire")
            if isinstance(pw, Mapping) and "compress" in pw:
                return pw["compress"]
    return None


def _metadata(data: dict[str, Any]) -> dict[str, Any]:
    key = "litellm_metadata" if isinstance(data.get("litellm_metadata"), dict) else "metadata"
    meta = data.get(key)
    if not isinstance(meta, dict):
        meta = data[key] = {}
    return meta


def _stats_of(data: Mapping[str, Any]) -> Any:
    for key in ("metadata", "litellm_metadata"):
        meta = data.get(key)
        if isinstance(meta, Mapping) and isinstance(meta.get("promptwire"), Mapping):
            stats = meta["promptwire"].get("compress_stats")
            if stats is not None:
                return stats
    return None


def _set_stats(data: dict[str, Any], stats: dict[str, Any]) -> None:
    """The stats under ``promptwire.compress_stats`` of the request's metadata, and of the copy LiteLLM's
    logging object already took (what its loggers and callbacks read)."""
    metas = [_metadata(data)]
    details = getattr(data.get("litellm_logging_obj"), "model_call_details", None)
    params = details.get("litellm_params") if isinstance(details, dict) else None
    if isinstance(params, dict):
        if not isinstance(params.get("metadata"), dict):
            params["metadata"] = {}
        metas.append(params["metadata"])
    for meta in metas:
        pw = meta.get("promptwire")
        if isinstance(pw, dict):
            pw["compress_stats"] = stats
        else:
            meta["promptwire"] = {"compress_stats": stats}


proxy_handler_instance = PromptwireCompression.from_env()
"""The instance LiteLLM's proxy loads (``callbacks: compressors.llmlingua2.litellm_callback.proxy_handler_instance``)."""
