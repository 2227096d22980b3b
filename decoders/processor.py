"""The per-request processor API that every decoder (trie, uscd, decog) implements; importable without torch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from decoders.resources import ResourceCache

if TYPE_CHECKING:
    import torch

__all__ = [
    "AuxStream",
    "DecoderContext",
    "DecoderOptionError",
    "Processor",
    "ProcessorFactory",
]

class DecoderOptionError(ValueError):
    """A decoder option is invalid; `param` names it (e.g. ``promptwire.decoder.labels``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _no_encode(text: str) -> list[int]:
    raise NotImplementedError("this DecoderContext was built without an encoder")


def _no_chat(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    raise NotImplementedError("this DecoderContext was built without a chat template")


@dataclass(frozen=True)
class DecoderContext:
    """What a processor factory knows about the request it is built for."""

    tokenizer: Any
    """The model's tokenizer (a transformers ``PreTrainedTokenizerBase``)."""
    vocab_size: int
    """Width V of the logits rows; may exceed ``len(tokenizer)`` (padded embedding matrices)."""
    eos_token_ids: frozenset[int]
    """Token ids that end generation (from the generation config and the tokenizer)."""
    prompt_ids: tuple[int, ...]
    """The request's prompt, already tokenised (chat template applied); labels are tokenised after it."""
    max_new_tokens: int
    """The request's token budget; a decoder may reject options that cannot fit in it."""
    messages: tuple[Mapping[str, Any], ...] | None = None
    """Chat requests: the messages (``{"role", "content"}``) before templating, as the prompt was built
    from them; None for completion requests."""
    prompt_text: str | None = None
    """Completion requests with a text prompt: that text before tokenising; None for chat or token ids."""
    resources: ResourceCache = field(default_factory=lambda: ResourceCache(64 << 20))
    """The model's resource cache (shared by every request on this model, bounded in bytes): build
    tables such as label tries, HMMs and DFAs once with ``resources.get_or_build(key, build)``."""
    encode: Callable[[str], list[int]] = _no_encode
    """Tokenise text as a completion prompt is tokenised (BOS handling included)."""
    chat_prompt: Callable[[Sequence[Mapping[str, Any]]], list[int]] = _no_chat
    """Render messages with the model's chat template and tokenise them, as the request's prompt was."""
    soft_prompt_tokens: int = 0
    """Embedding vectors the engine places before ``prompt_ids`` (a soft prompt); 0 when none."""
    device: str = "cpu"
    """The model's device (``cpu``, ``cuda:0``): where a decoder's per-step tensors belong."""
    config: Any = None
    """What the decoder's ``prepare(section, ctx)`` made, at start, of its operator section
    (``decoders.<name>`` in the config; decog: the loaded HMMs); None when that section is absent."""


class AuxStream(Protocol):
    """A processor's auxiliary stream (its own prompt, advanced on the main stream's tokens)."""

    forwards: int
    """Forward passes run for this stream so far (its prefill included)."""

    def logits(self) -> torch.Tensor:
        """The auxiliary stream's next-token logits (V,) at this step (float32, raw).

        Eager streams computed them in the step's batched forward. Lazy streams run their forward now,
        over every token they skipped since their last call, in one pass."""
        ...


class Processor:
    """One request's decoder. The engine calls, per step, in this order:

    1. ``process(logits, aux)`` — only if a subclass overrides it; returns adjusted logits (V,).
    2. ``allowed_token_ids()`` — ``None`` (no restriction), the ids that may come next (a list or an
       integer tensor), or a boolean mask (V,) that is True where a token may come next. The engine
       turns every row's set into one additive mask for the batch, so a constrained decoder never
       loops over the vocabulary in Python.
    3. ``eos_allowed()`` — whether an EOS id may come next. EOS ids are added to the allowed set when
       True and masked out when False, whatever ``allowed_token_ids`` says.
    4. the engine samples a token, then calls ``advance(token_id)`` (also for EOS), and stops the
       request if ``finished()`` (finish reason ``"stop"``).

    ``aux_prompt_ids()`` is asked once, before prefill: a non-``None`` token list opens an auxiliary
    stream (USCD's lame prompt, a CFG negative prompt) that the engine advances on the SAME generated
    tokens as the main stream; ``process`` then gets it as ``aux`` (:class:`AuxStream`). With
    ``aux_lazy = True`` the engine runs the auxiliary forward only on steps where ``aux.logits()`` is
    called, catching up over the skipped tokens in one pass; otherwise it shares every step's batched
    forward with the main stream.

    Logits are raw model scores (float32, before temperature / top-k / top-p). If all tokens end up
    masked the engine finishes the request with reason ``"stop"`` rather than sampling garbage.
    Processors run on the engine thread, one call at a time; they need no locking.
    """

    aux_lazy: bool = False
    """Run the auxiliary stream's forward only when ``aux.logits()`` is called (see the class docs)."""

    def aux_prompt_ids(self) -> Sequence[int] | None:
        """Token ids of an auxiliary prompt to run in lock-step, or None (the default)."""
        return None

    def process(self, logits: torch.Tensor, aux: AuxStream | None) -> torch.Tensor:
        """Return adjusted next-token logits. ``logits`` is (V,); ``aux`` is the auxiliary stream or None.

        May modify ``logits`` in place and return it. The default returns it unchanged, and the
        engine skips the call entirely for processors that do not override it.
        """
        return logits

    def allowed_token_ids(self) -> Sequence[int] | torch.Tensor | None:
        """Ids (or a boolean mask (V,)) that may come next (EOS handled by ``eos_allowed``), or None."""
        return None

    def eos_allowed(self) -> bool:
        """Whether generation may end here."""
        return True

    def advance(self, token_id: int) -> None:
        """Told the token the engine appended to this request (main and aux streams alike)."""

    def finished(self) -> bool:
        """True when the output is complete and the engine should stop without sampling more."""
        return False

    def stats(self) -> Mapping[str, Any]:
        """Small JSON-able summary reported with the result and on the stream's last delta."""
        return {}


ProcessorFactory = Callable[[Mapping[str, Any], DecoderContext], Processor]
"""``build(options, ctx)``: one request's processor from the client's decoder options (the ``decoder``
object minus ``name``). Raises :class:`DecoderOptionError` with ``param="promptwire.decoder.<option>"``
for bad options; the gateway maps it to 400 / INVALID_ARGUMENT."""
