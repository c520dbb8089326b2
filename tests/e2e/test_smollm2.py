"""The real bundled model: SmolLM2-135M-Instruct (Llama, 30 blocks) over a two-server swarm equals local transformers."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.cli.demo import build_prompt
from core.convert import convert_model, find_smollm2_gguf
from core.models.auto import AutoDistributedModelForCausalLM
from tests.numerics import assert_matches_reference, reference_greedy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    gguf = find_smollm2_gguf()
    converted = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    convert_model(str(gguf), converted, progress=False)
    local = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    return converted, local


def test_distributed_generation_equals_local(smollm2, swarm_factory, client_dht_factory):
    converted, local = smollm2
    swarm = swarm_factory(converted, [(0, 15), (15, 30)])
    model = AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=client_dht_factory(swarm.initial_peers))
    try:
        tokenizer = AutoTokenizer.from_pretrained(converted)
        text = build_prompt(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
        input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            assert_matches_reference(model(input_ids).logits, local(input_ids).logits, "SmolLM2 logits")
        expected = reference_greedy(local, input_ids, "SmolLM2 greedy tokens", max_new_tokens=12)
        output = model.generate(input_ids, max_new_tokens=12)
        assert torch.equal(output, expected)
        answer = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        assert "Paris" in answer
    finally:
        model.shutdown()
