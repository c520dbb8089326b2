"""Server side of BLOOM: a span of consecutive ``BloomBlock``s with ALiBi and a causal mask."""
from __future__ import annotations

import torch
from torch import nn
from transformers import BloomConfig
from transformers.cache_utils import Cache
from transformers.models.bloom.modeling_bloom import BloomBlock, _get_alibi_slopes

from core.models.masks import additive_causal_mask


def make_bloom_block(config: BloomConfig, index: int) -> nn.Module:
    """Block ``index`` of a BLOOM model (weights uninitialised)."""
    return BloomBlock(config, layer_idx=index)


class BloomBlockSpan(nn.Module):
    """Blocks ``start .. start + len(blocks)`` of a BLOOM model, run as one unit."""

    def __init__(self, config: BloomConfig, blocks: list[nn.Module], start: int) -> None:
        super().__init__()
        self.config = config
        self.start = start
        self.blocks = nn.ModuleList(blocks)
        self.num_heads = config.n_head

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: Cache | None = None,
        past_length: int = 0,
        active: slice = slice(None),
    ) -> torch.Tensor:
        """Run blocks ``active`` (default: all) on ``hidden_states`` ``[batch, q, hidden]`` after ``past_length`` cached tokens."""
        batch_size, query_length, _ = hidden_states.shape
        kv_length = past_length + query_length
        device, dtype = hidden_states.device, hidden_states.dtype
        slopes = _get_alibi_slopes(self.num_heads, device)
        alibi = (slopes[:, None, None] * torch.arange(kv_length, device=device)).repeat(batch_size, 1, 1).to(dtype)
        mask = additive_causal_mask(batch_size, query_length, past_length, dtype, device)
        for block in self.blocks[active]:
            hidden_states = block(
                hidden_states, alibi, mask, layer_past=cache, use_cache=cache is not None
            )[0]
        return hidden_states
