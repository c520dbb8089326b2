"""The model behind the API: prompts from messages, request checks, and one generation per call.

:class:`Engine` knows nothing of HTTP. Each :meth:`Engine.generate` call runs ``model.generate``
in the calling thread and so opens an inference session of its own through the swarm; the API
calls it from several worker threads at once, one per request (see :mod:`core.api.runner`).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from core.api.errors import ContextLengthError
from core.api.sampling import SamplingGate
from core.api.streaming import CompletionStreamer, GenerationInterrupted
from core.dht.schema import uncovered_blocks
from core.errors import InvalidRequestError, MissingBlocksError

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_LENGTH = 2048  # when a config names none


@dataclass(frozen=True)
class GenerationJob:
    """One request's generation, checked and tokenised."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def sampling(self) -> bool:
        """Temperature 0 means greedy decoding, as in OpenAI's API."""
        return self.temperature > 0


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "cancelled" (the client left)


def _as_list(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


class Engine:
    """A distributed causal LM and its tokenizer, served under ``model_id``."""

    def __init__(self, model: Any, tokenizer: Any, model_id: str, context_length: int | None = None,
                 sampling_timeout: float = 60.0) -> None:
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        config = model.config
        self.context_length = int(context_length or getattr(config, "max_position_embeddings", None)
                                  or DEFAULT_CONTEXT_LENGTH)
        eos = _as_list(getattr(config, "eos_token_id", None)) + _as_list(getattr(tokenizer, "eos_token_id", None))
        self.eos_token_ids = sorted(set(eos))
        pad = getattr(config, "pad_token_id", None)
        self.pad_token_id = pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else None)
        self.gate = SamplingGate(sampling_timeout)

    # ---- prompts ------------------------------------------------------------------------------------
    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of a conversation of ``(role, text)`` turns, ready for the assistant's answer.

        The model's chat template when it has one; otherwise plain ``Role: text`` lines ending in
        ``Assistant:`` (as the desktop app's chat does).
        """
        turns = [{"role": "system" if role == "developer" else role, "content": text} for role, text in messages]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{turn['role'].capitalize()}: {turn['content']}\n" for turn in turns) + "Assistant:"
        return self._tokens(text, add_special_tokens=False)

    def text_prompt(self, prompt: str) -> list[int]:
        """Token ids of a plain completion prompt (with the tokenizer's usual special tokens)."""
        ids = self._tokens(prompt, add_special_tokens=True)
        if not ids:
            raise InvalidRequestError("the prompt is empty; send at least one character to continue from")
        return ids

    def _tokens(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def job(self, prompt_ids: Sequence[int], max_tokens: int | None, default_max_tokens: int, temperature: float,
            top_p: float, stop: Sequence[str], seed: int | None) -> GenerationJob:
        """A checked job: the prompt and the tokens asked for fit the context window.

        Without ``max_tokens`` the answer may fill the window, up to ``default_max_tokens``.
        """
        room = self.context_length - len(prompt_ids)
        if max_tokens is None:
            if room < 1:
                raise ContextLengthError(len(prompt_ids), 1, self.context_length)
            max_tokens = min(default_max_tokens, room)
        elif max_tokens > room:
            raise ContextLengthError(len(prompt_ids), max_tokens, self.context_length)
        return GenerationJob(tuple(prompt_ids), max_tokens, temperature, top_p, tuple(stop), seed)

    # ---- the swarm -----------------------------------------------------------------------------------
    def uncovered_blocks(self, refresh: bool = False) -> list[int]:
        """Blocks no online server holds now (read from the client's view of the swarm, re-read if asked)."""
        manager = self.model.transformer_blocks.manager
        spans = manager.update() if refresh else manager.spans()
        return uncovered_blocks(spans, 0, manager.total_blocks)

    def check_swarm(self) -> None:
        """Raise :class:`MissingBlocksError` at once when blocks are missing (checked again on a fresh DHT read
        before answering so), instead of letting the session wait for servers for ``connect_timeout``."""
        if self.uncovered_blocks() and (missing := self.uncovered_blocks(refresh=True)):
            raise MissingBlocksError(missing, self.model.dht_prefix)

    # ---- generation ----------------------------------------------------------------------------------
    def generate(self, job: GenerationJob, on_text: Callable[[str], None] | None = None,
                 cancelled: threading.Event | None = None) -> GenerationResult:
        """Run one generation in this thread; ``on_text`` gets each piece of text as soon as it is final."""
        self.check_swarm()
        streamer = CompletionStreamer(self.tokenizer, job.stop, self.eos_token_ids, on_text, cancelled)
        kwargs: dict[str, Any] = {"max_new_tokens": job.max_tokens, "do_sample": job.sampling, "streamer": streamer,
                                  "pad_token_id": self.pad_token_id}
        if self.eos_token_ids:
            kwargs["eos_token_id"] = self.eos_token_ids if len(self.eos_token_ids) > 1 else self.eos_token_ids[0]
        if job.sampling:  # OpenAI's API has no top-k: 0 turns off transformers' default of 50
            kwargs.update(temperature=job.temperature, top_p=job.top_p, top_k=0)
        input_ids = torch.tensor([job.prompt_ids], dtype=torch.long)
        with self.gate.hold(job.sampling, job.seed):
            try:
                with torch.no_grad():
                    self.model.generate(input_ids, **kwargs)
            except GenerationInterrupted as reason:
                logger.debug("Generation ended early: %r", reason)
        streamer.end()
        return GenerationResult(streamer.text, len(job.prompt_ids), len(streamer.tokens), streamer.finish_reason
                                or "length")
