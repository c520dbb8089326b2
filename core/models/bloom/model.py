"""Client side of BLOOM: ``DistributedBloomConfig`` and ``DistributedBloomForCausalLM``."""
from __future__ import annotations

import torch
from torch import nn
from transformers import BloomConfig

from core.models.base import DistributedConfigMixin, DistributedModelForCausalLM


class DistributedBloomConfig(DistributedConfigMixin, BloomConfig):
    """A BLOOM config with the ``dht_prefix`` its blocks are announced under."""


class DistributedBloomForCausalLM(DistributedModelForCausalLM):
    """BLOOM with word embeddings (+ their layernorm), final layernorm and LM head local; blocks on the swarm."""

    config_class = DistributedBloomConfig

    def _build_local_modules(self, config: BloomConfig) -> None:
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.word_embeddings_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def embeds_to_hidden(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings_layernorm(inputs_embeds)

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(hidden_states))
