"""Provider `local`: an in-process transformers causal LM decoded by decoders.engine (all decoders)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from decoders.engine import (
    Engine,
    EngineConfig,
    EngineError,
    ForwardOutput,
    GenerationResult,
    SamplingParams,
    StreamDelta,
    Usage,
)
from decoders.fingerprint import model_fingerprint
from decoders.processor import DecoderOptionError, Processor, ProcessorFactory
from decoders.sampling import SamplingParamError
from decoders.trie.index import label_index
from decoders.trie.labels import LabelSpec, TrieOptions
from decoders.trie.score import LabelScores, score_labels
from gateway.errors import InvalidRequest, UpstreamError
from gateway.stages.table import DECODERS, load_factory
from gateway.types import Completion, GatewayRequest, ModelInfo, StreamChunk

if TYPE_CHECKING:
    from gateway.config.schema import LocalBackendConfig
    from gateway.observe.metrics import Metrics

__all__ = ["TINY_PREFIX", "LocalProvider", "resolve_model_source"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

TINY_PREFIX = "tiny:"
"""``model_path: tiny:llama`` (or gpt2, qwen2): a small deterministic stand-in built locally on first use."""

# OpenAI request fields the local provider cannot honour: a clear 400 rather than a silent ignore.
_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "suffix", "best_of", "echo")
_MAX_N = 16
_P = "promptwire.decoder."


def _factory(name: str) -> ProcessorFactory:
    """The decoder's factory, from the one table of names (gateway/stages/table.py)."""
    entry = DECODERS.get(name)
    if entry is None or entry.factory is None:
        known = ", ".join(n for n, e in DECODERS.items() if e.factory is not None)
        raise InvalidRequest(f"unknown decoder {name!r} (available: {known})", param=_P + "name")
    factory: ProcessorFactory = load_factory(entry.factory)
    return factory


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

    def __init__(self, name: str, config: LocalBackendConfig, metrics: Metrics | None = None) -> None:
        if not config.model_path:
            raise ValueError(f"backends.{name}: type local needs model_path (a directory or Hugging Face id)")
        self.name = name
        self.decoders = frozenset(n for n, e in DECODERS.items() if e.factory is not None)
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
        engine_config = EngineConfig(max_batch_size=config.max_batch_size, max_context=config.max_context,
                                     device=config.device, dtype=config.dtype)
        try:
            self.engine = Engine.from_pretrained(path, engine_config)
        except ValueError as e:  # an unavailable device, a bad dtype
            raise ValueError(f"backends.{name}: {e}") from None
        self.engine.start()
        self.backend = name
        self.tokenizer = self.engine.tokenizer
        self.hidden_size = self.engine.hidden_size
        self.fingerprint = _fingerprint(path, self.engine)
        self._decoder_setup: dict[str, Any] = {}  # decoder name -> what its prepare() made of decoders.<name>
        logger.info("backend %s loaded %s in %.1f s on %s (%s, max_batch_size %d, context %d)", name, path,
                    time.perf_counter() - started, _device_name(self.engine.device),
                    str(self.engine.dtype).removeprefix("torch."), engine_config.max_batch_size,
                    self.engine.max_context)

    def prepare_decoders(self, sections: Mapping[str, Mapping[str, Any]]) -> None:
        """Hand each decoder its operator section (``decoders.<name>``), once at start. A decoder whose
        factory module has ``prepare(section, ctx)`` loads what it needs there (decog: its HMMs, checked
        against this model's tokenizer) and gets the result as ``ctx.config`` on every request; a failure
        stops the start with the key path in the message."""
        for name, section in sections.items():
            entry = DECODERS.get(name)
            if entry is None or not isinstance(entry.factory, str):
                continue
            prepare = load_factory(entry.factory.partition(":")[0] + ":prepare", missing_ok=True)
            if prepare is None:
                self._decoder_setup[name] = section
                continue
            ctx = self.engine.decoder_context((), SamplingParams(max_tokens=1))
            try:
                self._decoder_setup[name] = prepare(section, ctx)
            except ValueError as e:
                raise ValueError(f"decoders.{name} (backend {self.name}): {e}") from None

    # ---- ModelAccess (model-bound stages) -------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.engine.encode(text)

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        return self.engine.chat_prompt(messages)

    def embed(self, ids: Sequence[int]) -> Any:
        """(T, d) input embeddings on the model's device and dtype."""
        return self.engine.embed(ids)

    async def run_exclusive(self, fn: Callable[[Any], T]) -> T:
        """``fn(model)`` on the engine thread between decode steps, in inference mode."""
        with engine_errors():
            return await self.engine.arun_exclusive(fn)

    async def forward(self, input_ids: Any = None, inputs_embeds: Any = None, attention_mask: Any = None,
                      output_attentions: bool = False) -> ForwardOutput:
        """One batched forward between decode steps: float32 logits (B, T, V) and, when asked, every layer's
        attention weights (B, H, T, T). Give ``input_ids`` (B, T) or ``inputs_embeds`` (B, T, d) (for example
        ``[soft prompt ; embed(ids)]``)."""
        engine = self.engine
        return await self.run_exclusive(
            lambda _: engine.forward(input_ids, inputs_embeds, attention_mask, output_attentions))

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
        jobs = await self._jobs(req, prompts, params, n)
        with engine_errors():
            results = await asyncio.gather(
                *(self.engine.agenerate(ids, p, proc, soft_prompt=req.soft_prompt) for ids, p, proc in jobs)
            )
        body: dict[str, Any] = {
            "id": _response_id(req),
            "object": "chat.completion" if req.kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [self._choice(req, i, r) for i, r in enumerate(results)],
            "usage": _usage([r.usage for r in results], n),
        }
        stats = _decoder_stats([r.processor_stats for r in results], jobs)
        if stats is not None:
            body["promptwire"] = {"decoder": stats}
        return Completion(body)

    async def generate_stream(self, req: GatewayRequest) -> AsyncIterator[StreamChunk]:
        spec = _scoring_spec(req.decoder)
        prompts, params, n = self._prepare(req)
        if spec is not None:
            ids, scores = await self._score(req, prompts, n, spec)
            for data in _scoring_chunks(req, self._scoring_body(req, ids, scores)):
                yield StreamChunk(data)
            return
        jobs = await self._jobs(req, prompts, params, n)  # decoder option errors before the first chunk
        rid, created = _response_id(req), int(time.time())
        chat = req.kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice: dict[str, Any] | None, **extra: Any) -> StreamChunk:
            return StreamChunk({"id": rid, "object": obj, "created": created, "model": req.model,
                                "choices": [choice] if choice else [], **extra})

        if chat:
            for i in range(len(jobs)):
                yield chunk({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None})
        usages: dict[int, Usage] = {}
        stats: dict[int, Mapping[str, Any]] = {}
        streams = [self.engine.stream(ids, p, proc, soft_prompt=req.soft_prompt) for ids, p, proc in jobs]
        with engine_errors(" mid-stream"):
            async for i, delta in _interleave(streams):
                if delta.finish_reason is None:
                    if delta.text:
                        yield chunk(self._stream_choice(chat, i, delta, params))
                    continue
                usages[i] = delta.usage or Usage(0, 0)
                stats[i] = delta.processor_stats or {}
                extra: dict[str, Any] = {}
                if len(usages) == len(jobs):  # the last choice to finish carries the decoder stats
                    summary = _decoder_stats([stats[k] for k in range(len(jobs))], jobs)
                    if summary is not None:
                        extra["promptwire"] = {"decoder": summary}
                yield chunk(self._stream_choice(chat, i, delta, params), **extra)
        opts = req.params.get("stream_options")
        if isinstance(opts, Mapping) and opts.get("include_usage") and len(usages) == len(jobs):
            yield chunk(None, usage=_usage([usages[k] for k in range(len(jobs))], n))

    async def _jobs(self, req: GatewayRequest, prompts: list[list[int]], params: SamplingParams,
                    n: int) -> list[tuple[list[int], SamplingParams, Processor | None]]:
        """One (prompt, sampling, processor) per choice, choice index = prompt index * n + sample index."""
        jobs = []
        texts = _prompt_texts(req, len(prompts))
        for ids, text in zip(prompts, texts, strict=True):
            for i in range(n):
                p = _seeded(params, i)
                proc = await self._aprocessor(req, ids, p, text)
                with engine_errors():
                    self.engine.check(ids, p, proc, req.soft_prompt)
                jobs.append((ids, p, proc))
        return jobs

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

    async def _aprocessor(self, req: GatewayRequest, ids: Sequence[int], params: SamplingParams,
                          text: str | None = None) -> Processor | None:
        # Building a decoder can take seconds (a trie over 10,000 labels, tokenised in context; cached after
        # that), so it runs on a worker thread: the event loop keeps serving other requests meanwhile.
        if not req.decoder:
            return None
        return await asyncio.to_thread(self._processor, req, ids, params, text)

    def _processor(self, req: GatewayRequest, ids: Sequence[int], params: SamplingParams,
                   text: str | None = None) -> Processor | None:
        if not req.decoder:
            return None
        name = str(req.decoder.get("name"))
        options = {k: v for k, v in req.decoder.items() if k != "name"}
        messages = [{"role": m.role, "content": m.text()} for m in req.messages] if req.kind == "chat" else None
        n_soft = 0 if req.soft_prompt is None else int(req.soft_prompt.shape[0])
        ctx = self.engine.decoder_context(ids, params, messages, n_soft, text)
        if name in self._decoder_setup:
            ctx = dataclasses.replace(ctx, config=self._decoder_setup[name])
        with engine_errors():
            return _factory(name)(options, ctx)

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
        soft = req.soft_prompt
        with engine_errors(" while scoring labels"):
            self.engine.check(ids, SamplingParams(max_tokens=1), None, soft)
        started = time.perf_counter()
        tok, resources = self.engine.tokenizer, self.engine.resources
        with engine_errors(" while scoring labels"):
            # the label trie is built (tokenised in context) off the engine thread and kept in the model's
            # resource cache; only the forward passes run on the engine thread, between decode steps
            await asyncio.to_thread(label_index, spec, tok, ids, resources)
            try:
                scores = await self.engine.arun_exclusive(
                    lambda model: score_labels(model, tok, ids, spec.labels, resources=resources, soft_prompt=soft))
            except (RuntimeError, ValueError) as e:
                if isinstance(e, DecoderOptionError):
                    raise
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

    def _stream_choice(self, chat: bool, index: int, d: StreamDelta, params: SamplingParams) -> dict[str, Any]:
        finish = None if d.finish_reason is None else ("length" if d.finish_reason == "length" else "stop")
        if chat:
            choice: dict[str, Any] = {"index": index, "delta": {"content": d.text} if d.text else {},
                                      "logprobs": None, "finish_reason": finish}
            if d.logprobs and params.top_logprobs is not None:
                choice["logprobs"] = {"content": [_chat_logprob(lp) for lp in d.logprobs]}
            return choice
        return {"index": index, "text": d.text, "logprobs": None, "finish_reason": finish}


