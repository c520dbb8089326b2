"""Load a converted model's config, block tensors and client tensors (servers and clients use these).

Every file is checked against ``manifest.json`` (sha256, names, shapes, dtypes) before use, and only
safetensors are read: nothing downloaded is ever unpickled. From the Hub, block ``i`` comes from
branch ``block_i`` and the client tensors from ``main``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from core.convert.files import load_verified
from core.convert.location import fetch_file, local_folder
from core.convert.manifest import CONFIG_NAME, Manifest, block_revision, load_manifest
from core.errors import ConversionError
from core.models.registry import ModelFamily, family_for_config

logger = logging.getLogger(__name__)

DEFAULT_ATTENTION: dict[str, str] = {"llama": "sdpa", "bloom": "eager"}
"""Attention implementation per family when the config names none."""


def _repair_hint(path_or_repo: str | Path) -> str:
    if local_folder(path_or_repo) is not None:
        return (
            f"convert the model again (blossom-convert --output_path {path_or_repo} --overwrite ...)"
        )
    return (
        f"delete the cached copy of '{path_or_repo}' (huggingface-cli delete-cache) and download it again; if it "
        f"persists, the repo's owner must re-convert and re-upload it"
    )


def load_config(path_or_repo: str | Path, token: str | None = None, revision: str | None = None) -> PretrainedConfig:
    """The Hugging Face config of a converted model; it carries the ``dht_prefix`` attribute."""
    path = fetch_file(path_or_repo, CONFIG_NAME, revision=revision, token=token)
    try:
        config = AutoConfig.from_pretrained(path.parent)
    except (ValueError, KeyError, OSError) as error:
        raise ConversionError(f"cannot read {path}: {error}; {_repair_hint(path_or_repo)}") from error
    if not getattr(config, "dht_prefix", None):
        raise ConversionError(
            f"{path} has no dht_prefix, so '{path_or_repo}' is not a Blossom conversion; convert it first "
            f"with blossom-convert --model {path_or_repo} --output_path ..."
        )
    return config


def _block_manifest(path_or_repo: str | Path, index: int, token: str | None) -> tuple[Manifest, str | None]:
    """The manifest to check block ``index`` against, and the revision its file lives on."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise ConversionError(f"block index must be an int, not {index!r}")
    if local_folder(path_or_repo) is not None:
        return load_manifest(path_or_repo, token=token), None
    revision = block_revision(index)
    try:
        return load_manifest(path_or_repo, token=token, revision=revision), revision
    except ConversionError:
        # A missing branch usually means a wrong index: let main's manifest say so clearly.
        load_manifest(path_or_repo, token=token).block(index)
        raise


def load_block_state(path_or_repo: str | Path, index: int, token: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of block ``index`` named as in ``family.make_block(config, index).state_dict()``."""
    manifest, revision = _block_manifest(path_or_repo, index, token)
    entry = manifest.block(index)
    path = fetch_file(path_or_repo, entry.path, revision=revision, token=token)
    return load_verified(path, entry, _repair_hint(path_or_repo))


def load_client_state(
    path_or_repo: str | Path, token: str | None = None, revision: str | None = None
) -> dict[str, torch.Tensor]:
    """Client-side tensors (embeddings, final norm, LM head) named by ``family.client_keys``."""
    manifest = load_manifest(path_or_repo, token=token, revision=revision)
    path = fetch_file(path_or_repo, manifest.client.path, revision=revision, token=token)
    return load_verified(path, manifest.client, _repair_hint(path_or_repo))


def prepare_config(config: PretrainedConfig) -> PretrainedConfig:
    """Give ``config`` its family's default attention implementation when it names none."""
    if getattr(config, "_attn_implementation", None) is None:
        family = family_for_config(config)
        config._attn_implementation = DEFAULT_ATTENTION.get(family.name, "eager")
    return config


def build_block(family: ModelFamily, config: PretrainedConfig, index: int, state: dict[str, torch.Tensor]) -> nn.Module:
    """Block ``index`` holding ``state`` exactly (strict); built on the meta device to skip random init."""
    with torch.device("meta"):
        block = family.make_block(config, index)
    try:
        block.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ConversionError(
            f"block {index}'s tensors do not fit a {type(block).__name__} built from its config ({error}); the "
            f"conversion was made by an incompatible Blossom version: convert the model again"
        ) from error
    if any(t.is_meta for t in [*block.parameters(), *block.buffers()]):
        # A buffer the state dict does not carry (non-persistent): build for real so it is computed.
        block = family.make_block(config, index)
        block.load_state_dict(state, strict=True)
    return block


def load_blocks(
    path_or_repo: str | Path,
    indices: range | list[int],
    torch_dtype: torch.dtype,
    device: str | torch.device = "cpu",
    token: str | None = None,
) -> tuple[PretrainedConfig, list[nn.Module]]:
    """Build blocks ``indices`` of a converted model, in eval mode, frozen, as ``torch_dtype`` on ``device``."""
    config = prepare_config(load_config(path_or_repo, token=token))
    family = family_for_config(config)
    blocks: list[nn.Module] = []
    for index in indices:
        block = build_block(family, config, index, load_block_state(path_or_repo, index, token=token))
        blocks.append(block.to(device=device, dtype=torch_dtype).eval().requires_grad_(False))
        logger.debug("Loaded block %d of %s", index, config.dht_prefix)
    return config, blocks
