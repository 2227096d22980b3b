"""The decode loop: continuous batching over a transformers causal LM, with sync and asyncio APIs.

The whole API the gateway's ``local`` provider needs::

    engine = Engine.from_pretrained("path/or/hf-id", EngineConfig(max_batch_size=16, device="auto"))
    engine.start()                                   # decode loop on its own thread
    ids = engine.chat_prompt(messages)               # chat template -> token ids (or engine.encode(text))
    params = SamplingParams(max_tokens=64, temperature=0.7, stop=("\\n",))   # SamplingParamError if bad
    ctx = engine.decoder_context(ids, params, messages=messages)
    proc = decoders.trie.build(options, ctx)          # optional decoder (the gateway's table maps names)
    async for delta in engine.stream(ids, params, proc, soft_prompt=None):  # StreamDelta
        ...                                          # the last one has finish_reason, usage, processor stats
    result = await engine.agenerate(ids, params, proc)   # GenerationResult
    result = engine.generate(ids, params)                # blocking (steps inline if not started)
    scores = await engine.arun_exclusive(lambda model: model(...))  # on the engine thread, between steps
    engine.close()

Each step (``Engine.step``) reads top to bottom: run exclusive model calls; admit newcomers while rows
are free; one batched forward for every row already decoding; prefill newcomers one by one (each
alone, unpadded) and append their KV rows left-padded; let processors adjust their row; sample; emit
deltas; evict finished rows. Padding never shifts position ids, so greedy output equals
``model.generate`` token for token. Only the engine thread calls the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from decoders.aux_stream import AuxState
from decoders.batch_cache import BatchCache
from decoders.detok import TextStream
from decoders.outputs import GenerationResult, StreamDelta, TokenLogprob, Usage
from decoders.processor import DecoderContext, Processor
from decoders.resources import ResourceCache
from decoders.sampling import SamplingParamError, SamplingParams, select_tokens

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineError",
    "ForwardOutput",
    "GenerationResult",
    "RequestHandle",
    "SamplingParamError",
    "SamplingParams",
    "StreamDelta",
    "TokenLogprob",
    "Usage",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class EngineError(RuntimeError):
    """A request failed inside the engine (a processor raised, or the engine was closed)."""


@dataclass(frozen=True)
class EngineConfig:
    """Engine-wide settings."""

    max_batch_size: int = 16
    """Rows decoded together; a request with an eager auxiliary stream takes two."""
    max_context: int | None = None
    """Prompt + output limit; default: the model's max_position_embeddings / n_positions."""
    device: str = "auto"
    """``from_pretrained`` only: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``."""
    dtype: str = "auto"
    """``from_pretrained`` only: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16``, ``bfloat16``."""
    resource_cache_bytes: int = 256 << 20
    """Budget of the per-model decoder resource cache (label tries, HMMs, DFAs)."""


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch spells it (checked)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r}: CUDA is not available on this machine")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on CUDA, float32 elsewhere."""
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if spec not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {spec!r}")
    return DTYPES[spec]


@dataclass(eq=False)
class _Request:
    """Mutable per-request state, owned by the engine thread once submitted."""

    prompt_ids: tuple[int, ...]
    soft_prompt: torch.Tensor | None  # (n, d) embeddings before prompt_ids
    aux: AuxState | None
    params: SamplingParams
    processor: Processor | None
    generator: torch.Generator | None
    max_new: int
    text: TextStream
    on_event: Callable[[StreamDelta], None] | None
    calls_process: bool = False
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)
    next_token: int = -1  # last sampled token, fed to the model at the next step
    cancel_requested: bool = False
    error: str | None = None
    result: GenerationResult | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def length(self) -> int:
        """Prompt positions (soft prompt included)."""
        return len(self.prompt_ids) + (0 if self.soft_prompt is None else int(self.soft_prompt.shape[0]))

    @property
    def eager_aux(self) -> bool:
        return self.aux is not None and not self.aux.lazy


@dataclass(frozen=True)
class ForwardOutput:
    """What :meth:`Engine.forward` returns."""

    logits: torch.Tensor
    """(B, T, V) float32."""
    attentions: tuple[torch.Tensor, ...] | None = None
    """Per layer (B, H, T, T), when asked."""


