"""Provider `local`: an in-process transformers causal LM decoded by decoders.engine (all decoders)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from decoders.engine import Engine, EngineConfig, EngineError, GenerationResult, SamplingParams, StreamDelta
from decoders.processors import DECODERS, DecoderOptionError, Processor, build_processor
from decoders.processors.trie import OPTIONS as TRIE_OPTIONS
from decoders.processors.trie import LabelSpec
from decoders.sampling import SamplingParamError
from decoders.trie_score import LabelScores, score_labels
from gateway.errors import InvalidRequest, UpstreamError
from gateway.types import Completion, GatewayRequest, ModelInfo, StreamChunk

if TYPE_CHECKING:
    from gateway.config import BackendConfig
    from gateway.metrics import Metrics

__all__ = ["TINY_PREFIX", "LocalProvider", "resolve_model_source"]

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"
"""``model_path: tiny:llama`` (or gpt2, qwen2): a small deterministic stand-in built locally on first use."""

# OpenAI request fields the local provider cannot honour: a clear 400 rather than a silent ignore.
_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "suffix", "best_of", "echo")
_MAX_N = 16
_P = "promptwire.decoder."


def cache_dir() -> Path:
    """Where built stand-ins live: $PROMPTWIRE_CACHE_DIR, else ~/.cache/promptwire."""
    root = os.environ.get("PROMPTWIRE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "promptwire")
    return Path(root)


def resolve_model_source(source: str) -> str:
    """A Hugging Face id or directory as given; ``tiny:FAMILY`` is built (once, cached) and its dir returned."""
    if not source.startswith(TINY_PREFIX):
        return source
    from decoders.tiny import FAMILIES, build_tiny_causal_lm

    family = source[len(TINY_PREFIX) :]
    if family not in FAMILIES:
        raise ValueError(f"unknown stand-in {source!r}; expected one of {', '.join(TINY_PREFIX + f for f in FAMILIES)}")
    target = cache_dir() / "tiny" / f"{family}-causal-lm"
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=target.parent))
        build_tiny_causal_lm(tmp, family)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def default_model_id(source: str) -> str:
    if source.startswith(TINY_PREFIX):
        return f"tiny-{source[len(TINY_PREFIX):]}"
    path = Path(source)
    return path.name if path.exists() else source


class LocalProvider:
    """Serves one local model through the continuous-batching engine."""

    def __init__(self, name: str, config: BackendConfig, metrics: Metrics | None = None) -> None:
        if not config.model_path:
            raise ValueError(f"backends.{name}: type local needs model_path (a directory or Hugging Face id)")
        self.name = name
        self.decoders = frozenset(DECODERS)
        self._source = config.model_path
        self._models = tuple(config.models or (default_model_id(config.model_path),))
        if self._source.startswith(TINY_PREFIX):
            logger.warning(
                "backend %s serves %s, a tiny randomly initialised STAND-IN model built locally (its text is "
                "gibberish). For real output: promptwire serve --model CHECKPOINT_DIR_OR_HF_ID, or "
                "--upstream http://HOST:PORT/v1, or model_path in your --config file",
                name, self._source,
            )
        path = resolve_model_source(self._source)
        started = time.perf_counter()
        self.engine = Engine.from_pretrained(path, EngineConfig())
        self.engine.start()
        # Trie scoring runs the model on a worker thread beside the engine's; one at a time, so a burst
        # of scoring requests cannot pile threads onto the cores the engine needs.
        self._scoring_lock = asyncio.Lock()
        logger.info("backend %s loaded %s in %.1f s", name, path, time.perf_counter() - started)

    # ---- Provider protocol ---------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, owned_by="promptwire-local", provider=self.name) for m in self._models]

    async def ready(self) -> bool:
        return self.engine.running

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.close)

    async def generate(self, req: GatewayRequest) -> Completion:
        spec = _scoring_spec(req.decoder)
        prompts, params, n = self._prepare(req)
        if spec is not None:
            ids, scores = await self._score(req, prompts, n, spec)
            return Completion(self._scoring_body(req, ids, scores))
        jobs = [
            self._one(ids, _seeded(params, i), req)
            for ids in prompts
            for i in range(n)
        ]
        try:
            results = await asyncio.gather(*jobs)
        except EngineError as e:
            raise UpstreamError(f"local model failed: {e}") from None
        prompt_tokens = sum(len(ids) for ids in prompts)
        completion_tokens = sum(r.usage.completion_tokens for r in results)
        choices = [self._choice(req, i, r) for i, r in enumerate(results)]
        body: dict[str, Any] = {
            "id": _response_id(req),
            "object": "chat.completion" if req.kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        stats = [dict(r.processor_stats) for r in results if r.processor_stats]
        if stats:
            body["promptwire"] = {"decoder": stats[0] if len(stats) == 1 else stats}
        return Completion(body)

    async def generate_stream(self, req: GatewayRequest) -> AsyncIterator[StreamChunk]:
        spec = _scoring_spec(req.decoder)
        prompts, params, n = self._prepare(req)
        if spec is not None:
            ids, scores = await self._score(req, prompts, n, spec)
            for data in _scoring_chunks(req, self._scoring_body(req, ids, scores)):
                yield StreamChunk(data)
            return
        if len(prompts) * n != 1:
            raise InvalidRequest("streaming supports one prompt and n=1 on the local provider", param="n")
        ids = prompts[0]
        proc = await self._aprocessor(req, ids, params)
        rid, created = _response_id(req), int(time.time())
        chat = req.kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice: dict[str, Any], usage: dict[str, Any] | None = None) -> StreamChunk:
            data: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": req.model,
                                    "choices": [choice] if choice else []}
            if usage is not None:
                data["usage"] = usage
            return StreamChunk(data)

        if chat:
            yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None})
        last: StreamDelta | None = None
        try:
            async for delta in self.engine.stream(ids, params, proc):
                last = delta
                if delta.text or delta.finish_reason is not None:
                    yield chunk(self._stream_choice(chat, delta, params))
        except EngineError as e:
            raise UpstreamError(f"local model failed mid-stream: {e}") from None
        opts = req.params.get("stream_options")
        if isinstance(opts, Mapping) and opts.get("include_usage") and last is not None and last.usage:
            u = last.usage
            yield chunk({}, {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                             "total_tokens": u.total_tokens})

    # ---- request translation -------------------------------------------------------------------

    def _prepare(self, req: GatewayRequest) -> tuple[list[list[int]], SamplingParams, int]:
        p = req.params
        for key in _UNSUPPORTED:
            if p.get(key) not in (None, [], {}):
                raise InvalidRequest(f"{key} is not supported by the local provider", param=key)
        rf = p.get("response_format")
        if isinstance(rf, Mapping) and rf.get("type") not in (None, "text"):
            raise InvalidRequest(
                "response_format other than text is not supported by the local provider; use a decoder "
                "(promptwire.decoder) to constrain the output", param="response_format")
        for key in ("presence_penalty", "frequency_penalty"):
            if p.get(key) not in (None, 0, 0.0):
                raise InvalidRequest(f"{key} is not supported by the local provider", param=key)
        n = p.get("n", 1)
        if n is None:
            n = 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_N:
            raise InvalidRequest(f"n must be an integer in [1, {_MAX_N}]", param="n")
        params = self._sampling(req)
        prompts = self._prompt_ids(req)
        return prompts, params, n

    def _sampling(self, req: GatewayRequest) -> SamplingParams:
        p = req.params
        max_tokens = p.get("max_completion_tokens", p.get("max_tokens"))
        stop = p.get("stop")
        if isinstance(stop, str):
            stop = (stop,)
        elif stop is None:
            stop = ()
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            stop = tuple(stop)
        else:
            raise InvalidRequest("stop must be a string or a list of strings", param="stop")
        top_logprobs: int | None = None
        if req.kind == "chat":
            if p.get("logprobs"):
                top_logprobs = int(p.get("top_logprobs") or 0)
        elif p.get("logprobs") is not None:
            top_logprobs = p["logprobs"]
        try:
            return SamplingParams(
                max_tokens=(16 if req.kind == "completion" else 256) if max_tokens is None else max_tokens,
                temperature=1.0 if p.get("temperature") is None else p["temperature"],
                top_p=1.0 if p.get("top_p") is None else p["top_p"],
                top_k=p.get("top_k") or 0,
                seed=p.get("seed"),
                stop=stop,
                top_logprobs=top_logprobs,
            ).validate()
        except SamplingParamError as e:
            param = "max_completion_tokens" if e.param == "max_tokens" and "max_completion_tokens" in p else e.param
            raise InvalidRequest(str(e), param=param) from None
        except TypeError as e:
            raise InvalidRequest(f"invalid sampling value: {e}") from None

    def _prompt_ids(self, req: GatewayRequest) -> list[list[int]]:
        if req.kind == "chat":
            if not req.messages:
                raise InvalidRequest("messages must not be empty", param="messages")
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            try:
                return [self.engine.chat_prompt(messages)]
            except Exception as e:  # jinja template errors, e.g. a role the template rejects
                raise InvalidRequest(f"the model's chat template rejected the messages: {e}",
                                     param="messages") from None
        prompt = req.prompt
        if isinstance(prompt, str):
            return [self.engine.encode(prompt)]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                return [list(prompt)]
            if all(isinstance(s, str) for s in prompt):
                return [self.engine.encode(s) for s in prompt]
            if all(isinstance(x, list) and all(isinstance(t, int) for t in x) for x in prompt):
                return [list(x) for x in prompt]
        raise InvalidRequest("prompt must be a string, a list of strings, or token ids", param="prompt")

    async def _aprocessor(self, req: GatewayRequest, ids: Sequence[int], params: SamplingParams) -> Processor | None:
        # Building a decoder can take seconds (a trie over 10,000 labels, tokenised in context; cached after
        # that), so it runs on a worker thread: the event loop keeps serving other requests meanwhile.
        if not req.decoder:
            return None
        return await asyncio.to_thread(self._processor, req, ids, params)

    def _processor(self, req: GatewayRequest, ids: Sequence[int], params: SamplingParams) -> Processor | None:
        if not req.decoder:
            return None
        name = str(req.decoder.get("name"))
        # ``scoring`` is the provider's business (validated by _scoring_spec; false here): the trie's
        # processor only generates.
        options = {k: v for k, v in req.decoder.items() if k != "name" and not (name == "trie" and k == "scoring")}
        try:
            return build_processor(name, options, self.engine.decoder_context(ids, params))
        except DecoderOptionError as e:
            raise InvalidRequest(str(e), param=e.param) from None

    async def _one(self, ids: list[int], params: SamplingParams, req: GatewayRequest) -> GenerationResult:
        proc = await self._aprocessor(req, ids, params)
        try:
            return await self.engine.agenerate(ids, params, proc)
        except SamplingParamError as e:
            raise InvalidRequest(str(e), param=e.param) from None

    # ---- trie scoring mode ---------------------------------------------------------------------

    async def _score(self, req: GatewayRequest, prompts: list[list[int]], n: int,
                     spec: LabelSpec) -> tuple[list[int], LabelScores]:
        """Every label's exact log-probability after the prompt, computed on a worker thread."""
        if len(prompts) != 1:
            raise InvalidRequest("trie scoring mode scores one prompt per request", param="prompt")
        if n != 1:
            raise InvalidRequest("trie scoring mode is deterministic: n must be 1", param="n")
        logprobs = req.params.get("logprobs")
        if logprobs if req.kind == "chat" else logprobs is not None:
            raise InvalidRequest("logprobs are not available in trie scoring mode; promptwire.label_scores "
                                 "carries every label's log-probability", param="logprobs")
        ids = prompts[0]
        started = time.perf_counter()
        async with self._scoring_lock:
            try:
                scores = await asyncio.to_thread(score_labels, self.engine.model, self.engine.tokenizer, ids,
                                                 spec.labels)
            except DecoderOptionError as e:  # e.g. a label this tokenizer cannot spell
                raise InvalidRequest(str(e), param=e.param) from None
            except (RuntimeError, ValueError) as e:
                raise UpstreamError(f"local model failed while scoring labels: {e}") from None
        logger.debug("request %s: scored %d labels (%d trie tokens) in %.1f ms", req.request_id,
                     len(spec.labels), scores.forwarded_tokens, 1000 * (time.perf_counter() - started),
                     extra={"request_id": req.request_id})
        return ids, scores

    def _scoring_body(self, req: GatewayRequest, ids: list[int], scores: LabelScores) -> dict[str, Any]:
        best = max(range(len(scores.labels)), key=scores.probs.__getitem__)
        label = scores.labels[best]
        n_out = len(scores.token_ids[best])
        if req.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": label},
                                      "logprobs": None, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": label, "logprobs": None, "finish_reason": "stop"}
        return {
            "id": _response_id(req),
            "object": "chat.completion" if req.kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [choice],
            # completion tokens: the answer's (the most probable label's canonical tokens), not the
            # trie tokens scored, so usage reads like a generation of that label
            "usage": {"prompt_tokens": len(ids), "completion_tokens": n_out, "total_tokens": len(ids) + n_out},
            "promptwire": {
                "label_scores": scores.as_dict(),
                "decoder": {"labels": [label], "scoring": True, "scored_tokens": scores.forwarded_tokens},
            },
        }

    def _choice(self, req: GatewayRequest, index: int, r: GenerationResult) -> dict[str, Any]:
        finish = "length" if r.finish_reason == "length" else "stop"
        if r.finish_reason not in ("stop", "length"):
            raise UpstreamError(f"local generation ended with {r.finish_reason!r}")
        if req.kind == "chat":
            logprobs = None
            if r.logprobs:
                logprobs = {"content": [_chat_logprob(lp) for lp in r.logprobs]}
            return {"index": index, "message": {"role": "assistant", "content": r.text},
                    "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "text": r.text, "logprobs": _completion_logprobs(r) if r.logprobs else None,
                "finish_reason": finish}

    def _stream_choice(self, chat: bool, d: StreamDelta, params: SamplingParams) -> dict[str, Any]:
        finish = None if d.finish_reason is None else ("length" if d.finish_reason == "length" else "stop")
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": d.text} if d.text else {},
                                      "logprobs": None, "finish_reason": finish}
            if d.logprobs and params.top_logprobs is not None:
                choice["logprobs"] = {"content": [_chat_logprob(lp) for lp in d.logprobs]}
            return choice
        return {"index": 0, "text": d.text, "logprobs": None, "finish_reason": finish}


