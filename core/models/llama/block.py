"""Server side of Llama: a span of consecutive ``LlamaDecoderLayer``s with rotary embeddings."""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.cache_utils import Cache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from core.models.masks import additive_causal_mask


def make_llama_block(config: LlamaConfig, index: int) -> nn.Module:
    """Block ``index`` of a Llama model (weights uninitialised)."""
    return LlamaDecoderLayer(config, layer_idx=index)


class LlamaBlockSpan(nn.Module):
    """Blocks ``start .. start + len(blocks)`` of a Llama model, run as one unit."""

    def __init__(self, config: LlamaConfig, blocks: list[nn.Module], start: int) -> None:
        super().__init__()
        self.config = config
        self.start = start
        self.blocks = nn.ModuleList(blocks)
        self.rotary_emb = LlamaRotaryEmbedding(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: Cache | None = None,
        past_length: int = 0,
        active: slice = slice(None),
    ) -> torch.Tensor:
        """Run blocks ``active`` (default: all) on ``hidden_states`` ``[batch, q, hidden]`` after ``past_length`` cached tokens."""
        batch_size, query_length, _ = hidden_states.shape
        device, dtype = hidden_states.device, hidden_states.dtype
        position_ids = torch.arange(past_length, past_length + query_length, device=device)[None].expand(batch_size, -1)
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        # One new token may attend to everything cached. Several tokens on an empty cache need no mask either:
        # transformers' sdpa attention then runs causally (is_causal), a faster kernel than an explicit mask.
        # Only several tokens after cached ones need the explicit mask (their diagonal is offset).
        needs_mask = query_length > 1 and (past_length > 0 or self.config._attn_implementation != "sdpa")
        mask = additive_causal_mask(batch_size, query_length, past_length, dtype, device) if needs_mask else None
        for block in self.blocks[active]:
            hidden_states = block(
                hidden_states,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=cache is not None,
                position_embeddings=position_embeddings,
            )
        return hidden_states
