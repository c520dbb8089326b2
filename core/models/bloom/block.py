"""Server side of BLOOM: a span of consecutive ``BloomBlock``s with ALiBi and a causal mask."""
from __future__ import annotations

import torch
from torch import nn
from transformers import BloomConfig
from transformers.cache_utils import Cache
from transformers.models.bloom.modeling_bloom import BloomAttention, BloomBlock, _get_alibi_slopes

from core.models.masks import additive_causal_mask
from core.models.ragged import DecodingGroup, RaggedBatch


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
        alibi = self._alibi(batch_size, kv_length, dtype, device)
        mask = additive_causal_mask(batch_size, query_length, past_length, dtype, device)
        for block in self.blocks[active]:
            hidden_states = block(
                hidden_states, alibi, mask, layer_past=cache, use_cache=cache is not None
            )[0]
        return hidden_states

    def _alibi(self, batch_size: int, kv_length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """ALiBi biases ``[batch * heads, 1, kv_length]`` for keys at positions ``0 .. kv_length - 1``."""
        slopes = _get_alibi_slopes(self.num_heads, device)
        return (slopes[:, None, None] * torch.arange(kv_length, device=device)).repeat(batch_size, 1, 1).to(dtype)

    def forward_ragged(self, batch: RaggedBatch, active: slice = slice(None)) -> torch.Tensor:
        """Run blocks ``active`` on every step of ``batch`` at once (see :mod:`core.models.ragged`); each step
        reads and extends its own cache. Returns the flat outputs ``[1, total_tokens, hidden]``."""
        hidden_states = batch.flatten()
        for offset, block in enumerate(self.blocks[active]):
            if batch.has_prompts:
                hidden_states = batch.add_prompts(hidden_states, offset)
            normed = block.input_layernorm(hidden_states)
            residual = normed if block.apply_residual_connection_post_layernorm else hidden_states
            attended = self._ragged_attention(block.self_attention, normed, residual, batch)
            normed = block.post_attention_layernorm(attended)
            residual = normed if block.apply_residual_connection_post_layernorm else attended
            hidden_states = block.mlp(normed, residual)
        return hidden_states

    def _ragged_attention(
        self, attention: BloomAttention, hidden_states: torch.Tensor, residual: torch.Tensor, batch: RaggedBatch
    ) -> torch.Tensor:
        """``BloomAttention.forward`` over a ragged batch: the fused projection on all tokens; then the decoding
        steps' ALiBi attention as one padded batch, and each longer step's on its own cache; then the output
        projection on all tokens."""
        fused = attention.query_key_value(hidden_states)[0]
        contexts: list[torch.Tensor | None] = [None] * len(batch.steps)
        for group in batch.decoding_plan(fused.dtype, fused.device):
            self._decoding_attention(attention, fused, batch, group, contexts)
        for index, step in enumerate(batch.steps):
            if contexts[index] is not None:
                continue
            part = fused[batch.offsets[index] : batch.offsets[index + 1]]
            query, key, value = attention._reshape(part.reshape(step.rows, step.new_tokens, -1))
            key, value = step.cache.update(key, value, attention.layer_idx)
            mask = None if step.new_tokens == 1 else additive_causal_mask(
                step.rows, step.new_tokens, step.past_length, fused.dtype, fused.device)
            contexts[index] = self._attend(attention, query, key, value, mask)
        context = torch.cat(contexts)[None]
        if attention.pretraining_tp > 1 and attention.slow_but_exact:
            slices = attention.hidden_size / attention.pretraining_tp
            output = torch.zeros_like(context)
            for index in range(attention.pretraining_tp):
                output = output + torch.nn.functional.linear(
                    context[:, :, int(index * slices) : int((index + 1) * slices)],
                    attention.dense.weight[:, int(index * slices) : int((index + 1) * slices)],
                )
        else:
            output = attention.dense(context)
        return residual + output

    def _decoding_attention(
        self,
        attention: BloomAttention,
        fused: torch.Tensor,
        batch: RaggedBatch,
        group: DecodingGroup,
        contexts: list[torch.Tensor | None],
    ) -> None:
        """The attention of the single-token steps of ``group`` in one call: each extends its own cache, then all
        their histories, padded to the longest, meet their queries at once. Fills ``contexts`` at those steps."""
        query, key, value = attention._reshape(fused[group.positions][:, None])
        keys, values = batch.extend_caches(group, key, value, attention.layer_idx)
        batch.scatter_rows(group, self._attend(attention, query, keys, values, group.mask), contexts)

    def _attend(
        self,
        attention: BloomAttention,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """BLOOM's ALiBi attention of ``query`` ``[rows, heads, q, dim]`` over ``key`` and ``value``
        ``[rows, heads, kv, dim]`` (``mask`` additive, or ``None``), as ``[rows * q, hidden]``."""
        rows, heads, query_length, head_dim = query.shape
        kv_length = key.shape[2]
        scores = self._alibi(rows, kv_length, query.dtype, query.device).baddbmm(
            batch1=query.reshape(rows * heads, query_length, head_dim),
            batch2=key.reshape(rows * heads, kv_length, head_dim).transpose(-1, -2),
            beta=attention.beta,
            alpha=attention.inv_norm_factor,
        ).view(rows, heads, query_length, kv_length)
        if mask is not None:
            scores = scores + mask
        probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        context = torch.bmm(probs.view(rows * heads, query_length, kv_length),
                            value.reshape(rows * heads, kv_length, head_dim))
        return attention._merge_heads(context).reshape(rows * query_length, -1)