def _scoring_spec(decoder: Mapping[str, Any] | None) -> LabelSpec | None:
    """The validated labels when the request asks for the trie's scoring mode, else None."""
    if not decoder or decoder.get("name") != "trie" or "scoring" not in decoder:
        return None
    scoring = decoder["scoring"]
    if not isinstance(scoring, bool):
        raise InvalidRequest("scoring must be true or false", param=_P + "scoring")
    if not scoring:
        return None
    unknown = sorted(set(decoder) - TRIE_OPTIONS - {"name", "scoring"})
    if unknown:
        raise InvalidRequest(f"unknown trie option {unknown[0]!r}", param=_P + unknown[0])
    if "labels" not in decoder:
        raise InvalidRequest("the trie decoder needs labels", param=_P + "labels")
    try:
        spec = LabelSpec.parse(decoder["labels"], decoder.get("mode", "canonical"), decoder.get("separator"),
                               decoder.get("max_labels"))
    except DecoderOptionError as e:
        raise InvalidRequest(str(e), param=e.param) from None
    if spec.separator is not None:
        raise InvalidRequest("scoring mode gives each single label's probability; it cannot be combined with "
                             "multi-label output (separator / max_labels)", param=_P + "separator")
    if spec.mode != "canonical":
        raise InvalidRequest("scoring mode scores each label's canonical tokenisation in context; mode must be "
                             "canonical (the default)", param=_P + "mode")
    return spec


