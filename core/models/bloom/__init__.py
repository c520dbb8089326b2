"""BLOOM family: ``block.py`` (server span), ``model.py`` (client config and model); registered on import."""
import re

from core.models.bloom.block import BloomBlockSpan, make_bloom_block
from core.models.registry import ModelFamily, register_family

BLOOM_FAMILY = ModelFamily(
    name="bloom",
    model_types=("bloom",),
    block_key_pattern=re.compile(r"^(?:transformer\.)?h\.(\d+)\.(.+)$"),
    client_keys={
        "word_embeddings.weight": ("transformer.word_embeddings.weight", "word_embeddings.weight"),
        "word_embeddings_layernorm.weight": (
            "transformer.word_embeddings_layernorm.weight",
            "word_embeddings_layernorm.weight",
        ),
        "word_embeddings_layernorm.bias": (
            "transformer.word_embeddings_layernorm.bias",
            "word_embeddings_layernorm.bias",
        ),
        "ln_f.weight": ("transformer.ln_f.weight", "ln_f.weight"),
        "ln_f.bias": ("transformer.ln_f.bias", "ln_f.bias"),
        "lm_head.weight": ("lm_head.weight",),
    },
    tied_keys={"lm_head.weight": "word_embeddings.weight"},
    make_block=make_bloom_block,
    make_span=BloomBlockSpan,
    client_model="core.models.bloom.model:DistributedBloomForCausalLM",
    config_class="core.models.bloom.model:DistributedBloomConfig",
)
register_family(BLOOM_FAMILY)
