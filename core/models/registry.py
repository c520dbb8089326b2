"""The model-family registry: everything that differs between BLOOM, Llama and future families.

Adding a family means writing one package under ``core/models/`` that builds a
:class:`ModelFamily` and calls :func:`register_family` — the converter, server and client
look everything up here and need no edits.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn
from transformers import PretrainedConfig

from core.errors import UnsupportedModelError

BUILTIN_FAMILY_PACKAGES = ("core.models.bloom", "core.models.llama")


@dataclass(frozen=True)
class ModelFamily:
    """How one architecture maps onto Blossom's split between client and servers.

    Attributes:
        name: short family name stored in manifests (``"bloom"``, ``"llama"``).
        model_types: values of ``config.model_type`` this family handles.
        block_key_pattern: regex over original checkpoint keys; group 1 is the block index and
            group 2 the key inside the block (as in ``make_block(...).state_dict()``).
        client_keys: client-side tensor name -> candidate names in the original checkpoint.
        tied_keys: client-side tensor name -> the client name it copies when the checkpoint omits it
            (``lm_head.weight`` tied to the input embeddings).
        make_block: builds block ``index`` from a config (weights uninitialised).
        make_span: builds the server-side span module from a config, a block list and the first index.
        client_model: import path ``"module:Class"`` of the distributed causal-LM class.
        config_class: import path of the distributed config class.
    """

    name: str
    model_types: tuple[str, ...]
    block_key_pattern: re.Pattern[str]
    client_keys: dict[str, tuple[str, ...]]
    make_block: Callable[[PretrainedConfig, int], nn.Module]
    make_span: Callable[[PretrainedConfig, list[nn.Module], int], nn.Module]
    client_model: str
    config_class: str
    tied_keys: dict[str, str] = field(default_factory=dict)

    def client_model_class(self) -> Any:
        """The distributed causal-LM class of this family."""
        return _import_path(self.client_model)

    def distributed_config_class(self) -> Any:
        """The distributed config class of this family."""
        return _import_path(self.config_class)


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> None:
    """Make ``family`` known to the converter, server and client."""
    _FAMILIES[family.name] = family


def _load_builtin_families() -> None:
    for package in BUILTIN_FAMILY_PACKAGES:
        importlib.import_module(package)


def get_family(name_or_model_type: str) -> ModelFamily:
    """Find a family by its name or by a ``config.model_type`` it handles."""
    _load_builtin_families()
    if name_or_model_type in _FAMILIES:
        return _FAMILIES[name_or_model_type]
    for family in _FAMILIES.values():
        if name_or_model_type in family.model_types:
            return family
    known = sorted(t for f in _FAMILIES.values() for t in f.model_types)
    raise UnsupportedModelError(
        f"model type '{name_or_model_type}' is not supported (supported: {', '.join(known)}). "
        f"See README 'Adding a model family' to register a new one"
    )


def family_for_config(config: PretrainedConfig) -> ModelFamily:
    """The family that handles ``config``."""
    return get_family(config.model_type)


def all_families() -> list[ModelFamily]:
    """Every registered family."""
    _load_builtin_families()
    return list(_FAMILIES.values())


def _import_path(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
