"""``RemoteCache``: what transformers' ``generate`` sees as the model's KV cache, while the real caches
live on the servers.

transformers decides from ``cache.get_seq_length()`` which tokens a forward pass still has to compute,
and passes only those; the model's ``forward`` hands them to :meth:`RemoteCache.step`, which sends
them through one inference session. So every decoding step sends one token per row, as a hand-written
loop would, and failover/replay stay the inference session's business.

Padding. The servers' blocks attend causally over every position they hold, with positions counted
from the first one; they receive no attention mask. A left-padded batch would make real tokens attend
to the pads, so such a batch is not sent as one: each row gets a session of its own and is sent only
its real tokens (the positions left out are exactly the ones transformers masks, so the numbers are
the same; it costs one round trip per row and step instead of one per step).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import Cache

from core.client.inference_session import InferenceSession
from core.errors import InvalidRequestError, SequenceTooLongError

if TYPE_CHECKING:
    from core.models.base import DistributedModelForCausalLM

logger = logging.getLogger(__name__)


class RemoteCache(Cache):
    """The servers' KV caches of one generation, as a transformers ``Cache``.

    ``max_length`` is the number of tokens the sessions must be able to hold (``None``: set later by
    :meth:`reserve`, once ``generate`` knows it). ``token_ids`` ``[batch, seen]`` are the tokens the
    servers have processed (``None`` when they came as ``inputs_embeds``); ``attention_mask`` their mask.
    """

    def __init__(self, model: "DistributedModelForCausalLM", max_length: int | None = None) -> None:
        super().__init__(layers=[])
        self.model = model
        self.max_length = max_length
        self.seen = 0
        self.token_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None  # kept only for a padded batch (one session per row)
        self._batched: InferenceSession | None = None
        self._rows: list[InferenceSession] | None = None
        self._batch = -1  # rows, once the first step opened the sessions
        self._closed = False

    # ---- what transformers asks ---------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions (pads included) the servers have processed for every row."""
        return self.seen

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1 if self.max_length is None else self.max_length

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return self.seen > 0

    @property
    def is_linear(self) -> list[bool]:
        return [False]  # attention caches: transformers slices the tokens already sent off the inputs

    @property
    def is_sliding(self) -> list[bool]:
        return [False]

    @property
    def is_dummy(self) -> list[bool]:
        return [False]

    @property
    def batch_size(self) -> int:
        return self._batch

    @property
    def sessions(self) -> list[InferenceSession]:
        """The inference sessions in use (one, or one per row of a padded batch; empty before the first step)."""
        if self._batched is not None:
            return [self._batched]
        return list(self._rows or [])

    def update(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidRequestError("a RemoteCache holds no local keys and values: the blocks run on the servers")

    def crop(self, tokens_to_remove: int) -> None:
        self._refuse("removing tokens from it (assisted or speculative decoding)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._refuse("reordering its rows (beam search runs without a cache; do not pass a cache with num_beams > 1)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._refuse("repeating its rows")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._refuse("selecting some of its rows")

    def reset(self) -> None:
        self._refuse("resetting it (open a new inference session instead)")

    def _refuse(self, what: str) -> None:
        raise InvalidRequestError(f"the servers' caches of an inference session do not support {what}")

    # ---- the servers --------------------------------------------------------------------------
    def reserve(self, max_length: int) -> None:
        """Make sure the sessions can hold ``max_length`` tokens (sizes a cache created without one)."""
        if self.max_length is None:
            self.max_length = max_length
        elif max_length > self.max_length:
            raise SequenceTooLongError(
                f"this generation needs room for {max_length} tokens but the inference session holds at most "
                f"{self.max_length}; open model.inference_session(max_length=...) with a larger max_length"
            )

    def step(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Send the next positions ``inputs_embeds`` ``[batch, q, hidden]`` through every block; returns the last
        block's outputs ``[batch, q, hidden]`` (zeros at padded positions).

        ``attention_mask`` ``[batch, seen + q]`` (1: a token, 0: padding) covers every position so far, as
        transformers passes it; ``input_ids`` ``[batch, q]`` are recorded so a session can be continued.
        """
        if self._closed:
            raise InvalidRequestError("this inference session is closed; open a new one")
        batch, length = inputs_embeds.shape[:2]
        if length == 0:
            raise InvalidRequestError("nothing to send: pass the new tokens (the prompt or the next user turn)")
        if self._batch != -1 and batch != self._batch:
            raise InvalidRequestError(f"batch size {batch} differs from the inference session's {self._batch}")
        new_mask = self._new_mask(attention_mask, batch, length)
        if self._batched is None and self._rows is None:
            self._open(batch, padded=new_mask is not None)
        if self._rows is not None:
            output = self._step_rows(inputs_embeds, new_mask)
        else:
            if new_mask is not None:
                raise InvalidRequestError(
                    "attention_mask: padding is only accepted in a session's first tokens (a left-padded batch of "
                    "prompts); later tokens must all be real (mask 1)")
            output = self._send(self._batched, inputs_embeds)
        self._record(input_ids, attention_mask, batch, length)
        return output

    def _new_mask(self, attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
        """The new positions' mask ``[batch, q]`` as booleans, or ``None`` when every position is a token."""
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, self.seen + length):
            raise InvalidRequestError(
                f"attention_mask must be [batch, past + new tokens] = [{batch}, {self.seen + length}], got "
                f"{list(attention_mask.shape)}")
        if self._rows is None and self.attention_mask is None and bool(attention_mask.all()):
            return None  # every position so far is a token (the usual case, checked in one pass)
        mask = attention_mask.to("cpu").bool()
        known = self.attention_mask if self.attention_mask is not None else torch.ones(batch, self.seen, dtype=torch.bool)
        if not torch.equal(mask[:, : self.seen], known):
            raise InvalidRequestError("attention_mask differs from the one given for the tokens already sent")
        new = mask[:, self.seen :]
        if bool(new.all()) and self._rows is None:
            return None
        if not bool(new[:, -1].all()):
            row = int((~new[:, -1]).nonzero()[0])
            raise InvalidRequestError(
                f"attention_mask: the last position of row {row} is padding; pad batches on the left "
                "(tokenizer.padding_side = 'left') so every row ends with a real token")
        return new

    def _open(self, batch: int, padded: bool) -> None:
        if self.max_length is None:
            raise InvalidRequestError("the inference session's max_length is not set")
        length = self.max_length + self.model.pre_seq_len  # the servers also hold the trained prompts
        blocks = self.model.transformer_blocks
        if padded:
            logger.debug("Padded batch of %d: one inference session per row", batch)
            self._rows = [blocks.inference_session(length) for _ in range(batch)]
        else:
            self._batched = blocks.inference_session(length)
        self._batch = batch

    def _send(self, session: InferenceSession, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """One step of ``session``; the trained prompts go with its first step (and are cut off the output)."""
        first = session.position == 0
        hidden, deep_prompts = self.model.first_block_inputs(inputs_embeds, with_prompts=first)
        output = session.step(hidden, prompts=deep_prompts)
        return output[:, self.model.pre_seq_len :] if first else output

    def _step_rows(self, inputs_embeds: torch.Tensor, new_mask: torch.Tensor | None) -> torch.Tensor:
        output = torch.zeros_like(inputs_embeds)
        for row, session in enumerate(self._rows):
            positions = slice(None) if new_mask is None else new_mask[row].nonzero().flatten().to(inputs_embeds.device)
            output[row, positions] = self._send(session, inputs_embeds[row : row + 1, positions])[0]
        return output

    def _record(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int, length: int
    ) -> None:
        if input_ids is None or (self.seen and self.token_ids is None):
            self.token_ids = None
        else:
            new = input_ids.detach().to("cpu")
            self.token_ids = new if self.token_ids is None else torch.cat([self.token_ids, new], dim=1)
        if self._rows is not None:
            mask = torch.ones(batch, self.seen + length, dtype=torch.bool) if attention_mask is None else \
                attention_mask.to("cpu").bool()
            self.attention_mask = mask
        self.seen += length

    def close(self) -> None:
        """End the sessions on every server (frees their KV caches)."""
        if self._closed:
            return
        self._closed = True
        for session in self.sessions:
            session.close()

    def __repr__(self) -> str:
        return f"RemoteCache(seen={self.seen}, max_length={self.max_length}, sessions={len(self.sessions)})"
