"""``RemoteCache`` without a swarm: what it tells transformers, and the inputs it refuses before any server is
contacted (the sessions open on the first step that passes these checks)."""
from __future__ import annotations

import pytest
import torch

from core.client.generation import GenerationSession
from core.client.remote_cache import RemoteCache
from core.errors import InvalidRequestError, SequenceTooLongError


def test_transformers_sees_an_empty_attention_cache():
    cache = RemoteCache(model=None, max_length=8)
    assert cache.get_seq_length() == 0
    assert cache.is_linear == [False]  # so transformers slices the positions already sent off the inputs
    assert not cache.is_croppable and not cache.is_compileable and not cache.is_initialized
    assert cache.get_max_length() == 8
    assert cache.sessions == []


@pytest.mark.parametrize("call, what", [
    (lambda cache: cache.crop(-1), "removing tokens"),
    (lambda cache: cache.reorder_cache(torch.tensor([1, 0])), "reordering its rows"),
    (lambda cache: cache.batch_select_indices(torch.tensor([0])), "selecting some of its rows"),
    (lambda cache: cache.batch_repeat_interleave(2), "repeating its rows"),
    (lambda cache: cache.update(torch.zeros(1), torch.zeros(1), 0), "no local keys"),
])
def test_what_only_a_local_cache_can_do_is_refused(call, what):
    with pytest.raises(InvalidRequestError, match=what):
        call(RemoteCache(model=None, max_length=8))


def test_reserve_sizes_once_then_checks():
    cache = RemoteCache(model=None)
    assert cache.get_max_length() == -1
    cache.reserve(12)
    cache.reserve(10)
    with pytest.raises(SequenceTooLongError, match="room for 13 tokens.*at most 12.*larger max_length"):
        cache.reserve(13)


def test_bad_attention_masks_are_refused_before_any_server_is_contacted():
    embeds = torch.zeros(2, 3, 4)
    with pytest.raises(InvalidRequestError, match=r"attention_mask must be \[batch, past \+ new tokens\] = \[2, 3\]"):
        RemoteCache(model=None, max_length=8).step(embeds, torch.ones(2, 4))
    right_padded = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(InvalidRequestError, match="last position of row 1 is padding; pad batches on the left"):
        RemoteCache(model=None, max_length=8).step(embeds, right_padded)
    with pytest.raises(InvalidRequestError, match="nothing to send"):
        RemoteCache(model=None, max_length=8).step(torch.zeros(2, 0, 4))


def test_a_closed_cache_refuses_steps():
    cache = RemoteCache(model=None, max_length=8)
    cache.close()
    with pytest.raises(InvalidRequestError, match="closed; open a new one"):
        cache.step(torch.zeros(1, 1, 4))


def test_a_new_session_needs_a_prompt_and_a_positive_length():
    with pytest.raises(InvalidRequestError, match="max_length must be positive"):
        GenerationSession(model=None, max_length=0)
    session = GenerationSession(model=None, max_length=8)
    with pytest.raises(InvalidRequestError, match="pass input_ids"):
        session.inputs(None, None)
    prompt, mask = torch.tensor([[5, 6]]), torch.tensor([[1, 1]])
    assert session.inputs(prompt, mask) == (prompt, mask)
