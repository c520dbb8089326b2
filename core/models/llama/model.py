"""Client side of Llama: ``DistributedLlamaConfig``, ``DistributedLlamaForCausalLM`` and
``DistributedLlamaForSequenceClassification``."""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from core.models.base import (
    DistributedConfigMixin,
    DistributedModelForCausalLM,
    DistributedModelForSequenceClassification,
)


class DistributedLlamaConfig(DistributedConfigMixin, LlamaConfig):
    """A Llama config with the ``dht_prefix`` its blocks are announced under."""


class LlamaClientModules:
    """Llama's client-side modules: token embeddings and the final RMS norm."""

    config_class = DistributedLlamaConfig
    embed_tokens: nn.Embedding
    norm: LlamaRMSNorm

    def _build_local_modules(self, config: LlamaConfig) -> None:
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def final_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden_states)


class DistributedLlamaForCausalLM(LlamaClientModules, DistributedModelForCausalLM):
    """Llama with embeddings, final norm and LM head local and the decoder layers on the swarm."""


class DistributedLlamaForSequenceClassification(LlamaClientModules, DistributedModelForSequenceClassification):
    """Llama with a ``score`` head over the last non-pad token (as transformers' ``LlamaForSequenceClassification``)."""
