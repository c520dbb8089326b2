"""The fast paths give the numbers of the plain ones, on a real server: forward/backward over raw streams
vs unary calls, and backwards from graphs the server kept vs recompute."""
from __future__ import annotations

import pytest
import torch

import core.client.sequence_manager as sequence_manager
from core import AutoDistributedModelForCausalLM
from tests.remote_calls import call_one
from tests.numerics import assert_same_computation


@pytest.fixture(scope="module")
def remote(tiny_checkpoints, swarm_factory, client_dht_factory):
    _, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [(0, 4)])
    model = AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=client_dht_factory(swarm.initial_peers))
    manager = model.transformer_blocks.manager
    yield model, manager, manager.make_route(0, 4)[0]
    model.shutdown()


def test_streamed_calls_equal_unary_calls(remote, monkeypatch):
    _, manager, span = remote
    torch.manual_seed(0)
    hidden, grad = torch.randn(2, 200, 64), torch.randn(2, 200, 64)  # 100 KiB each: over the stream threshold
    assert sequence_manager.should_stream([hidden])
    streamed = call_one(manager, span, "rpc_forward", [hidden]), call_one(manager, span, "rpc_backward", [hidden, grad])
    monkeypatch.setattr(sequence_manager, "should_stream", lambda tensors: False)
    unary = call_one(manager, span, "rpc_forward", [hidden]), call_one(manager, span, "rpc_backward", [hidden, grad])
    for a, b, what in zip(streamed, unary, ("forward outputs", "backward gradients")):
        assert_same_computation(a, b, what)  # the same server computing the same input: only the transport differs


@pytest.mark.parametrize("shape", [(1, 5, 64), (2, 200, 64)])
def test_backward_from_kept_graph_equals_recompute(remote, shape):
    _, manager, span = remote
    torch.manual_seed(1)
    hidden, grad = torch.randn(*shape), torch.randn(*shape)
    (output,), answered = manager.call(span, "rpc_forward", [hidden], {"keep_graph": True})
    assert isinstance(answered.get("graph_id"), str)
    # Exact: one server, one input, one forward over the same blocks and shapes, whether autograd records it
    # (kept graph, recompute) or not (a plain forward); the same backward ops on the same saved tensors.
    assert_same_computation(output, call_one(manager, span, "rpc_forward", [hidden]), "forward outputs")
    recomputed = call_one(manager, span, "rpc_backward", [hidden, grad])
    (kept,), _ = manager.call(span, "rpc_backward", [hidden, grad], {"graph_id": answered["graph_id"]})
    assert_same_computation(kept, recomputed, "gradients from the kept graph and by recompute")
    # an id is used once; naming it again (or with other inputs) falls back to recompute, still right
    (again,), _ = manager.call(span, "rpc_backward", [hidden, grad], {"graph_id": answered["graph_id"]})
    assert_same_computation(again, recomputed, "gradients by recompute")


def test_training_forward_asks_for_graphs_and_backward_names_them(remote, monkeypatch):
    model, manager, _ = remote
    calls = []
    real_call = manager.call

    def spy(span, method, tensors, metadata=None):
        outputs, answered = real_call(span, method, tensors, metadata)
        calls.append((method, dict(metadata or {}), dict(answered)))
        return outputs, answered

    monkeypatch.setattr(manager, "call", spy)
    embeds = torch.randn(1, 6, 64, requires_grad=True)
    with torch.no_grad():
        model.transformer_blocks(embeds)
    assert calls[-1][0] == "rpc_forward" and "keep_graph" not in calls[-1][1]  # no backward can follow
    model.transformer_blocks(embeds).sum().backward()
    (forward, asked, answered), (backward, named, _) = calls[-2:]
    assert (forward, backward) == ("rpc_forward", "rpc_backward")
    assert asked == {"keep_graph": True} and named == {"graph_id": answered["graph_id"]}
    assert embeds.grad is not None and torch.isfinite(embeds.grad).all()
