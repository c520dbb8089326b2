"""Client side of Llama: ``DistributedLlamaConfig`` and ``DistributedLlamaForCausalLM``."""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from core.models.base import DistributedConfigMixin, DistributedModelForCausalLM


class DistributedLlamaConfig(DistributedConfigMixin, LlamaConfig):
    """A Llama config with the ``dht_prefix`` its blocks are announced under."""


class DistributedLlamaForCausalLM(DistributedModelForCausalLM):
    """Llama with embeddings, final norm and LM head local and the decoder layers on the swarm."""

    config_class = DistributedLlamaConfig

    def _build_local_modules(self, config: LlamaConfig) -> None:
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden_states))
