"""Trainable prompts kept on the client: ``ptune`` (prefix embeddings) and ``deep_ptune`` (one prompt per block).

``ptune``: ``pre_seq_len`` embeddings are prepended to every input sequence (before anything the
model does to its input embeddings, e.g. BLOOM's embedding layernorm).
``deep_ptune``: in addition, block ``i`` gets ``deep_prompts[i]`` added to its input at the first
``pre_seq_len`` positions. The servers do that addition and return the prompts' gradients.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from core.errors import InvalidRequestError
from core.tuning.config import TUNING_MODES

logger = logging.getLogger(__name__)


def check_tuning_args(tuning_mode: str | None, pre_seq_len: int | None) -> None:
    """Raise :class:`InvalidRequestError` unless the pair names a valid prompt-tuning set-up (or none)."""
    if tuning_mode is None:
        if pre_seq_len:
            raise InvalidRequestError(f"pre_seq_len={pre_seq_len} needs tuning_mode='ptune' or 'deep_ptune'")
        return
    if tuning_mode not in TUNING_MODES:
        raise InvalidRequestError(f"tuning_mode must be one of {TUNING_MODES} or None, got {tuning_mode!r}")
    if not isinstance(pre_seq_len, int) or isinstance(pre_seq_len, bool) or pre_seq_len < 1:
        raise InvalidRequestError(f"tuning_mode='{tuning_mode}' needs pre_seq_len as a positive integer, got "
                                  f"{pre_seq_len!r}")


class PromptTuning(nn.Module):
    """The trainable prompts: ``prompts`` ``[pre_seq_len, hidden]`` and, for ``deep_ptune``,
    ``deep_prompts`` ``[num_blocks, pre_seq_len, hidden]`` (zeros at first, so training starts from plain ptune)."""

    def __init__(self, tuning_mode: str, pre_seq_len: int, hidden_size: int, num_blocks: int) -> None:
        super().__init__()
        check_tuning_args(tuning_mode, pre_seq_len)
        self.tuning_mode = tuning_mode
        self.pre_seq_len = pre_seq_len
        self.prompts = nn.Parameter(torch.zeros(pre_seq_len, hidden_size))
        self.deep_prompts = (
            nn.Parameter(torch.zeros(num_blocks, pre_seq_len, hidden_size)) if tuning_mode == "deep_ptune" else None
        )

    def extra_repr(self) -> str:
        return f"tuning_mode='{self.tuning_mode}', pre_seq_len={self.pre_seq_len}"

    @torch.no_grad()
    def init_from_embeddings(self, embeddings: torch.Tensor) -> None:
        """Start the prompts as the embeddings of random vocabulary tokens (uses torch's global RNG)."""
        token_ids = torch.randint(0, embeddings.shape[0], (self.pre_seq_len,))
        self.prompts.copy_(embeddings[token_ids].to(self.prompts.dtype))

    def prompt_tensors(self) -> dict[str, torch.Tensor]:
        """The prompt parameters by name, as saved in a prompts file."""
        tensors = {"prompts": self.prompts}
        if self.deep_prompts is not None:
            tensors["deep_prompts"] = self.deep_prompts
        return tensors

    def prefix(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """The prompts for a batch: ``[batch, pre_seq_len, hidden]``."""
        return self.prompts.to(dtype)[None].expand(batch_size, -1, -1)

    def per_block(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The deep prompts for a batch, ``[num_blocks, batch, pre_seq_len, hidden]``, or ``None`` for ``ptune``."""
        if self.deep_prompts is None:
            return None
        return self.deep_prompts.to(dtype)[:, None].expand(-1, batch_size, -1, -1)

