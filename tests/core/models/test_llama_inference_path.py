"""A Llama span's inference path (cache, no autograd: what servers run for every session step) gives
transformers' numbers: hidden states and cached keys/values of ``LlamaModel`` itself, step by step."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.cache_utils import DynamicCache

from core.models.llama.block import LlamaBlockSpan
from tests.numerics import assert_matches_reference
from tests.tiny_models import tiny_llama_config

VARIANTS = {
    "grouped-query attention": {},
    "biases and a separate head_dim": {"attention_bias": True, "mlp_bias": True, "head_dim": 32},
    "linear rope scaling": {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.inference_mode()
def test_inference_steps_equal_transformers(variant: str) -> None:
    config = tiny_llama_config(num_layers=3)
    for key, value in VARIANTS[variant].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    span = LlamaBlockSpan(model.config, list(model.model.layers), 0)
    reference_cache, span_cache = DynamicCache(config=model.config), DynamicCache()
    generator = torch.Generator().manual_seed(1)
    past = 0
    for new_tokens in (7, 3, 1, 1, 1, 2, 1):  # prefill, a chunk after it, decoding steps, a two-token step
        hidden = torch.randn(2, new_tokens, config.hidden_size, generator=generator)
        expected = model.model(inputs_embeds=hidden, cache=reference_cache, use_cache=True).last_hidden_state
        actual = model.model.norm(span(hidden, cache=span_cache, past_length=past))
        past += new_tokens
        assert_matches_reference(actual, expected, f"hidden states after {past} tokens ({variant})")
    for layer, expected_layer in zip(span_cache.layers, reference_cache.layers, strict=True):
        assert_matches_reference(layer.keys, expected_layer.keys, "cached keys")
        assert_matches_reference(layer.values, expected_layer.values, "cached values")


def test_training_keeps_transformers_layers() -> None:
    """With autograd on (training's forward and backward), the span calls transformers' layers as they are."""
    model = LlamaForCausalLM(tiny_llama_config(num_layers=2)).eval()
    span = LlamaBlockSpan(model.config, list(model.model.layers), 0)
    calls = []
    hook = model.model.layers[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        hidden = torch.randn(1, 4, model.config.hidden_size, requires_grad=True)
        span(hidden).sum().backward()
        with torch.inference_mode():
            span(torch.randn(1, 1, model.config.hidden_size), cache=DynamicCache())
    finally:
        hook.remove()
    assert calls == [1] and hidden.grad is not None
