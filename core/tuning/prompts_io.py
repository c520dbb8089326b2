"""Save and load trained prompts as safetensors, with the model name, mode and length in the metadata."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from core.errors import InvalidRequestError, PromptsMismatchError
from core.tuning.config import TUNING_MODES

if TYPE_CHECKING:
    from core.models.base import DistributedModelBase

logger = logging.getLogger(__name__)

FORMAT_NAME = "blossom-prompts"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class PromptsMetadata:
    """What a prompts file was trained for: the model's name in the swarm, the tuning mode and the prompt length."""

    model_name: str
    tuning_mode: str
    pre_seq_len: int


def _require_tuning(model: "DistributedModelBase") -> None:
    if model.ptune is None:
        raise InvalidRequestError(
            "this model has no prompts: create it with from_pretrained(..., tuning_mode='ptune' or 'deep_ptune', "
            "pre_seq_len=N)"
        )


def save_prompts(model: "DistributedModelBase", path: str | Path) -> str:
    """Write the model's prompts (and their metadata) to ``path``; returns the path written."""
    _require_tuning(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().float().contiguous() for name, tensor in model.ptune.prompt_tensors().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": model.dht_prefix,
        "tuning_mode": model.tuning_mode,
        "pre_seq_len": str(model.pre_seq_len),
        "hidden_size": str(model.config.hidden_size),
        "num_blocks": str(model.config.num_hidden_layers),
    }
    temporary = path.with_name(path.name + ".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    temporary.replace(path)
    logger.info("Saved %s prompts (%d positions) for '%s' to %s", model.tuning_mode, model.pre_seq_len,
                model.dht_prefix, path)
    return str(path)


def _read_raw_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise InvalidRequestError(f"prompts file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as error:
        raise InvalidRequestError(f"'{path}' is not a safetensors file: {error}") from None
    if metadata.get("format") != FORMAT_NAME:
        raise InvalidRequestError(f"'{path}' is not a Blossom prompts file (no '{FORMAT_NAME}' metadata)")
    return metadata


def read_prompts_metadata(path: str | Path) -> PromptsMetadata:
    """The model name, tuning mode and prompt length a prompts file was saved with."""
    path = Path(path)
    raw = _read_raw_metadata(path)
    try:
        metadata = PromptsMetadata(raw["model_name"], raw["tuning_mode"], int(raw["pre_seq_len"]))
    except (KeyError, ValueError) as error:
        raise InvalidRequestError(f"'{path}' has incomplete prompts metadata ({error})") from None
    if metadata.tuning_mode not in TUNING_MODES:
        raise InvalidRequestError(f"'{path}' records an unknown tuning mode '{metadata.tuning_mode}'")
    return metadata


def load_prompts(model: "DistributedModelBase", path: str | Path) -> PromptsMetadata:
    """Copy the prompts saved at ``path`` into ``model``; raises :class:`PromptsMismatchError` if they do not fit."""
    _require_tuning(model)
    path = Path(path)
    metadata = read_prompts_metadata(path)
    if metadata.model_name != model.dht_prefix:
        raise PromptsMismatchError(
            f"'{path}' holds prompts trained for model '{metadata.model_name}', but this model is '{model.dht_prefix}'"
        )
    if metadata.tuning_mode != model.tuning_mode or metadata.pre_seq_len != model.pre_seq_len:
        raise PromptsMismatchError(
            f"'{path}' holds {metadata.tuning_mode} prompts of length {metadata.pre_seq_len}, but this model uses "
            f"{model.tuning_mode} with pre_seq_len={model.pre_seq_len}; create the model with "
            f"tuning_mode='{metadata.tuning_mode}', pre_seq_len={metadata.pre_seq_len}"
        )
    with safe_open(str(path), framework="pt") as handle:
        saved = {name: handle.get_tensor(name) for name in handle.keys()}
    expected = model.ptune.prompt_tensors()
    if set(saved) != set(expected):
        raise PromptsMismatchError(f"'{path}' holds tensors {sorted(saved)}, expected {sorted(expected)}")
    for name, target in expected.items():
        if saved[name].shape != target.shape:
            raise PromptsMismatchError(
                f"'{path}': tensor '{name}' has shape {list(saved[name].shape)}, this model needs {list(target.shape)}"
            )
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(saved[name].to(dtype=target.dtype, device=target.device))
    logger.info("Loaded %s prompts from %s", metadata.tuning_mode, path)
    return metadata
