"""A DHT the user made: the tutorial's plain ``hivemind.DHT`` works, and a DHT that never answers ends
in :class:`LookupTimeoutError` instead of a wait without end.

One swarm of the tiny BLOOM: a DHT peer and two servers holding blocks 0..1 and 2..3.
"""
from __future__ import annotations

import os
import signal
import time

import hivemind
import pytest
import torch

from core import ClientConfig, DistributedBloomConfig, get_remote_module
from core.dht.node import shutdown_client_dht
from core.errors import LookupTimeoutError


@pytest.fixture(scope="module")
def bloom_swarm(tiny_checkpoints, swarm_factory):
    _, converted = tiny_checkpoints["bloom"]
    return swarm_factory(converted, [(0, 2), (2, 4)]), converted


@pytest.fixture
def plain_dht(bloom_swarm):
    swarm, _ = bloom_swarm
    dht = hivemind.DHT(initial_peers=[swarm.initial_peers[0]], client_mode=True, start=True)
    yield dht
    os.kill(dht.pid, signal.SIGCONT)  # in case a test stopped it
    shutdown_client_dht(dht)


def test_the_tutorial_code_with_a_plain_hivemind_dht(bloom_swarm, plain_dht):
    _, converted_path = bloom_swarm
    dht = plain_dht
    # the tutorial's code, as a user types it (blocks 1 and 2: the tiny model has 4)
    config = DistributedBloomConfig.from_pretrained(converted_path)
    layer1, layer2 = get_remote_module(dht, [f"{config.dht_prefix}.1", f"{config.dht_prefix}.2"], config)
    hidden = torch.randn(1, 64, config.hidden_size, requires_grad=True)
    outputs = layer2(layer1(hidden))
    outputs.sum().backward()

    assert outputs.shape == hidden.shape and torch.isfinite(outputs).all()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    with layer1.inference_session(max_length=4) as session:
        assert session.step(hidden[:, :2].detach()).shape == (1, 2, config.hidden_size)


def test_a_lookup_in_a_dht_that_never_answers_ends_with_a_typed_error(bloom_swarm, plain_dht):
    _, converted_path = bloom_swarm
    config = DistributedBloomConfig.from_pretrained(converted_path)
    (block,) = get_remote_module(plain_dht, [f"{config.dht_prefix}.1"], config, ClientConfig(lookup_timeout=2.0))
    os.kill(plain_dht.pid, signal.SIGSTOP)  # the DHT's process stops answering anything
    started = time.monotonic()
    with pytest.raises(LookupTimeoutError, match=r"the DHT did not answer a look-up of .* within 2 s"):
        block(torch.randn(1, 3, config.hidden_size))
    assert time.monotonic() - started < 30  # the bound (2 s) plus the client-side margin (5 s), not forever
