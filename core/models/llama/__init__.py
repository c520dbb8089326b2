"""Llama family: ``block.py`` (server span), ``model.py`` (client config and model); registered on import."""
import re

from core.models.llama.block import LlamaBlockSpan, make_llama_block
from core.models.registry import ModelFamily, register_family

LLAMA_FAMILY = ModelFamily(
    name="llama",
    model_types=("llama",),
    block_key_pattern=re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$"),
    client_keys={
        "embed_tokens.weight": ("model.embed_tokens.weight", "embed_tokens.weight"),
        "norm.weight": ("model.norm.weight", "norm.weight"),
        "lm_head.weight": ("lm_head.weight",),
    },
    tied_keys={"lm_head.weight": "embed_tokens.weight"},
    make_block=make_llama_block,
    make_span=LlamaBlockSpan,
    client_model="core.models.llama.model:DistributedLlamaForCausalLM",
    config_class="core.models.llama.model:DistributedLlamaConfig",
)
register_family(LLAMA_FAMILY)
