"""Tiny seeded BLOOM and Llama checkpoints saved to disk, with a small byte-level tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

VOCAB_SIZE = 384
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a swarm of volunteers runs a large language model together",
    "hello world, hello blossom. petals and blossoms share their blocks",
] * 20


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences; deterministic."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama_config(num_layers: int = 4, hidden: int = 64) -> LlamaConfig:
    """A Llama config small enough for CPU tests (grouped-query attention included)."""
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )


def tiny_bloom_config(num_layers: int = 4, hidden: int = 64) -> BloomConfig:
    """A BLOOM config small enough for CPU tests (word embeddings tied to the head)."""
    return BloomConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, n_layer=num_layers, n_head=4, bos_token_id=0, eos_token_id=1,
        pad_token_id=2,
    )


def build_model(family: str, seed: int = 0, num_layers: int = 4, hidden: int = 64) -> PreTrainedModel:
    """A randomly initialised model of ``family`` ('llama' or 'bloom'), seeded, in eval mode, float32."""
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(tiny_llama_config(num_layers, hidden))
    elif family == "bloom":
        model = BloomForCausalLM(tiny_bloom_config(num_layers, hidden))
    else:
        raise ValueError(family)
    # Larger-than-default init so logits differ clearly between tokens and greedy paths are not ties.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, 0.2)
    return model.eval()


def save_model(family: str, path: Path, seed: int = 0, num_layers: int = 4, hidden: int = 64) -> Path:
    """Save a tiny model and tokenizer in Hugging Face format under ``path``; returns ``path``."""
    model = build_model(family, seed, num_layers, hidden)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def tiny_span_backend(max_length: int = 128, family: str = "llama"):
    """A seeded two-block span of ``family`` served on the CPU (``core.server.backend.SpanBackend``), for unit
    tests of the server without a network."""
    from core.convert.loading import DEFAULT_ATTENTION
    from core.models.registry import get_family
    from core.server.backend import SpanBackend, SpanLimits

    torch.manual_seed(0)
    config = tiny_llama_config(num_layers=2) if family == "llama" else tiny_bloom_config(num_layers=2)
    config._attn_implementation = DEFAULT_ATTENTION.get(family, "eager")  # as a server's loaded config has it
    blocks = [get_family(family).make_block(config, index) for index in range(2)]
    for block in blocks:
        for parameter in block.parameters():
            torch.nn.init.normal_(parameter, 0, 0.2)
    span = get_family(family).make_span(config, blocks, 0).eval().requires_grad_(False)
    return SpanBackend(config, span, 0, 2, torch.float32, torch.device("cpu"), SpanLimits(8, 1024, max_length))
