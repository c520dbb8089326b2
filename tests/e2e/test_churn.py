"""Failover under churn: servers killed without notice mid-generation, a newcomer joining between.

One round of ``benchmarks/churn_failover.py`` (which repeats it and counts identical runs): both
generations must give transformers' greedy tokens although the server each one used for blocks 4..7
was SIGKILLed midway, and the second one must move to the newcomer, not to the dead server whose
record still lingers in the DHT.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.churn_failover import NUM_BLOCKS, run_round, start_churn_swarm
from benchmarks.tiny_swarm import prepare_tiny_model
from tests.numerics import reference_greedy

NEW_TOKENS = 120
KILL_AFTER = 30


@pytest.fixture(scope="module")
def churn_model(tmp_path_factory):
    return prepare_tiny_model(tmp_path_factory.mktemp("churn"), "llama", num_layers=NUM_BLOCKS)


def test_generation_survives_servers_killed_without_notice(churn_model, tmp_path):
    from transformers import AutoModelForCausalLM

    original, converted = churn_model
    prompt = torch.tensor([[5, 6, 7, 8]])  # no pad token (0): generate would mask it; no near-tie (checked below)
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    expected = reference_greedy(local, prompt, "churn generation", max_new_tokens=NEW_TOKENS, eos_token_id=None,
                               pad_token_id=0)
    swarm = start_churn_swarm(converted, tmp_path / "logs")
    try:
        result = run_round(swarm, converted, prompt, NEW_TOKENS, KILL_AFTER)
    finally:
        swarm.stop()
    first_killed, second_killed = result.killed
    assert first_killed and second_killed and first_killed != second_killed
    for number, tokens in enumerate(result.generations, start=1):
        assert torch.equal(tokens, expected), f"generation {number} differs from transformers after a server was killed"