@dataclass(eq=False)
class _Call:
    """An exclusive model call waiting for the engine thread."""

    fn: Callable[[Any], Any]
    future: concurrent.futures.Future[Any]


class RequestHandle:
    """Returned by ``Engine.submit``: cancel it, or wait for its result."""

    def __init__(self, engine: Engine, req: _Request) -> None:
        self._engine = engine
        self._req = req

    @property
    def done(self) -> bool:
        return self._req.done.is_set()

    def cancel(self) -> None:
        """Finish the request with reason "cancelled"; its batch row is freed at the next step."""
        self._engine._cancel(self._req)

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Block until finished (steps the engine inline if its thread is not running)."""
        if not self._engine.running:
            while not self._req.done.is_set():
                self._engine.step()
        if not self._req.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        assert self._req.result is not None
        if self._req.result.finish_reason == "error":
            raise EngineError(self._req.error or "generation failed")
        return self._req.result


class Engine:
    """Continuous-batching decode loop over one causal LM. See the module docstring for the API."""

    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        mc = model.config
        self.max_context = int(
            self.config.max_context or getattr(mc, "max_position_embeddings", None) or mc.n_positions
        )
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.hidden_size = int(model.get_input_embeddings().weight.shape[1])
        eos = model.generation_config.eos_token_id
        eos_list = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id is not None:
            eos_list.append(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(int(e) for e in eos_list)
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.resources = ResourceCache(self.config.resource_cache_bytes)
        """Per-model decoder resources (``DecoderContext.resources``)."""
        self._eos_index = torch.tensor(sorted(self.eos_token_ids), dtype=torch.long, device=self.device)  # (E,)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._token_text: dict[int, str] = {}
        self._cond = threading.Condition()
        self._step_lock = threading.Lock()
        self._waiting: deque[_Request] = deque()
        self._calls: deque[_Call] = deque()
        self._rows: list[tuple[_Request, bool]] = []  # batch row -> (request, is_aux_stream)
        self._batch = BatchCache(self.device)
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_pretrained(cls, source: str, config: EngineConfig | None = None, **model_kwargs: Any) -> Engine:
        """Load a model and tokenizer from a Hugging Face id or a local directory onto ``config.device``
        in ``config.dtype``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = config or EngineConfig()
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **model_kwargs)
        model.to(device)  # type: ignore[arg-type]  # transformers types .to oddly
        return cls(model, tokenizer, config)

    # ---- prompts -------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Tokenise a completion prompt (the tokenizer's BOS handling included)."""
        return list(self.tokenizer(text)["input_ids"])

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Render the tokenizer's chat template and tokenise it (no extra special tokens)."""
        text = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=add_generation_prompt, tokenize=False
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """The model's input embeddings of ``ids`` (T, d), on the model's device and dtype."""
        x = torch.tensor(list(ids), dtype=torch.long, device=self.device)  # (T,)
        with torch.inference_mode():
            return self.model.get_input_embeddings()(x)  # type: ignore[no-any-return]  # (T, d)

    def decoder_context(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        messages: Sequence[Mapping[str, Any]] | None = None,
        soft_prompt_tokens: int = 0,
        prompt_text: str | None = None,
    ) -> DecoderContext:
        """What a processor factory needs to build a decoder for this request (``messages`` for chat
        requests, ``prompt_text`` for text completion prompts: what ``prompt_ids`` were made from)."""
        max_new = max(0, min(params.max_tokens, self.max_context - len(prompt_ids) - soft_prompt_tokens))
        return DecoderContext(
            self.tokenizer, self.vocab_size, self.eos_token_ids, tuple(prompt_ids), max_new,
            messages=None if messages is None else tuple(messages), prompt_text=prompt_text,
            resources=self.resources,
            encode=self.encode, chat_prompt=self.chat_prompt, soft_prompt_tokens=soft_prompt_tokens,
            device=str(self.device),
        )

    # ---- submitting ----------------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        processor: Processor | None = None,
        on_event: Callable[[StreamDelta], None] | None = None,
        soft_prompt: torch.Tensor | None = None,
    ) -> RequestHandle:
        """Queue a request. ``on_event`` is called on the engine thread with every StreamDelta.

        ``soft_prompt`` (n, d) embeddings go before the prompt's token embeddings (and before an
        auxiliary stream's prompt), as ``model.generate(inputs_embeds=...)`` would take them."""
        soft, aux, longest = self.check(prompt_ids, params, processor, soft_prompt)
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.device)
            if params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(params.seed)
        aux_state = None
        if aux is not None:
            lazy = bool(processor is not None and processor.aux_lazy)
            aux_state = AuxState([int(t) for t in aux], soft, lazy, self._extend if lazy else None)
        req = _Request(
            prompt_ids=tuple(int(t) for t in prompt_ids),
            soft_prompt=soft,
            aux=aux_state,
            params=params,
            processor=processor,
            generator=generator,
            max_new=min(params.max_tokens, self.max_context - longest),
            text=TextStream(self.tokenizer, prompt_ids, params.stop),
            on_event=on_event,
            calls_process=processor is not None and type(processor).process is not Processor.process,
        )
        with self._cond:
            self._waiting.append(req)
            self._cond.notify()
        return RequestHandle(self, req)

    def check(
        self, prompt_ids: Sequence[int], params: SamplingParams, processor: Processor | None = None,
        soft_prompt: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, Sequence[int] | None, int]:
        """What ``submit`` checks, without queuing: raises SamplingParamError naming the bad field.
        Returns the soft prompt on the model's device, the auxiliary prompt and the longest prompt length."""
        params.validate()
        if self._closed:
            raise EngineError("engine is closed")
        if not prompt_ids:
            raise SamplingParamError("the prompt is empty", "prompt")
        soft = self._check_soft_prompt(soft_prompt)
        n_soft = 0 if soft is None else int(soft.shape[0])
        aux = processor.aux_prompt_ids() if processor is not None else None
        longest = n_soft + max(len(prompt_ids), len(aux) if aux is not None else 0)
        if longest >= self.max_context:
            raise SamplingParamError(
                f"prompt of {longest} positions leaves no room in the {self.max_context}-token context", "prompt"
            )
        for ids in (prompt_ids, aux or ()):
            if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
                raise SamplingParamError(f"token ids must be in [0, {self.vocab_size})", "prompt")
        if aux is not None and not aux:
            raise SamplingParamError("the auxiliary prompt is empty", "prompt")
        return soft, aux, longest

    def _check_soft_prompt(self, soft: Any) -> torch.Tensor | None:
        if soft is None:
            return None
        if not isinstance(soft, torch.Tensor) or soft.dim() != 2 or soft.shape[1] != self.hidden_size:
            raise SamplingParamError(f"a soft prompt must be an (n, {self.hidden_size}) tensor", "soft_prompt")
        if soft.shape[0] == 0:
            return None
        if not torch.isfinite(soft).all():
            raise SamplingParamError("the soft prompt has non-finite values", "soft_prompt")
        return soft.detach().to(device=self.device, dtype=self.dtype)

    def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, processor: Processor | None = None,
        soft_prompt: torch.Tensor | None = None,
    ) -> GenerationResult:
        """Blocking generation; other submitted requests are batched with it."""
        return self.submit(prompt_ids, params, processor, soft_prompt=soft_prompt).result()

    async def stream(
        self, prompt_ids: Sequence[int], params: SamplingParams, processor: Processor | None = None,
        soft_prompt: torch.Tensor | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Async stream of deltas; never blocks the event loop. Closing it early cancels the request."""
        self.start()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamDelta] = asyncio.Queue()

        def deliver(delta: StreamDelta) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        handle = self.submit(prompt_ids, params, processor, on_event=deliver, soft_prompt=soft_prompt)
        try:
            while True:
                delta = await queue.get()
                if delta.finish_reason == "error":
                    raise EngineError(delta.error or "generation failed")
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if not handle.done:
                handle.cancel()

    async def agenerate(
        self, prompt_ids: Sequence[int], params: SamplingParams, processor: Processor | None = None,
        soft_prompt: torch.Tensor | None = None,
    ) -> GenerationResult:
        """Async whole-result generation (cancelling the awaiting task cancels the request)."""
        self.start()
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not finished.done():
                finished.set_result(None)

        def deliver(delta: StreamDelta) -> None:
            if delta.finish_reason is not None:
                loop.call_soon_threadsafe(resolve)

        handle = self.submit(prompt_ids, params, processor, on_event=deliver, soft_prompt=soft_prompt)
        try:
            await finished
        finally:
            if not handle.done:
                handle.cancel()
        # The last delta is delivered a moment before the result is stored: wait off the loop.
        return await asyncio.to_thread(handle.result, 30.0)

    # ---- exclusive model calls -----------------------------------------------------------------

    def run_exclusive(self, fn: Callable[[Any], T]) -> concurrent.futures.Future[T]:
        """Schedule ``fn(model)`` on the engine thread between two decode steps, in inference mode.

        Nothing else runs the model meanwhile (batched decoding pauses for it). Returns a future of
        ``fn``'s result (its exception if it raised). Without a running loop it runs inline, now."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise EngineError("engine is closed")
            self._calls.append(_Call(fn, future))
            self._cond.notify()
        if not self.running:
            with self._step_lock:
                self._run_calls()
        return future

    async def arun_exclusive(self, fn: Callable[[Any], T]) -> T:
        """``run_exclusive`` for asyncio: awaits the result without blocking the event loop."""
        self.start()
        return await asyncio.wrap_future(self.run_exclusive(fn))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ForwardOutput:
        """One plain forward (no cache) over ``input_ids`` (B, T) or ``inputs_embeds`` (B, T, d), for use
        inside an exclusive call: ``engine.arun_exclusive(lambda m: engine.forward(...))``.

        Returns float32 logits (B, T, V) and, when asked, every layer's attention weights (B, H, T, T) (the
        model switches to eager attention for that call, since fused kernels do not return weights)."""
        if self.running and threading.current_thread() is not self._thread:
            raise RuntimeError("Engine.forward runs on the engine thread: call it inside run_exclusive")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        inputs = {"input_ids": input_ids} if input_ids is not None else {"inputs_embeds": inputs_embeds}
        impl = getattr(self.model.config, "_attn_implementation", None)
        switch = output_attentions and impl not in (None, "eager")
        if switch:
            self.model.set_attn_implementation("eager")
        try:
            with torch.inference_mode():
                out = self.model(**inputs, attention_mask=attention_mask, use_cache=False,
                                 output_attentions=output_attentions)
        finally:
            if switch:
                self.model.set_attn_implementation(impl)
        attentions = tuple(out.attentions) if output_attentions else None
        return ForwardOutput(out.logits.float(), attentions)  # (B, T, V)

    # ---- lifecycle -----------------------------------------------------------------------------

    @property
    def running_requests(self) -> int:
        """Requests holding batch rows."""
        return sum(1 for _, aux in self._rows if not aux)

    @property
    def waiting_requests(self) -> int:
        """Requests queued for a free row."""
        return len(self._waiting)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Run the decode loop on a daemon thread (idempotent)."""
        with self._cond:
            if self._closed:
                raise EngineError("engine is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="promptwire-engine", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the loop; requests still queued or running finish with reason "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._step_lock:
            pending = list(self._waiting) + [req for req, aux in self._rows if not aux]
            self._waiting.clear()
            for req in pending:
                self._finish(req, "cancelled", "", ())
            while self._calls:
                self._calls.popleft().future.set_exception(EngineError("engine is closed"))
            self._rows = []
            self._batch = BatchCache(self.device)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._rows and not self._calls:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                self.step()
            except Exception as exc:  # a bug or an OOM: fail everything in flight, keep serving
                logger.exception("decode step failed")
                with self._step_lock:
                    for req in list(self._waiting) + [r for r, aux in self._rows if not aux]:
                        self._finish(req, "error", "", (), error=f"decode step failed: {exc}")
                    self._waiting.clear()
                    self._rows = []
                    self._batch = BatchCache(self.device)

    def _cancel(self, req: _Request) -> None:
        with self._cond:
            req.cancel_requested = True
            self._cond.notify()

    # ---- the decode step -----------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> bool:
        """Advance every admitted request by one token; return whether any work remains."""
        with self._step_lock:
            # 1) exclusive model calls (scoring, model-bound stages) run between steps
            self._run_calls()
            # 2) drop cancelled requests; admit newcomers while rows are free
            newcomers = self._admit()
            # 3) one batched forward for the rows already decoding, each fed its last token
            parts = self._forward_running()
            # 4) prefill each newcomer alone, then append it as left-padded rows
            parts += self._prefill(newcomers)
            if not self._rows:
                return bool(self._waiting or self._calls)
            logits = torch.cat(parts)  # (B, V)
            mains = [req for req, aux in self._rows if not aux]
            # 5) processors adjust their rows; allowed-token sets become one additive mask
            scores, failed = self._apply_processors(mains, logits)  # (N, V)
            # 6) pick a token per row (a row with nothing allowed stops instead)
            chosen, dead, lp_rows = self._sample(mains, scores)
            # 7) append, detokenise, check stop conditions, emit deltas
            self._emit(mains, chosen, dead, lp_rows, failed)
            # 8) free the rows of finished requests
            self._evict([r for r, aux in self._rows if not aux and r.done.is_set()], None)
            return bool(self._rows or self._waiting or self._calls)

    def _run_calls(self) -> None:
        while True:
            with self._cond:
                if not self._calls:
                    return
                call = self._calls.popleft()
            if not call.future.set_running_or_notify_cancel():
                continue
            try:
                with torch.inference_mode():
                    call.future.set_result(call.fn(self.model))
            except BaseException as exc:
                call.future.set_exception(exc)

    def _admit(self) -> list[_Request]:
        with self._cond:
            for req in [r for r in self._waiting if r.cancel_requested]:
                self._waiting.remove(req)
                self._finish(req, "cancelled", "", ())
            self._evict([r for r, aux in self._rows if not aux and r.cancel_requested], "cancelled")
            newcomers: list[_Request] = []
            free = self.config.max_batch_size - len(self._rows)
            while self._waiting and (need := 1 + self._waiting[0].eager_aux) <= max(free, 0):
                newcomers.append(self._waiting.popleft())
                free -= need
            if not newcomers and not self._rows and self._waiting:
                newcomers.append(self._waiting.popleft())  # a lone request larger than the batch
        return newcomers

    def _forward_running(self) -> list[torch.Tensor]:
        if not self._rows:
            return []
        tokens = torch.tensor([[req.next_token] for req, _ in self._rows], device=self.device)  # (B, 1)
        mask, positions = self._batch.step_inputs()  # (B, L+1), (B, 1)
        logits, self._batch.cache = self._forward(tokens, mask, positions, self._batch.cache)  # (B, V)
        return [logits]

    def _prefill(self, newcomers: list[_Request]) -> list[torch.Tensor]:
        parts, caches, lengths = [], [], []
        for req in newcomers:
            streams = [(req.prompt_ids, False)] + ([(req.aux.prompt_ids, True)] if req.eager_aux else [])  # type: ignore[union-attr]
            for ids, is_aux in streams:
                logits, cache = self._extend(ids, req.soft_prompt, None, 0)  # (V,)
                parts.append(logits[None])
                caches.append(cache)
                lengths.append(len(ids) + (0 if req.soft_prompt is None else int(req.soft_prompt.shape[0])))
                self._rows.append((req, is_aux))
                if is_aux:
                    req.aux.prefilled()  # type: ignore[union-attr]
        self._batch.append(caches, lengths)
        return parts

    def _extend(self, ids: Sequence[int], soft: torch.Tensor | None, cache: Any, past: int) -> tuple[torch.Tensor, Any]:
        """One single-row forward over ``ids`` (after ``soft`` embeddings) on top of ``past`` cached positions."""
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)  # (1, T)
        n = x.shape[1] + (0 if soft is None else soft.shape[0])
        mask = torch.ones(1, past + n, dtype=torch.long, device=self.device)  # (1, past+T')
        positions = torch.arange(past, past + n, device=self.device)[None]  # (1, T')
        embeds = None
        if soft is not None:
            tokens = self.model.get_input_embeddings()(x)  # (1, T, d)
            embeds = torch.cat([soft[None], tokens], dim=1)  # (1, n+T, d)
        logits, cache = self._forward(x, mask, positions, cache, embeds)  # (1, V)
        return logits[0], cache

    def _apply_processors(self, mains: list[_Request], logits: torch.Tensor) -> tuple[torch.Tensor, dict[int, str]]:
        """logits (B, V) for all rows -> scores (N, V) for the main rows, plus {row: error} for failures."""
        main_rows = [i for i, (_, aux) in enumerate(self._rows) if not aux]
        for i, (req, aux) in enumerate(self._rows):
            if aux:
                req.aux.set_step_logits(logits[i])  # type: ignore[union-attr]  # (V,)
        scores = logits[main_rows]  # (N, V) a copy: processors may write in place
        failed: dict[int, str] = {}
        bias: torch.Tensor | None = None
        for j, req in enumerate(mains):
            allowed: torch.Tensor | None = None
            eos_ok, proc = not req.params.ignore_eos, req.processor
            if proc is not None:
                try:
                    if req.calls_process:
                        scores[j] = proc.process(scores[j], req.aux)
                    raw = proc.allowed_token_ids()
                    eos_ok = eos_ok and proc.eos_allowed()
                    allowed = None if raw is None else self._allowed_tensor(raw)
                except Exception as exc:
                    logger.exception("processor %s failed", type(proc).__name__)
                    failed[j] = f"{type(proc).__name__} failed: {exc}"
                    continue
            if allowed is None and eos_ok:
                continue
            if bias is None:
                bias = torch.zeros_like(scores)  # (N, V)
            if allowed is not None and allowed.dtype == torch.bool:
                bias[j].masked_fill_(~allowed, -math.inf)
            elif allowed is not None:
                bias[j].fill_(-math.inf)
                bias[j, allowed] = 0.0
            bias[j, self._eos_index] = 0.0 if eos_ok else -math.inf
        return (scores if bias is None else scores + bias), failed

    def _allowed_tensor(self, allowed: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """A processor's allowed set as a bool mask (V,) or a long id tensor (K,) on the engine's device."""
        t = torch.as_tensor(allowed, device=self.device)
        if t.dtype == torch.bool:
            if t.shape != (self.vocab_size,):
                raise ValueError(f"an allowed-token mask must have shape ({self.vocab_size},), got {tuple(t.shape)}")
            return t
        return t.to(torch.long).reshape(-1)

    def _sample(self, mains: list[_Request], scores: torch.Tensor) -> tuple[list[int], list[bool], dict[int, torch.Tensor]]:
        """Chosen token per main row, which rows had nothing allowed, and log-probabilities (V,) for the
        rows that asked for them."""
        dead_mask = torch.isneginf(scores).all(dim=-1)  # (N,)
        dead = [bool(d) for d in dead_mask.tolist()]
        if any(dead):
            scores[dead_mask] = 0.0  # keeps softmax finite; these rows are not used
        chosen = select_tokens(scores, [r.params for r in mains], [r.generator for r in mains])
        want_lp = [j for j, r in enumerate(mains) if r.params.top_logprobs is not None]
        lp_rows: dict[int, torch.Tensor] = {}
        if want_lp:
            rows = torch.log_softmax(scores[want_lp], dim=-1)  # (W, V)
            lp_rows = {j: rows[k] for k, j in enumerate(want_lp)}
        return chosen, dead, lp_rows

    def _emit(self, mains: list[_Request], chosen: list[int], dead: list[bool], lp_rows: dict[int, torch.Tensor],
              failed: dict[int, str]) -> None:
        for j, req in enumerate(mains):
            if j in failed:
                self._finish(req, "error", "", (), error=failed[j])
                continue
            if dead[j]:
                self._finish(req, "stop", req.text.flush(), ())
                continue
            tok = chosen[j]
            req.tokens.append(tok)
            req.next_token = tok
            if req.aux is not None:
                req.aux.push(tok)
            lps: tuple[TokenLogprob, ...] = ()
            if j in lp_rows and req.params.top_logprobs is not None:
                lps = (self._logprob(lp_rows[j], tok, req.params.top_logprobs),)
                req.logprobs.extend(lps)
            try:
                if req.processor is not None:
                    req.processor.advance(tok)
                proc_done = req.processor is not None and req.processor.finished()
            except Exception as exc:
                logger.exception("processor %s failed", type(req.processor).__name__)
                self._finish(req, "error", "", (tok,), lps, error=str(exc))
                continue
            is_eos = tok in self.eos_token_ids and not req.params.ignore_eos
            text = "" if is_eos else req.text.push(tok)
            reason = None
            if is_eos or req.text.stopped is not None or proc_done:
                reason = "stop"
            elif len(req.tokens) >= req.max_new:
                reason = "length"
            if reason is None:
                req.chunks.append(text)
                self._notify(req, StreamDelta(text, (tok,), lps))
            else:
                self._finish(req, reason, text + req.text.flush(), (tok,), lps)

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: Any,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """One model call; returns the last position's logits (B, V) as float32 and the updated cache."""
        inputs: dict[str, Any] = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        out = self.model(
            **inputs,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self._cache_kw: cache},
            **self._keep_last,
        )
        new_cache = out.cache if self._cache_kw == "cache" else out.past_key_values
        return out.logits[:, -1, :].float(), new_cache  # (B, V)

    def _logprob(self, row: torch.Tensor, tok: int, k: int) -> TokenLogprob:
        """row: (V,) log-probabilities."""
        top: tuple[tuple[int, str, float], ...] = ()
        if k:
            values, ids = torch.topk(row, k)  # (k,), (k,)
            top = tuple((int(i), self.token_text(int(i)), float(v)) for v, i in zip(values, ids, strict=True))
        return TokenLogprob(tok, self.token_text(tok), float(row[tok]), top)

    def token_text(self, token_id: int) -> str:
        """A single token's text (for logprobs); cached."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = str(self.tokenizer.decode([token_id]))
        return text

    def _evict(self, reqs: Sequence[_Request], reason: str | None) -> None:
        if not reqs:
            return
        for req in reqs:
            if reason is not None and not req.done.is_set():
                self._finish(req, reason, "", ())
        gone = {id(r) for r in reqs}
        keep = [i for i, (r, _) in enumerate(self._rows) if id(r) not in gone]
        self._rows = [self._rows[i] for i in keep]
        self._batch.keep(keep)

    def _notify(self, req: _Request, delta: StreamDelta) -> None:
        if req.on_event is not None:
            try:
                req.on_event(delta)
            except Exception:  # e.g. the consumer's event loop is gone: nobody is listening
                logger.warning("dropping a request whose consumer failed", exc_info=True)
                req.cancel_requested = True

    def _finish(
        self,
        req: _Request,
        reason: str,
        text: str,
        token_ids: tuple[int, ...],
        lps: tuple[TokenLogprob, ...] = (),
        error: str | None = None,
    ) -> None:
        if req.done.is_set():
            return
        usage = Usage(req.length, len(req.tokens), req.aux.prompt_tokens if req.aux is not None else 0)
        if req.aux is not None:
            req.aux.release()
        req.chunks.append(text)
        stats: dict[str, Any] = {}
        if req.processor is not None and reason != "error":
            try:
                stats = dict(req.processor.stats())
            except Exception:
                logger.exception("processor %s stats failed", type(req.processor).__name__)
        req.result = GenerationResult(
            text="".join(req.chunks),
            token_ids=tuple(req.tokens),
            finish_reason=reason,
            usage=usage,
            logprobs=tuple(req.logprobs),
            stop=req.text.stopped,
            processor_stats=stats,
        )
        req.error = error
        req.done.set()  # before the final delta goes out, so a woken consumer finds the result ready
        proc_stats = stats if req.processor is not None else None
        self._notify(req, StreamDelta(text, token_ids, lps, reason, usage, error, proc_stats))
