"""Server side of Llama: a span of consecutive ``LlamaDecoderLayer``s with rotary embeddings."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from core.models.ragged import DecodingGroup, RaggedBatch, causal_mask_if_needed


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
        mask = causal_mask_if_needed(batch_size, query_length, past_length, dtype, device,
                                     implicit_causal=self.config._attn_implementation == "sdpa")
        if cache is not None and not torch.is_grad_enabled():  # inference: the same math, fewer Python layers
            attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
            for block in self.blocks[active]:
                hidden_states = _inference_block(block, hidden_states, position_embeddings, mask, cache, attend)
            return hidden_states
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

    def forward_ragged(self, batch: RaggedBatch, active: slice = slice(None)) -> torch.Tensor:
        """Run blocks ``active`` on every step of ``batch`` at once (see :mod:`core.models.ragged`); each step
        reads and extends its own cache. Returns the flat outputs ``[1, total_tokens, hidden]``."""
        hidden_states = batch.flatten()
        position_embeddings = self.rotary_emb(hidden_states, batch.position_ids(hidden_states.device))
        for offset, block in enumerate(self.blocks[active]):
            if batch.has_prompts:
                hidden_states = batch.add_prompts(hidden_states, offset)
            residual = hidden_states
            attended = self._ragged_attention(block.self_attn, block.input_layernorm(hidden_states),
                                              position_embeddings, batch)
            hidden_states = residual + attended
            residual = hidden_states
            hidden_states = residual + block.mlp(block.post_attention_layernorm(hidden_states))
        return hidden_states

    def _ragged_attention(
        self,
        attention: LlamaAttention,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        batch: RaggedBatch,
    ) -> torch.Tensor:
        """``LlamaAttention.forward`` over a ragged batch: projections and rotary embeddings on all tokens; then
        the decoding steps' attention as one padded batch, and each longer step's on its own cache with the
        mask it would get alone."""
        head_dim = attention.head_dim
        flat_shape = (1, batch.total_tokens, -1, head_dim)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(attention.q_proj(hidden_states).view(flat_shape),
                                          attention.k_proj(hidden_states).view(flat_shape), cos, sin, unsqueeze_dim=2)
        value = attention.v_proj(hidden_states).view(flat_shape)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        outputs: list[torch.Tensor | None] = [None] * len(batch.steps)
        for group in batch.decoding_plan(query.dtype, query.device):
            self._decoding_attention(attention, attend, query, key, value, batch, group, outputs)
        implicit_causal = self.config._attn_implementation == "sdpa"
        for index, step in enumerate(batch.steps):
            if outputs[index] is not None:
                continue
            step_key, step_value = step.cache.update(batch.heads_of(key, index, head_dim),
                                                     batch.heads_of(value, index, head_dim), attention.layer_idx)
            mask = causal_mask_if_needed(step.rows, step.new_tokens, step.past_length, hidden_states.dtype,
                                         hidden_states.device, implicit_causal)
            outputs[index], _ = attend(attention, batch.heads_of(query, index, head_dim), step_key, step_value, mask,
                                       dropout=0.0, scaling=attention.scaling)
        return attention.o_proj(batch.join_heads(outputs))

    @staticmethod
    def _decoding_attention(
        attention: LlamaAttention,
        attend: Callable,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        batch: RaggedBatch,
        group: DecodingGroup,
        outputs: list[torch.Tensor | None],
    ) -> None:
        """The attention of the single-token steps of ``group`` in one call: each extends its own cache, then all
        their histories, padded to the longest, meet their queries at once. Fills ``outputs`` at those steps."""
        keys, values = batch.extend_caches(group, key[0, group.positions, :, None], value[0, group.positions, :, None],
                                           attention.layer_idx)
        output, _ = attend(attention, query[0, group.positions, :, None], keys, values, group.mask, dropout=0.0,
                           scaling=attention.scaling)
        batch.scatter_rows(group, output, outputs)


def _inference_block(
    block: LlamaDecoderLayer,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor | None,
    cache: Cache,
    attend: Callable,
) -> torch.Tensor:
    """``block(hidden_states, ...)`` for inference with a cache: transformers' ``LlamaDecoderLayer`` and
    ``LlamaAttention`` operations in their order (the same numbers), without their module calls, decorators and
    keyword handling, which cost a small model's decoding step about as much as its matrix products."""
    attention, mlp = block.self_attn, block.mlp
    batch_size, query_length, _ = hidden_states.shape
    heads_shape = (batch_size, query_length, -1, attention.head_dim)
    normed = _rms_norm(block.input_layernorm, hidden_states)
    query = _linear(attention.q_proj, normed).view(heads_shape).transpose(1, 2)
    key = _linear(attention.k_proj, normed).view(heads_shape).transpose(1, 2)
    value = _linear(attention.v_proj, normed).view(heads_shape).transpose(1, 2)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    key, value = cache.update(key, value, attention.layer_idx)
    attended, _ = attend(attention, query, key, value, mask, dropout=0.0, scaling=attention.scaling)
    hidden_states = hidden_states + _linear(attention.o_proj, attended.reshape(batch_size, query_length, -1))
    normed = _rms_norm(block.post_attention_layernorm, hidden_states)
    return hidden_states + _linear(mlp.down_proj, mlp.act_fn(_linear(mlp.gate_proj, normed)) * _linear(mlp.up_proj, normed))


def _linear(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``layer(inputs)``; a plain ``nn.Linear`` without the module call (quantized layers run their own forward)."""
    if type(layer) is nn.Linear:
        return nn.functional.linear(inputs, layer.weight, layer.bias)
    return layer(inputs)


def _rms_norm(norm: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """``LlamaRMSNorm.forward``: in float32, then back to the input's dtype and scaled."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return norm.weight * (hidden_states * torch.rsqrt(variance + norm.variance_epsilon)).to(input_dtype)
