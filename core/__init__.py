"""Blossom: run large language models together over a swarm of volunteer servers.

Public API (imported lazily, so ``import core`` stays light and never needs Qt):

- ``DistributedBloomConfig``, ``DistributedBloomForCausalLM`` — BLOOM (``core/models/bloom``)
- ``DistributedLlamaConfig``, ``DistributedLlamaForCausalLM`` — Llama (``core/models/llama``)
- ``Distributed{Bloom,Llama}ForSequenceClassification`` — classifier heads over the same blocks
- ``TrainingConfig``, ``train_prompts``, ``save_prompts``, ``load_prompts``, ... — prompt tuning (``core/tuning``)
- ``AutoDistributedConfig``, ``AutoDistributedModelForCausalLM``, ``get_remote_module`` — ``core/models/auto.py``
- ``RemoteSequential`` (``core/client/remote_sequential.py``), ``convert_model`` (``core/convert``)
- ``ServerConfig``, ``ClientConfig`` (``core/config.py``); errors in ``core/errors.py``
- ``client_dht`` (``core/dht/node.py``): a DHT node that reads the swarm's signed records
- ``get_swarm_status`` (``core/dht/swarm_status.py``): which servers hold which blocks of each model
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DistributedBloomConfig": "core.models.bloom.model",
    "DistributedBloomForCausalLM": "core.models.bloom.model",
    "DistributedLlamaConfig": "core.models.llama.model",
    "DistributedLlamaForCausalLM": "core.models.llama.model",
    "DistributedBloomForSequenceClassification": "core.models.bloom.model",
    "DistributedLlamaForSequenceClassification": "core.models.llama.model",
    "TrainingConfig": "core.tuning",
    "StepReport": "core.tuning",
    "TrainingResult": "core.tuning",
    "train_prompts": "core.tuning",
    "save_prompts": "core.tuning",
    "load_prompts": "core.tuning",
    "read_prompts_metadata": "core.tuning",
    "AutoDistributedConfig": "core.models.auto",
    "AutoDistributedModelForCausalLM": "core.models.auto",
    "get_remote_module": "core.models.auto",
    "RemoteSequential": "core.client.remote_sequential",
    "convert_model": "core.convert",
    "ServerConfig": "core.config",
    "client_dht": "core.dht.node",
    "get_swarm_status": "core.dht.swarm_status",
    "ClientConfig": "core.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'core' has no attribute '{name}'")
