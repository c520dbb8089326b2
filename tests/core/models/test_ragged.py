"""A ragged batch through a Llama or BLOOM span gives each step what it gets alone (core.models.ragged)."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers.cache_utils import DynamicCache

from core.models.ragged import RaggedBatch, RaggedStep, remember_lengths, restore_lengths
from tests.numerics import assert_matches_reference
from tests.tiny_models import tiny_span_backend

HIDDEN = 64


def _session(span, rows: int, past: int, seed: int) -> tuple[torch.Tensor, DynamicCache]:
    """A cache holding ``past`` tokens of a random history, and the history itself."""
    generator = torch.Generator().manual_seed(seed)
    history = torch.randn(rows, past, HIDDEN, generator=generator)
    cache = DynamicCache()
    if past:
        span(history, cache=cache, past_length=0)
    return history, cache


def _new(rows: int, tokens: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, tokens, HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "bloom"])
@pytest.mark.parametrize("with_prompts", [False, True])
@pytest.mark.parametrize("padded_tokens", [65536, 16])  # one padded attention call for all decodes, or several
@torch.inference_mode()
def test_ragged_batch_equals_each_step_alone(with_prompts: bool, family: str, padded_tokens: int, monkeypatch) -> None:
    groups = RaggedBatch.decoding_groups
    monkeypatch.setattr(RaggedBatch, "decoding_groups", lambda self: groups(self, padded_tokens))
    backend = tiny_span_backend(family=family)
    span = backend.span
    # (rows, cached tokens, new tokens): decodes of different lengths (one of two rows, one on an empty cache),
    # a prefill on an empty cache, a chunk after a history, two rows
    shapes = [(1, 5, 1), (1, 0, 7), (1, 12, 1), (2, 3, 4), (1, 9, 1), (2, 6, 1), (1, 0, 1)]
    steps, alone = [], []
    for seed, (rows, past, new) in enumerate(shapes):
        _, cache = _session(span, rows, past, seed)
        hidden = _new(rows, new, 100 + seed)
        prompts = None
        if with_prompts and seed % 2 == 0:
            prompts = torch.randn(2, rows, min(new, 3), HIDDEN, generator=torch.Generator().manual_seed(200 + seed))
        alone_cache = copy.deepcopy(cache)
        alone.append((backend._run(hidden, 0, 2, prompts, alone_cache, past), alone_cache))
        steps.append(RaggedStep(hidden, cache, past, prompts))

    batch = RaggedBatch(steps)
    outputs = batch.split(span.forward_ragged(batch))

    for step, output, (expected, expected_cache) in zip(steps, outputs, alone):
        assert output.shape == expected.shape
        assert_matches_reference(output, expected, "a batched step's outputs")
        for layer, expected_layer in zip(step.cache.layers, expected_cache.layers):
            assert_matches_reference(layer.keys, expected_layer.keys, "the keys it cached")
            assert_matches_reference(layer.values, expected_layer.values, "the values it cached")


@torch.inference_mode()
def test_a_failed_batch_leaves_every_cache_as_it_was() -> None:
    backend = tiny_span_backend()
    steps = []
    for seed, past in enumerate([4, 0, 6]):
        _, cache = _session(backend.span, 1, past, seed)
        steps.append(RaggedStep(_new(1, 1, seed), cache, past))
    before = remember_lengths(steps)
    backend.span.forward_ragged(RaggedBatch(steps))  # extends each cache by one token
    assert [step.cache.get_seq_length(0) for step in steps] == [5, 1, 7]
    restore_lengths(steps, before)
    assert [step.cache.get_seq_length(0) for step in steps] == [4, 0, 6]


def test_decoding_steps_are_grouped_by_length_within_the_padding_limit() -> None:
    def step(rows: int, past: int, new: int = 1) -> RaggedStep:
        return RaggedStep(torch.zeros(rows, new, HIDDEN), DynamicCache(), past)

    batch = RaggedBatch([step(1, 10), step(1, 2), step(1, 30), step(2, 5), step(1, 4, new=3)])
    # by length: 2 (3 positions), 5 (2 rows x 6), 10 (11), 30 (31); the 3-token step is not decoding
    assert batch.decoding_groups(padded_tokens=44) == [[1, 3, 0], [2]]
    assert batch.decoding_groups(padded_tokens=10) == [[1], [3], [0], [2]]
