"""Several inference sessions' steps through one span as one batch: a "ragged" batch.

Each step brings its own rows, new tokens, KV cache and past length. Per-token work (norms,
projections, MLPs) runs once over all steps' tokens laid end to end, ``[1, total_tokens, hidden]``,
so the weights are read once per batch instead of once per session. Attention reads each step's
own cache: a longer step's with the same shapes, mask and kernel it would get alone; single-token
steps' (decoding) together, their histories padded to the longest and the padding masked. Every
session gets its own numbers, within float rounding of the larger matrix products.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers.cache_utils import DynamicCache

from core.models.masks import additive_causal_mask

PADDED_TOKENS = 65536
"""At most this many rows x positions of cached keys (and as many values) are padded into one attention call
of decoding steps: a transient copy of at most that much of one layer's cache (for a model with 8 KV heads of
128 in float16, 128 MiB of keys and as much of values)."""


@dataclass
class RaggedStep:
    """One session's step: ``hidden`` ``[rows, new_tokens, hidden]`` after ``past_length`` cached tokens.

    ``prompts`` (deep prompt tuning) is ``[num_blocks, rows, p, hidden]`` with ``p <= new_tokens``: block ``i``
    of the request gets ``prompts[i]`` added to its input's first ``p`` positions.
    """

    hidden: torch.Tensor
    cache: DynamicCache
    past_length: int
    prompts: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.hidden.shape[0]

    @property
    def new_tokens(self) -> int:
        return self.hidden.shape[1]


@dataclass
class DecodingGroup:
    """Single-token steps whose attention runs as one call (:meth:`RaggedBatch.decoding_plan`): their indices,
    their tokens' positions in the flat sequence, and the mask that hides their padded histories' padding."""

    steps: list[int]
    positions: torch.Tensor
    mask: torch.Tensor | None


class RaggedBatch:
    """Steps laid end to end: step ``i`` owns tokens ``offsets[i] .. offsets[i + 1]`` of the flat sequence,
    row by row (its row 0's tokens, then row 1's ...)."""

    def __init__(self, steps: list[RaggedStep]) -> None:
        self.steps = steps
        self._plan: list[DecodingGroup] | None = None
        sizes = [step.rows * step.new_tokens for step in steps]
        self.offsets = [0]
        for size in sizes:
            self.offsets.append(self.offsets[-1] + size)

    @property
    def total_tokens(self) -> int:
        return self.offsets[-1]

    def flatten(self) -> torch.Tensor:
        """All steps' hidden states as one sequence ``[1, total_tokens, hidden]``."""
        return torch.cat([step.hidden.reshape(1, -1, step.hidden.shape[-1]) for step in self.steps], dim=1)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``[1, total_tokens, ...]`` back into each step's ``[rows, new_tokens, ...]``."""
        return [flat[0, begin:end].reshape(step.rows, step.new_tokens, *flat.shape[2:])
                for step, begin, end in zip(self.steps, self.offsets, self.offsets[1:])]

    def position_ids(self, device: torch.device) -> torch.Tensor:
        """Every token's absolute position in its session, ``[1, total_tokens]``."""
        pieces = [torch.arange(step.past_length, step.past_length + step.new_tokens, device=device).repeat(step.rows)
                  for step in self.steps]
        return torch.cat(pieces)[None]

    @property
    def has_prompts(self) -> bool:
        return any(step.prompts is not None for step in self.steps)

    def add_prompts(self, flat: torch.Tensor, block: int) -> torch.Tensor:
        """``flat`` plus each step's deep prompt of request block ``block`` at its first positions (out of place)."""
        pieces = []
        for step in self.steps:
            if step.prompts is None:
                pieces.append(flat.new_zeros(step.rows * step.new_tokens, flat.shape[-1]))
            else:
                prompt = step.prompts[block]
                padded = torch.nn.functional.pad(prompt, (0, 0, 0, step.new_tokens - prompt.shape[1]))
                pieces.append(padded.to(flat.dtype).reshape(-1, flat.shape[-1]))
        return flat + torch.cat(pieces)[None]

    def heads_of(self, flat: torch.Tensor, index: int, head_dim: int) -> torch.Tensor:
        """Step ``index``'s part of a flat projection ``[1, total_tokens, heads * head_dim]`` (or already split
        into ``[1, total_tokens, heads, head_dim]``) as ``[rows, heads, new_tokens, head_dim]``, the layout a
        lone step's attention gets."""
        step = self.steps[index]
        part = flat[0, self.offsets[index] : self.offsets[index + 1]]
        return part.reshape(step.rows, step.new_tokens, -1, head_dim).transpose(1, 2)

    def decoding_groups(self, padded_tokens: int = PADDED_TOKENS) -> list[list[int]]:
        """The single-token steps (indices), by length of their history, in groups whose padded histories
        (rows x longest) stay within ``padded_tokens``: each group's attention can run as one call."""
        decoding = sorted((index for index, step in enumerate(self.steps) if step.new_tokens == 1),
                          key=lambda index: self.steps[index].past_length)
        groups: list[list[int]] = []
        rows = 0
        for index in decoding:
            step = self.steps[index]
            if groups and (rows + step.rows) * (step.past_length + 1) <= padded_tokens:
                groups[-1].append(index)
                rows += step.rows
            else:
                groups.append([index])
                rows = step.rows
        return groups

    def decoding_plan(self, dtype: torch.dtype, device: torch.device) -> list[DecodingGroup]:
        """The groups of :meth:`decoding_groups` with more than one step, with what each layer needs for them
        (computed once per batch): each row's history is its cache plus the new token."""
        if self._plan is None:
            self._plan = [DecodingGroup(group, self.token_positions(group, device), key_padding_mask(
                [self.steps[index].past_length + 1 for index in group for _ in range(self.steps[index].rows)],
                dtype, device)) for group in self.decoding_groups() if len(group) > 1]
        return self._plan

    def extend_caches(
        self, group: DecodingGroup, new_keys: torch.Tensor, new_values: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each step of ``group`` appends its rows of ``new_keys`` and ``new_values`` (``[rows, kv_heads, 1, dim]``,
        the group's rows in order) to its own cache at ``layer_idx``; returns all their histories padded into one
        batch (:func:`padded_histories`)."""
        keys, values, first = [], [], 0
        for index in group.steps:
            rows = self.steps[index].rows
            key, value = self.steps[index].cache.update(new_keys[first : first + rows], new_values[first : first + rows],
                                                        layer_idx)
            keys.append(key)
            values.append(value)
            first += rows
        return padded_histories(keys, values)

    def scatter_rows(self, group: DecodingGroup, rows: torch.Tensor, into: list[torch.Tensor | None]) -> None:
        """Give each step of ``group`` its part of ``rows`` (the group's rows in order) at its index in ``into``."""
        first = 0
        for index in group.steps:
            count = self.steps[index].rows
            into[index] = rows[first : first + count]
            first += count

    def token_positions(self, indices: list[int], device: torch.device) -> torch.Tensor:
        """Positions in the flat sequence of the tokens of steps ``indices``, in that order."""
        return torch.cat([torch.arange(self.offsets[index], self.offsets[index + 1]) for index in indices]).to(device)

    def join_heads(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Per-step attention outputs ``[rows, new_tokens, heads, head_dim]`` as one ``[1, total_tokens, heads * head_dim]``."""
        return torch.cat([output.reshape(-1, output.shape[-2] * output.shape[-1]) for output in outputs])[None]


def causal_mask_if_needed(
    rows: int, new_tokens: int, past_length: int, dtype: torch.dtype, device: torch.device, implicit_causal: bool
) -> torch.Tensor | None:
    """The mask ``new_tokens`` after ``past_length`` cached ones need, ``None`` where none is needed.

    One new token may attend to everything cached. With ``implicit_causal`` (transformers' sdpa attention),
    several tokens on an empty cache need no mask either: the kernel then runs causally (is_causal), faster
    than with an explicit mask. Only several tokens after cached ones always need it (their diagonal is offset).
    """
    if new_tokens == 1 or (past_length == 0 and implicit_causal):
        return None
    return additive_causal_mask(rows, new_tokens, past_length, dtype, device)


def padded_histories(keys: list[torch.Tensor], values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Several steps' whole cached keys and values ``[rows, kv_heads, length, head_dim]`` (lengths differ) as one
    batch ``[total_rows, kv_heads, longest, head_dim]``, zero-padded at the end."""
    key_rows = [row.transpose(0, 1) for key in keys for row in key.unbind(0)]
    value_rows = [row.transpose(0, 1) for value in values for row in value.unbind(0)]
    return (pad_sequence(key_rows, batch_first=True).transpose(1, 2),
            pad_sequence(value_rows, batch_first=True).transpose(1, 2))


def key_padding_mask(lengths: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """The additive mask ``[rows, 1, 1, longest]`` that hides the padding :func:`padded_histories` adds to rows of
    these ``lengths`` (``None`` when every row is equally long)."""
    if len(set(lengths)) == 1:
        return None
    longest = max(lengths)
    blocked = torch.arange(longest, device=device)[None] >= torch.tensor(lengths, device=device)[:, None]
    mask = torch.zeros(len(lengths), longest, dtype=dtype, device=device).masked_fill_(blocked, torch.finfo(dtype).min)
    return mask[:, None, None]


def remember_lengths(steps: list[RaggedStep]) -> list[list[int]]:
    """Each step's cache length per layer, for :func:`restore_lengths` after a failed batch."""
    return [[layer.get_seq_length() if getattr(layer, "is_initialized", False) else 0 for layer in step.cache.layers]
            for step in steps]


def restore_lengths(steps: list[RaggedStep], lengths: list[list[int]]) -> None:
    """Crop each step's cache back to what :func:`remember_lengths` saw (layers added since end up empty)."""
    for step, before in zip(steps, lengths):
        for index, layer in enumerate(step.cache.layers):
            if getattr(layer, "is_initialized", False):
                extra = layer.get_seq_length() - (before[index] if index < len(before) else 0)
                if extra > 0:
                    layer.crop(-extra)
