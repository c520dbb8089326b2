"""Client side of BLOOM: ``DistributedBloomConfig``, ``DistributedBloomForCausalLM`` and
``DistributedBloomForSequenceClassification``."""
from __future__ import annotations

import torch
from torch import nn
from transformers import BloomConfig

from core.models.base import (
    DistributedConfigMixin,
    DistributedModelForCausalLM,
    DistributedModelForSequenceClassification,
)


class DistributedBloomConfig(DistributedConfigMixin, BloomConfig):
    """A BLOOM config with the ``dht_prefix`` its blocks are announced under."""


class BloomClientModules:
    """BLOOM's client-side modules: word embeddings (+ their layernorm) and the final layernorm."""

    config_class = DistributedBloomConfig
    word_embeddings: nn.Embedding
    word_embeddings_layernorm: nn.LayerNorm
    ln_f: nn.LayerNorm

    def _build_local_modules(self, config: BloomConfig) -> None:
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.word_embeddings_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def embeds_to_hidden(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings_layernorm(inputs_embeds)

    def final_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.ln_f(hidden_states)


class DistributedBloomForCausalLM(BloomClientModules, DistributedModelForCausalLM):
    """BLOOM with word embeddings (+ their layernorm), final layernorm and LM head local; blocks on the swarm."""


class DistributedBloomForSequenceClassification(BloomClientModules, DistributedModelForSequenceClassification):
    """BLOOM with a ``score`` head over the last non-pad token (as transformers' ``BloomForSequenceClassification``)."""
