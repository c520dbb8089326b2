"""Map checkpoint keys onto Blossom's client and per-block tensors, and verify every shape first.

Like nanoGPT's ``from_pretrained``, nothing is written until the key sets and every tensor shape
match what the config expects: blocks are compared with ``family.make_block(config, i)`` built on
the meta device, client tensors with a meta-device ``AutoModelForCausalLM``.
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from core.convert.sources import CheckpointSource
from core.errors import ConversionError
from core.models.registry import ModelFamily

logger = logging.getLogger(__name__)

IGNORED_KEYS = re.compile(r"(^|\.)(rotary_emb\.inv_freq|attn\.masked_bias|attn\.bias|position_ids)$")
"""Non-weight buffers some checkpoints carry; they are rebuilt from the config, never converted."""

_MAX_LISTED = 8


@dataclass
class ConversionPlan:
    """Where every converted tensor comes from."""

    blocks: list[dict[str, str]]
    """Per block index: key inside the block -> checkpoint key."""
    client: dict[str, str]
    """Client tensor name -> checkpoint key."""
    tied: dict[str, str] = field(default_factory=dict)
    """Client tensor name -> client tensor it copies (the checkpoint omits it; embeddings are tied)."""
    source_dtype: torch.dtype = torch.float32
    """The floating dtype the checkpoint stores its blocks in."""

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)


def _listed(keys: list[str] | set[str]) -> str:
    ordered = sorted(keys)
    more = f" and {len(ordered) - _MAX_LISTED} more" if len(ordered) > _MAX_LISTED else ""
    return ", ".join(f"'{k}'" for k in ordered[:_MAX_LISTED]) + more


def expected_block_shapes(family: ModelFamily, config: PretrainedConfig, index: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of block ``index``'s state dict, built on the meta device (no memory used)."""
    with torch.device("meta"):
        block = family.make_block(config, index)
    return {key: tuple(tensor.shape) for key, tensor in block.state_dict().items()}


def expected_client_shapes(family: ModelFamily, config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """Client tensor name -> shape, read from a meta-device Hugging Face causal LM of ``config``."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    state = model.state_dict()
    shapes: dict[str, tuple[int, ...]] = {}
    for name, candidates in family.client_keys.items():
        found = next((key for key in candidates if key in state), None)
        if found is None:
            raise ConversionError(
                f"family '{family.name}' lists client tensor '{name}' as one of {list(candidates)}, but a "
                f"{type(model).__name__} has none of them; fix client_keys in core/models/{family.name}"
            )
        shapes[name] = tuple(state[found].shape)
    return shapes


def plan_conversion(source: CheckpointSource, family: ModelFamily, config: PretrainedConfig) -> ConversionPlan:
    """Assign every checkpoint key to a block or the client and verify key sets and shapes.

    Raises :class:`ConversionError` naming the first offending tensor(s) when anything is missing,
    unexpected, or shaped differently from what ``config`` implies.
    """
    candidate_of = {key: name for name, keys in family.client_keys.items() for key in keys}
    found_blocks: dict[int, dict[str, str]] = {}
    client: dict[str, str] = {}
    leftover: list[str] = []
    for key in source.keys():
        if IGNORED_KEYS.search(key):
            logger.debug("Skipping non-weight buffer %s", key)
            continue
        match = family.block_key_pattern.match(key)
        if match:
            found_blocks.setdefault(int(match.group(1)), {})[match.group(2)] = key
        elif key in candidate_of:
            name = candidate_of[key]
            if name in client:
                raise ConversionError(
                    f"the checkpoint holds client tensor '{name}' twice: '{client[name]}' and '{key}'"
                )
            client[name] = key
        else:
            leftover.append(key)
    if leftover:
        raise ConversionError(
            f"the checkpoint has tensor(s) Blossom does not know where to put: {_listed(leftover)}. "
            f"It is not a plain '{family.name}' checkpoint (adapters or extra heads must be merged or removed first)"
        )
    num_blocks = int(config.num_hidden_layers)
    _check_block_indices(set(found_blocks), num_blocks)
    blocks = [found_blocks[index] for index in range(num_blocks)]
    for index, mapping in enumerate(blocks):
        _check_shapes(source, mapping, expected_block_shapes(family, config, index), f"block {index}")
    tied = _resolve_tied(family, config, client)
    expected_client = expected_client_shapes(family, config)
    _check_shapes(source, client, {k: v for k, v in expected_client.items() if k not in tied}, "the client part")
    return ConversionPlan(blocks=blocks, client=client, tied=tied, source_dtype=_block_dtype(source, blocks))


def _check_block_indices(found: set[int], num_blocks: int) -> None:
    expected = set(range(num_blocks))
    if found - expected:
        raise ConversionError(
            f"the checkpoint has block(s) {sorted(found - expected)} but config.num_hidden_layers is {num_blocks}; "
            f"config.json does not match the weights"
        )
    if expected - found:
        raise ConversionError(
            f"the checkpoint is missing block(s) {sorted(expected - found)} of {num_blocks} "
            f"(config.num_hidden_layers); download the complete checkpoint"
        )


def _check_shapes(
    source: CheckpointSource, mapping: dict[str, str], expected: dict[str, tuple[int, ...]], where: str
) -> None:
    missing = set(expected) - set(mapping)
    if missing:
        raise ConversionError(f"{where} is missing tensor(s) {_listed(missing)} in the checkpoint")
    unexpected = set(mapping) - set(expected)
    if unexpected:
        raise ConversionError(
            f"{where} has unexpected tensor(s) {_listed({mapping[k] for k in unexpected})} that the model "
            f"built from config.json does not have"
        )
    for local_key, shape in expected.items():
        key = mapping[local_key]
        actual = source.shape(key)
        if actual != shape:
            raise ConversionError(
                f"tensor '{key}' ({where}) has shape {list(actual)} but config.json implies {list(shape)}; "
                f"the checkpoint does not match its config"
            )


def _resolve_tied(family: ModelFamily, config: PretrainedConfig, client: dict[str, str]) -> dict[str, str]:
    """Client tensors the checkpoint omits because they are tied to another one."""
    tied: dict[str, str] = {}
    for name in family.client_keys:
        if name in client:
            continue
        target = family.tied_keys.get(name)
        if target is not None and getattr(config, "tie_word_embeddings", False) and target in client:
            logger.info("The checkpoint has no '%s'; copying '%s' (tied embeddings)", name, target)
            tied[name] = target
        else:
            raise ConversionError(
                f"the checkpoint has no client tensor '{name}' (looked for {list(family.client_keys[name])})"
                + ("" if target is None else " and config.tie_word_embeddings is false")
            )
    return tied


def _block_dtype(source: CheckpointSource, blocks: list[dict[str, str]]) -> torch.dtype:
    for mapping in blocks:
        for key in mapping.values():
            dtype = source.dtype(key)
            if dtype.is_floating_point:
                return dtype
    raise ConversionError(
        "the checkpoint's blocks hold no floating-point tensors; quantized checkpoints are not supported"
    )