def _scoring_chunks(req: GatewayRequest, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A scoring response as a stream: (role,) the label as one content chunk, then the finish chunk carrying
    ``promptwire.label_scores``, then usage if asked."""
    head = {k: body[k] for k in ("id", "created", "model")}
    choice = body["choices"][0]
    out: list[dict[str, Any]] = []
    if req.kind == "chat":
        obj = "chat.completion.chunk"
        label = choice["message"]["content"]
        out.append({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None})
        out.append({"index": 0, "delta": {"content": label}, "logprobs": None, "finish_reason": None})
        out.append({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"})
    else:
        obj = "text_completion"
        out.append({"index": 0, "text": choice["text"], "logprobs": None, "finish_reason": None})
        out.append({"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"})
    chunks: list[dict[str, Any]] = [{**head, "object": obj, "choices": [c]} for c in out]
    chunks[-1]["promptwire"] = body["promptwire"]
    opts = req.params.get("stream_options")
    if isinstance(opts, Mapping) and opts.get("include_usage"):
        chunks.append({**head, "object": obj, "choices": [], "usage": body["usage"]})
    return chunks


def _seeded(params: SamplingParams, i: int) -> SamplingParams:
    """The i-th of n samples: its own seed so the n choices differ but stay reproducible."""
    if i == 0 or params.seed is None:
        return params
    from dataclasses import replace

    return replace(params, seed=params.seed + i)


def _response_id(req: GatewayRequest) -> str:
    return ("chatcmpl-" if req.kind == "chat" else "cmpl-") + req.request_id


def _chat_logprob(lp: Any) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": list(lp.token.encode("utf-8")),
        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for _, t, v in lp.top],
    }


def _completion_logprobs(r: GenerationResult) -> dict[str, Any]:
    offsets, pos = [], 0
    for lp in r.logprobs:
        offsets.append(pos)
        pos += len(lp.token)
    return {
        "tokens": [lp.token for lp in r.logprobs],
        "token_logprobs": [lp.logprob for lp in r.logprobs],
        "top_logprobs": [{t: v for _, t, v in lp.top} for lp in r.logprobs],
        "text_offset": offsets,
    }
