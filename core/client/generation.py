"""Token generation through the swarm: greedy or sampled, streamed, continuing one session across calls.

Sampling uses transformers' own logits processors, so temperature, top-k, top-p and repetition
penalty mean exactly what they mean in Hugging Face ``generate``.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.client.inference_session import InferenceSession
from core.errors import InvalidRequestError

if TYPE_CHECKING:
    from core.models.base import DistributedModelForCausalLM

logger = logging.getLogger(__name__)


class GenerationSession:
    """An inference session of a whole model that remembers its tokens, so ``generate`` calls can continue it.

    ``token_ids`` holds every token of the conversation so far; the servers have processed the
    first ``sent`` of them (the last generated token is sent at the start of the next call).
    """

    def __init__(self, model: "DistributedModelForCausalLM", max_length: int) -> None:
        self.model = model
        self.max_length = max_length
        # the servers also hold the prompt positions (prompt tuning) in front of the tokens
        self.inference: InferenceSession = model.transformer_blocks.inference_session(max_length + model.pre_seq_len)
        self.token_ids: torch.Tensor | None = None
        self.sent = 0

    def __enter__(self) -> "GenerationSession":
        self.model.session_opened(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.model.session_closed(self)
        self.close()

    def close(self) -> None:
        self.inference.close()

    def append(self, input_ids: torch.Tensor | None) -> torch.Tensor:
        """Add new tokens to the conversation; returns all tokens."""
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise InvalidRequestError(f"input_ids must be [batch, seq_len], got {list(input_ids.shape)}")
            if self.token_ids is None:
                self.token_ids = input_ids.clone()
            elif input_ids.shape[0] != self.token_ids.shape[0]:
                raise InvalidRequestError(
                    f"batch size {input_ids.shape[0]} differs from the session's {self.token_ids.shape[0]}"
                )
            else:
                self.token_ids = torch.cat([self.token_ids, input_ids.to(self.token_ids.device)], dim=1)
        if self.token_ids is None or self.token_ids.shape[1] == self.sent:
            raise InvalidRequestError("nothing to generate from: pass input_ids (the prompt or the next user turn)")
        return self.token_ids

    @torch.no_grad()
    def next_logits(self) -> torch.Tensor:
        """Send the tokens the servers have not seen; return the logits ``[batch, vocab]`` of the last one.

        The first step carries the trained prompts (if any): the prefix in front of the tokens and,
        for ``deep_ptune``, the per-block prompts the servers add.
        """
        assert self.token_ids is not None
        pending = self.token_ids[:, self.sent :]
        inputs_embeds = self.model.get_input_embeddings()(pending)
        hidden, deep_prompts = self.model.first_block_inputs(inputs_embeds, with_prompts=self.sent == 0)
        output = self.inference.step(hidden, prompts=deep_prompts)
        self.sent = self.token_ids.shape[1]
        return self.model.head(output[:, -1:])[:, -1].float()


def build_logits_processors(
    do_sample: bool, temperature: float, top_k: int | None, top_p: float, repetition_penalty: float
) -> LogitsProcessorList:
    """transformers' processors for the given sampling settings (validated)."""
    processors = LogitsProcessorList()
    if repetition_penalty <= 0:
        raise InvalidRequestError(f"repetition_penalty must be positive, got {repetition_penalty}")
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if do_sample:
        if temperature <= 0:
            raise InvalidRequestError(f"temperature must be positive when sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {top_p}")
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
    return processors


@torch.no_grad()
def generate(
    model: "DistributedModelForCausalLM",
    input_ids: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    streamer: Any = None,
    session: GenerationSession | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens; returns every token of the session (prompt included)."""
    if max_new_tokens < 0:
        raise InvalidRequestError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    session = session or model.active_session
    owns_session = session is None
    if owns_session:
        if input_ids is None:
            raise InvalidRequestError("pass input_ids, or call generate inside model.inference_session(...)")
        session = GenerationSession(model, max_length or input_ids.shape[1] + max_new_tokens)
    try:
        token_ids = session.append(input_ids)
        if token_ids.shape[1] + max_new_tokens - 1 > session.max_length:
            raise InvalidRequestError(
                f"{token_ids.shape[1]} tokens plus {max_new_tokens} new ones do not fit the session's max_length="
                f"{session.max_length}"
            )
        processors = build_logits_processors(do_sample, temperature, top_k, top_p, repetition_penalty)
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        eos_tensor = torch.tensor(eos, dtype=torch.long)
        pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        unfinished = torch.ones(token_ids.shape[0], dtype=torch.bool)
        if streamer is not None:
            streamer.put(token_ids.cpu())
        for _ in range(max_new_tokens):
            scores = processors(session.token_ids, session.next_logits())
            if do_sample:
                next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                next_tokens = scores.argmax(dim=-1)
            if eos:
                next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
                unfinished &= ~torch.isin(next_tokens, eos_tensor)
            session.append(next_tokens[:, None])
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            if eos and not unfinished.any():
                break
        if streamer is not None:
            streamer.end()
        return session.token_ids
    finally:
        if owns_session:
            session.close()