def _scoring_spec(decoder: Mapping[str, Any] | None) -> LabelSpec | None:
    """The validated labels when the request asks for the trie's scoring mode, else None."""
    if not decoder or decoder.get("name") != "trie" or "scoring" not in decoder:
        return None
    try:
        opts = TrieOptions.parse(decoder)
    except DecoderOptionError as e:
        raise InvalidRequest(str(e), param=e.param) from None
    return opts.spec if opts.scoring else None


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


@contextlib.contextmanager
def engine_errors(during: str = "") -> Iterator[None]:
    """Map the engine's errors to gateway errors (as ``upstream_errors`` does for upstreams): bad sampling
    values and decoder options name their parameter (400); a failure inside the engine is an upstream error."""
    try:
        yield
    except (SamplingParamError, DecoderOptionError) as e:
        raise InvalidRequest(str(e), param=e.param) from None
    except EngineError as e:
        raise UpstreamError(f"local model failed{during}: {e}") from None


async def _interleave(streams: Sequence[AsyncIterator[StreamDelta]]) -> AsyncIterator[tuple[int, StreamDelta]]:
    """Deltas of several engine streams as they come, tagged with their stream's index. Leaving early (or
    one stream failing) closes every stream, which cancels its request."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, StreamDelta | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[StreamDelta]) -> None:
        try:
            async for delta in stream:
                queue.put_nowait((i, delta, None))
            queue.put_nowait((i, None, None))
        except Exception as exc:
            queue.put_nowait((i, None, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item, exc = await queue.get()
            if exc is not None:
                raise exc
            if item is None:
                running -= 1
                continue
            yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _usage(usages: Sequence[Usage], n: int) -> dict[str, Any]:
    """OpenAI usage for choices in job order (n per prompt): each prompt counted once; auxiliary-stream
    prefill (a USCD lame prompt) as ``aux_prompt_tokens`` when there was any."""
    prompt = sum(u.prompt_tokens for k, u in enumerate(usages) if k % n == 0)
    completion = sum(u.completion_tokens for u in usages)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    aux = sum(u.aux_prompt_tokens for u in usages)
    if aux:
        out["aux_prompt_tokens"] = aux
    return out


def _decoder_stats(stats: Sequence[Mapping[str, Any]], jobs: Sequence[tuple[Any, Any, Processor | None]]) -> Any:
    """``promptwire.decoder``: one choice's stats as an object, several as a list in choice order; None
    without a decoder."""
    if all(proc is None for _, _, proc in jobs):
        return None
    return dict(stats[0]) if len(stats) == 1 else [dict(s) for s in stats]


def _fingerprint(path: str, engine: Engine) -> str:
    """A stable id of the weights and the tokenizer: decoders.fingerprint over the checkpoint's files (what
    artifacts such as IDP pools record when they are made; the same for any dtype or device); for a model
    whose files cannot be read, a sample of the loaded parameters and the vocabulary instead."""
    try:
        return model_fingerprint(path)
    except (OSError, ValueError) as e:  # no weight files, or a hub id missing from the local cache
        logger.warning("fingerprint of %s from the loaded weights instead of its files: %s", path, e)
    h = hashlib.sha256()
    for name, param in engine.model.state_dict().items():
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        h.update(flat[::step].to("cpu", torch.float32).numpy().tobytes())
    vocab = sorted(engine.tokenizer.get_vocab().items())
    h.update(json.dumps(vocab, ensure_ascii=False).encode())
    h.update(str(getattr(engine.tokenizer, "chat_template", "") or "").encode())
    return h.hexdigest()[:32]


def _device_name(device: Any) -> str:
    if getattr(device, "type", "") == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _prompt_texts(req: GatewayRequest, n: int) -> list[str | None]:
    """Each completion prompt's text (None for token ids and chat), aligned with ``_prompt_ids``."""
    if req.kind == "completion" and isinstance(req.prompt, str):
        return [req.prompt]
    if req.kind == "completion" and isinstance(req.prompt, list) and all(isinstance(x, str) for x in req.prompt):
        return list(req.prompt)
    return [None] * n


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
