"""Attention masks shared by the block spans of every family."""
from __future__ import annotations

import torch


def additive_causal_mask(
    batch_size: int, query_length: int, past_length: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A float mask ``[batch, 1, query, past + query]``: 0 where attention is allowed, -inf-like elsewhere.

    Query position ``i`` (absolute position ``past_length + i``) may attend to keys ``0..past_length + i``.
    """
    kv_length = past_length + query_length
    query_positions = torch.arange(past_length, kv_length, device=device)[:, None]
    key_positions = torch.arange(kv_length, device=device)[None, :]
    blocked = key_positions > query_positions
    mask = torch.zeros(query_length, kv_length, dtype=dtype, device=device)
    mask.masked_fill_(blocked, torch.finfo(dtype).min)
    return mask[None, None].expand(batch_size, 1, query_length, kv_length)
