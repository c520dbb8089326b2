"""Kept forward graphs: charged to the KV budget, one owner, used once, expiring, evicted for inference;
and the backend's backward from a kept graph equals its backward by recompute."""
import asyncio

import pytest
import torch

from core.server.backend import SpanBackend
from core.server.graph_cache import GraphCache, KeptGraph
from core.server.memory_cache import KVCacheBudget
from tests.numerics import assert_same_computation
from tests.tiny_models import tiny_span_backend


def graph(owner: str = "alice", nbytes: int = 40) -> KeptGraph:
    hidden = torch.ones(1, 2, 3)
    return KeptGraph(owner, None, 0, 1, [hidden], [hidden], hidden, nbytes)


def test_graphs_are_charged_to_the_budget_and_used_once_by_their_owner():
    async def scenario():
        budget = KVCacheBudget(100)
        cache = GraphCache(budget)
        first, second = await cache.put(graph()), await cache.put(graph())
        assert first and second and budget.free_bytes == 20
        assert await cache.put(graph(nbytes=30)) is None  # does not fit: not kept, nothing charged
        assert await cache.take(first, "mallory") is None  # someone else's id
        assert (await cache.take(first, "alice")) is not None and budget.free_bytes == 60
        assert await cache.take(first, "alice") is None  # used once
        assert await cache.take(12345, "alice") is None  # not an id at all

    asyncio.run(scenario())


def test_graphs_expire_and_give_way_to_inference():
    async def scenario():
        budget = KVCacheBudget(100)
        cache = GraphCache(budget, ttl=0.05)
        await cache.put(graph())
        await asyncio.sleep(0.1)
        await cache.expire()
        assert len(cache) == 0 and budget.free_bytes == 100
        cache.ttl = 60
        old, new = await cache.put(graph()), await cache.put(graph())
        await cache.make_room(50)  # a session needs 50: the oldest graph goes, the newer one stays
        assert len(cache) == 1 and budget.free_bytes == 60
        assert await cache.take(old, "alice") is None and await cache.take(new, "alice") is not None

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def backend() -> SpanBackend:
    return tiny_span_backend()


@pytest.mark.parametrize("with_prompts", [False, True])
def test_backward_from_a_kept_graph_equals_recompute(backend, with_prompts):
    torch.manual_seed(1)
    hidden, grad_output = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    prompts = torch.randn(2, 2, 3, 64) if with_prompts else None
    output, inputs, device_output, nbytes = backend.forward_keeping_graph(hidden, 0, 2, prompts)
    # Exact: the same backend runs the same input through the same blocks and shapes, with and without autograd
    # recording; both backwards run the same ops on the same saved tensors.
    assert_same_computation(output, backend.forward(hidden, 0, 2, prompts), "forward outputs")
    assert nbytes > hidden.numel() * 4  # activations beyond the input, weights not counted
    sent = [hidden] if prompts is None else [hidden, prompts]
    kept = backend.backward_from_graph(inputs, device_output, grad_output, sent)
    recomputed = backend.backward(hidden, grad_output, 0, 2, prompts)
    assert len(kept) == len(recomputed) == len(sent)
    for a, b in zip(kept, recomputed):
        assert_same_computation(a, b, "gradients from the kept graph and by recompute")


def test_a_graph_matches_only_its_own_inputs(backend):
    hidden = torch.randn(1, 3, 64)
    kept = KeptGraph("alice", backend, 0, 2, [hidden], [], hidden, 1)
    assert kept.matches(backend, 0, 2, [hidden.clone()])
    assert not kept.matches(backend, 0, 1, [hidden])
    assert not kept.matches(backend, 0, 2, [hidden + 1])
    assert not kept.matches(object(), 0, 2, [hidden])
