"""Family-agnostic entry points: pick the family from a converted model's config."""
from __future__ import annotations

from typing import Any, Sequence

import hivemind
from transformers import AutoConfig, PretrainedConfig

from core.client.remote_sequential import RemoteSequential
from core.client.sequence_manager import RemoteSequenceManager
from core.config import ClientConfig
from core.dht.schema import block_uid_index
from core.errors import InvalidRequestError
from core.models.base import DistributedModelForCausalLM
from core.models.registry import family_for_config


class AutoDistributedConfig:
    """``AutoDistributedConfig.from_pretrained(path)`` gives the family's distributed config."""

    @staticmethod
    def from_pretrained(converted_model_name_or_path: str, **kwargs: Any) -> PretrainedConfig:
        plain = AutoConfig.from_pretrained(converted_model_name_or_path, **kwargs)
        config_class = family_for_config(plain).distributed_config_class()
        return config_class.from_pretrained(converted_model_name_or_path, **kwargs)


class AutoDistributedModelForCausalLM:
    """``AutoDistributedModelForCausalLM.from_pretrained(path, initial_peers=[...])`` for any registered family."""

    @staticmethod
    def from_pretrained(converted_model_name_or_path: str, **kwargs: Any) -> DistributedModelForCausalLM:
        plain = AutoConfig.from_pretrained(converted_model_name_or_path, token=kwargs.get("token"))
        model_class = family_for_config(plain).client_model_class()
        return model_class.from_pretrained(converted_model_name_or_path, **kwargs)


def get_remote_module(
    dht: hivemind.DHT,
    uids: str | Sequence[str],
    config: PretrainedConfig,
    client_config: ClientConfig | None = None,
) -> RemoteSequential | list[RemoteSequential]:
    """Remote blocks by uid (``f"{config.dht_prefix}.3"``): one uid gives one module, a list gives a list."""
    single = isinstance(uids, str)
    parsed = []
    for uid in [uids] if single else list(uids):
        try:
            prefix, index = block_uid_index(uid)
        except ValueError as error:
            raise InvalidRequestError(str(error)) from None
        if prefix != config.dht_prefix:
            raise InvalidRequestError(f"uid '{uid}' does not belong to model '{config.dht_prefix}'")
        if not 0 <= index < config.num_hidden_layers:
            raise InvalidRequestError(f"block {index} does not exist: the model has {config.num_hidden_layers} blocks")
        parsed.append(index)
    manager = RemoteSequenceManager(dht, config.dht_prefix, config.num_hidden_layers, client_config or ClientConfig())
    modules = [RemoteSequential(manager, config.hidden_size, index, index + 1) for index in parsed]
    return modules[0] if single else modules
